"""The benchmark's settings (:class:`BenchConfig`) and its command line (``horen bench``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex

from ..editors.base import parse_settings
from ..metrics import FREE_BUDGET, SCORERS

PROTOCOLS = ("sequential", "immediate")
"""``sequential``: edits 1..N one at a time; at checkpoint n, f_n is scored on records 1..n.
``immediate``: each edit is scored right after it is applied; checkpoint n reports the mean
of those scores over records 1..n."""


def default_checkpoints(n: int) -> list[int]:
    """1, 10, 100, ... below ``n``, and ``n`` itself.

    Example:
        >>> default_checkpoints(1500)
        [1, 10, 100, 1000, 1500]
    """
    points, k = [], 1
    while k < n:
        points.append(k)
        k *= 10
    return points + [n] if n > 0 else []


def resolve_checkpoints(checkpoints, n: int) -> list[int]:
    """The checkpoints of a run over ``n`` records: given ones (clipped to n) plus ``n``."""
    if not checkpoints:
        return default_checkpoints(n)
    if any(c < 1 for c in checkpoints):
        raise ValueError(f"checkpoints must be >= 1, got {sorted(checkpoints)}")
    return sorted({c for c in checkpoints if c <= n} | {n})


def _methods() -> list[str]:
    from ..editors import METHODS

    return sorted(METHODS)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]


def _words(text: str) -> list[str]:
    return [x for x in text.replace(" ", "").split(",") if x]


def _field(default=None, help: str = "", **cli):
    """A setting: its default, its help, and how its flag reads and writes it (``cli``:
    ``type``, ``choices``, ``metavar``; ``kind`` "ints" / "words" for comma lists, "settings"
    for ``--set``, "negated" for a ``--no-...`` switch; ``always``: in every command line;
    ``command=False``: how a run is resumed or shown, never part of its command line)."""
    factory = {"default_factory": dict} if default is dict else {"default": default}
    return dataclasses.field(**factory, metadata={"help": help, **cli})


@dataclasses.dataclass
class BenchConfig:
    """One benchmark run. Every field has a CLI flag of the same name (``--batch-size``);
    :func:`add_arguments`, :func:`config_from_args` and :meth:`BenchConfig.command` are all
    derived from these fields.

    Example:
        >>> cfg = BenchConfig(method="horen", dataset="zsre", n=10, checkpoints=[1, 10])
    """

    method: str = _field("horen", "editing method", choices=_methods, always=True)
    dataset: str = _field("zsre", "dataset name (zsre, counterfact, ...) or a file path",
                          always=True)
    n: int | None = _field(None, "number of edits N (default: all records)", type=int)
    offset: int = _field(0, "skip the first K records (after --shuffle): a held-out slice",
                         type=int)
    checkpoints: list[int] | None = _field(
        None, "comma list, e.g. 1,10,100 (N is added; default 1, 10, 100, ... and N)",
        kind="ints")
    model: str | None = _field(None, "HF model id or directory (default: embedded SmolLM2)")
    protocol: str = _field("sequential", "scoring protocol", choices=lambda: PROTOCOLS,
                           always=True)
    batch_size: int = _field(16, "sequences per scoring batch", type=int, always=True)
    seed: int = _field(0, "seed for shuffling and torch", type=int, always=True)
    edit_batch: int = _field(
        1, "write this many edits as one batch (MEMIT, AlphaEdit); default one at a time",
        type=int)
    scorers: list[str] | None = _field(
        None, "comma list of tf, gen, free, probes, unke (default: tf,gen,free; +probes where "
        "records have portability/persona/multi-hop probes; +unke on UnKE data)", kind="words")
    free_max_tokens: int = _field(FREE_BUDGET, "longest free-generation answer, in new tokens",
                                  type=int)
    unke_max_tokens: int = _field(256, "longest UnKE answer generated", type=int)
    shuffle: bool = _field(False, "shuffle the records (with --seed) before taking N")
    chat: bool = _field(False, "wrap prompts in the model's chat template")
    skip_bad: bool = _field(False, "skip malformed dataset records")
    overrides: dict = _field(dict, "method setting KEY=VALUE (JSON value), repeatable",
                             kind="settings", flag="--set", metavar="KEY=VALUE")
    data_root: str | None = _field(None, "folder holding the datasets (default ../shared/data)")
    threads: int | None = _field(None, "torch CPU threads", type=int)
    out: str = _field("results", "results directory", metavar="DIR", always=True)
    resume: bool = _field(False, "continue a killed run from its last saved state",
                          command=False)
    save_every: int = _field(
        0, "also save the state --resume continues from every K edits, without scoring (a long "
        "run with few checkpoints then loses at most K edits when killed)", type=int,
        metavar="K", command=False)
    state_dir: str | None = _field(
        None, "keep the resume state (<results name>.resume/) in DIR instead of beside the "
        "results file, e.g. under $HOREN_CACHE, where a fresh checkout on the same machine "
        "finds it", metavar="DIR", command=False)
    progress: bool = _field(True, "no progress bar", kind="negated", flag="--no-progress",
                            command=False)
    cache_reference: bool = _field(
        True, "recompute the base model's locality answers (default: cached in $HOREN_CACHE)",
        kind="negated", flag="--no-reference-cache", command=False)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        bad = [s for s in self.scorers or [] if s not in SCORERS]
        if bad:
            raise ValueError(f"unknown scorers {bad}; known: {', '.join(SCORERS)}")
        if self.n is not None and self.n < 1:
            raise ValueError(f"n must be >= 1, not {self.n}")
        if self.offset < 0:
            raise ValueError(f"offset must be >= 0, not {self.offset}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.free_max_tokens < 1:
            raise ValueError("free_max_tokens must be >= 1")
        if self.edit_batch < 1:
            raise ValueError("edit_batch must be >= 1")
        if self.save_every < 0:
            raise ValueError("save_every must be >= 0")
        if self.edit_batch > 1 and self.protocol != "sequential":
            raise ValueError("edit_batch > 1 needs the sequential protocol")

    def command(self) -> str:
        """The ``horen bench`` command line that reproduces this run: the fields that are
        always shown and every other that differs from its default."""
        parts = ["horen", "bench"]
        for f in dataclasses.fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            if not meta.get("command", True) or (value == _default(f) and not meta.get("always")):
                continue
            kind, flag = meta.get("kind"), _flag(f)
            if kind == "settings":
                for key, v in sorted(value.items()):
                    parts += [flag, f"{key}={json.dumps(v)}"]
            elif kind in ("ints", "words"):
                parts += [flag, ",".join(map(str, value))]
            elif isinstance(value, bool):
                parts.append(flag)
            else:
                parts += [flag, str(value)]
        return shlex.join(parts)


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``horen bench`` flags, one per :class:`BenchConfig` field."""
    for f in dataclasses.fields(BenchConfig):
        meta, kind = f.metadata, f.metadata.get("kind")
        args = {"help": meta["help"], "dest": f.name}
        if kind == "settings":
            args.update(action="append", metavar=meta.get("metavar"))
        elif kind == "negated" or isinstance(_default(f), bool):
            args.update(action="store_true")
        else:
            args.update(default=_default(f), type={"ints": _ints, "words": _words}.get(
                kind, meta.get("type", str)))
            if "choices" in meta:
                args["choices"] = meta["choices"]()
            if "metavar" in meta:
                args["metavar"] = meta["metavar"]
        parser.add_argument(_flag(f), **args)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A :class:`BenchConfig` from parsed ``horen bench`` flags."""
    values = {}
    for f in dataclasses.fields(BenchConfig):
        value, kind = getattr(args, f.name), f.metadata.get("kind")
        values[f.name] = (parse_settings(value) if kind == "settings"
                          else not value if kind == "negated" else value)
    return BenchConfig(**values)
