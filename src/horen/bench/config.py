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


@dataclasses.dataclass
class BenchConfig:
    """One benchmark run. Every field has a CLI flag of the same name (``--batch-size``).

    Example:
        >>> cfg = BenchConfig(method="horen", dataset="zsre", n=10, checkpoints=[1, 10])
    """

    method: str = dataclasses.field(default="horen", metadata={"help": "editing method"})
    dataset: str = dataclasses.field(default="zsre", metadata={"help": "dataset name or file"})
    n: int | None = dataclasses.field(default=None, metadata={"help": "edits N (None = all)"})
    checkpoints: list[int] | None = dataclasses.field(
        default=None, metadata={"help": "edit counts to score at (None = 1, 10, 100, ... and N)"}
    )
    model: str | None = dataclasses.field(default=None, metadata={"help": "None = embedded"})
    protocol: str = dataclasses.field(default="sequential", metadata={"help": "|".join(PROTOCOLS)})
    out: str = dataclasses.field(default="results", metadata={"help": "results directory"})
    scorers: list[str] | None = dataclasses.field(
        default=None,
        metadata={"help": "tf, gen, free, probes, unke (None = tf+gen+free, +unke on UnKE data)"},
    )
    batch_size: int = dataclasses.field(default=16, metadata={"help": "sequences per forward"})
    offset: int = dataclasses.field(
        default=0, metadata={"help": "skip this many records first (a held-out slice for tuning)"}
    )
    shuffle: bool = dataclasses.field(default=False, metadata={"help": "shuffle the records"})
    seed: int = dataclasses.field(default=0, metadata={"help": "shuffle and torch seed"})
    chat: bool = dataclasses.field(default=False, metadata={"help": "use the chat template"})
    overrides: dict = dataclasses.field(
        default_factory=dict, metadata={"help": "method config fields to override"}
    )
    threads: int | None = dataclasses.field(default=None, metadata={"help": "torch threads"})
    resume: bool = dataclasses.field(default=False, metadata={"help": "resume a killed run"})
    data_root: str | None = dataclasses.field(default=None, metadata={"help": "datasets folder"})
    skip_bad: bool = dataclasses.field(default=False, metadata={"help": "skip bad records"})
    unke_max_tokens: int = dataclasses.field(
        default=256, metadata={"help": "longest UnKE answer generated"}
    )
    free_max_tokens: int = dataclasses.field(
        default=FREE_BUDGET, metadata={"help": "longest free-generation answer (tokens)"}
    )
    progress: bool = dataclasses.field(default=True, metadata={"help": "tqdm progress bar"})
    edit_batch: int = dataclasses.field(
        default=1,
        metadata={"help": "edits written as one batch (MEMIT, AlphaEdit apply_batch); 1 = one at a time"},
    )
    cache_reference: bool = dataclasses.field(
        default=True, metadata={"help": "reuse the base model's locality answers across runs"}
    )
    save_every: int = dataclasses.field(
        default=0,
        metadata={"help": "also save the resume state every K edits, unscored (0 = at checkpoints only)"},
    )
    state_dir: str | None = dataclasses.field(
        default=None,
        metadata={"help": "folder for the resume state (None = beside the results file)"},
    )

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
        """The ``horen bench`` command line that reproduces this run."""
        parts = ["horen", "bench", "--method", self.method, "--dataset", self.dataset]
        if self.n is not None:
            parts += ["--n", str(self.n)]
        if self.offset:
            parts += ["--offset", str(self.offset)]
        if self.checkpoints:
            parts += ["--checkpoints", ",".join(map(str, self.checkpoints))]
        if self.model:
            parts += ["--model", self.model]
        parts += ["--protocol", self.protocol, "--batch-size", str(self.batch_size)]
        parts += ["--seed", str(self.seed)]
        if self.edit_batch > 1:
            parts += ["--edit-batch", str(self.edit_batch)]
        if self.scorers:
            parts += ["--scorers", ",".join(self.scorers)]
        if self.free_max_tokens != FREE_BUDGET:
            parts += ["--free-max-tokens", str(self.free_max_tokens)]
        for flag in ("shuffle", "chat", "skip_bad"):
            if getattr(self, flag):
                parts.append("--" + flag.replace("_", "-"))
        for key, value in sorted(self.overrides.items()):
            parts += ["--set", f"{key}={json.dumps(value)}"]
        if self.data_root:
            parts += ["--data-root", self.data_root]
        if self.threads:
            parts += ["--threads", str(self.threads)]
        parts += ["--out", self.out]
        return shlex.join(parts)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``horen bench`` flags."""
    from ..editors import METHODS

    a = parser.add_argument
    a("--method", default="horen", choices=sorted(METHODS), help="editing method")
    a("--dataset", default="zsre", help="dataset name (zsre, counterfact, ...) or a file path")
    a("--n", type=int, default=None, help="number of edits N (default: all records)")
    a("--offset", type=int, default=0, help="skip the first K records (after --shuffle)")
    a("--checkpoints", type=_ints, default=None, help="comma list, e.g. 1,10,100 (N is added)")
    a("--model", default=None, help="HF model id or directory (default: embedded SmolLM2)")
    a("--protocol", default="sequential", choices=PROTOCOLS, help="scoring protocol")
    a("--out", default="results", metavar="DIR", help="results directory")
    a("--scorers", default=None, help="comma list of tf, gen, free, probes, unke (default: "
      "tf,gen,free; +probes where records have portability/persona/multi-hop probes; +unke on "
      "UnKE data)")
    a("--free-max-tokens", type=int, default=FREE_BUDGET,
      help="longest free-generation answer, in new tokens")
    a("--batch-size", type=int, default=16, help="sequences per scoring batch")
    a("--shuffle", action="store_true", help="shuffle the records (with --seed) before taking N")
    a("--seed", type=int, default=0, help="seed for shuffling and torch")
    a("--chat", action="store_true", help="wrap prompts in the model's chat template")
    a("--set", action="append", metavar="KEY=VALUE", help="method config override (JSON value)")
    a("--threads", type=int, default=None, help="torch CPU threads")
    a("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    a("--skip-bad", action="store_true", help="skip malformed dataset records")
    a("--data-root", default=None, help="folder holding the datasets (default ../shared/data)")
    a("--unke-max-tokens", type=int, default=256, help="longest UnKE answer generated")
    a(
        "--edit-batch",
        type=int,
        default=1,
        help="write this many edits as one batch (MEMIT, AlphaEdit); default one at a time",
    )
    a(
        "--save-every",
        type=int,
        default=0,
        metavar="K",
        help="also save the state --resume continues from every K edits, without scoring "
        "(a long run with few checkpoints then loses at most K edits when killed)",
    )
    a(
        "--state-dir",
        default=None,
        metavar="DIR",
        help="keep the resume state (<results name>.resume/) in DIR instead of beside the "
        "results file, e.g. under $HOREN_CACHE, where a fresh checkout on the same machine finds it",
    )
    a("--no-progress", action="store_true", help="no progress bar")
    a(
        "--no-reference-cache",
        action="store_true",
        help="recompute the base model's locality answers (default: cached in $HOREN_CACHE)",
    )


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A :class:`BenchConfig` from parsed ``horen bench`` flags."""
    scorers = args.scorers.replace(" ", "").split(",") if args.scorers else None
    return BenchConfig(
        method=args.method,
        dataset=args.dataset,
        n=args.n,
        offset=args.offset,
        checkpoints=args.checkpoints,
        model=args.model,
        protocol=args.protocol,
        out=args.out,
        scorers=scorers,
        batch_size=args.batch_size,
        shuffle=args.shuffle,
        seed=args.seed,
        chat=args.chat,
        overrides=parse_settings(args.set),
        threads=args.threads,
        resume=args.resume,
        data_root=args.data_root,
        skip_bad=args.skip_bad,
        unke_max_tokens=args.unke_max_tokens,
        free_max_tokens=args.free_max_tokens,
        edit_batch=args.edit_batch,
        progress=not args.no_progress,
        cache_reference=not args.no_reference_cache,
        save_every=args.save_every,
        state_dir=args.state_dir,
    )
