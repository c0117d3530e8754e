"""The editor contract, the method registry, configs and the saved-edits format.

Every editing method is a subclass of :class:`Editor` registered with :func:`register`; the
registry :data:`METHODS` is the single list of methods the CLI, the config loader and the
benchmark read. Two families share the contract: editors that keep the base model frozen and
swap a layer in place of W (HoReN and GRACE in :mod:`horen.editors.codebook`, WISE, MEMOIR
and REPAIR in :mod:`horen.editors.memory`), and the weight-rewriting editors of
:mod:`horen.editors.weights`, which save their deltas the same way.

Adding a method: subclass :class:`Editor`, give it a ``method`` name and a ``config_class``
dataclass, implement :meth:`Editor._apply` first (write one edit), then ``_remove``,
``_state`` and ``_load_state``; decorate it with ``@register``.

A saved edit set is a directory holding ``edit_config.json`` (method, config, the model's
identity, the edit log) and ``edits.safetensors`` (tensors only). Nothing is pickled, so
loading never runs code; saves are atomic (written beside, then swapped in).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file
from transformers import StoppingCriteria, StoppingCriteriaList

from ..data.record import EditRecord
from ..layer import PromptContext
from ..models import edit_site, fingerprint, prepare_tokenizer
from ..text import Batch, encode_prompt, pool_positions

FORMAT = "horen-edits/1"
METHODS: dict[str, type[Editor]] = {}
"""Method name -> editor class. Filled by :func:`register`."""


class NotConvergedWarning(UserWarning):
    """An edit's training ended above its ``converge_loss``: it is stored, and marked
    ``converged: False`` in the edit log, but the model may not answer its target."""


def register(cls: type[Editor]) -> type[Editor]:
    """Class decorator that makes a method known to the CLI, configs and benchmark."""
    METHODS[cls.method] = cls
    return cls


def get_method(name: str) -> type[Editor]:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def parse_settings(pairs: list[str] | None) -> dict:
    """``--set`` pairs -> settings: ``["lr=0.5", "value-init=cold"]`` -> ``{"lr": 0.5,
    "value_init": "cold"}``. Values are JSON where they parse (numbers, true, null), else
    strings; dashes in keys become underscores. The one parser of the CLI and the benchmark."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


@dataclasses.dataclass
class EditorConfig:
    """Base of every method's config: a dataclass that round-trips through JSON."""

    layer: int | str | None = dataclasses.field(
        default=None,
        metadata={"help": "decoder-layer index or dotted module path; None = family default"},
    )
    chat: bool = dataclasses.field(
        default=False, metadata={"help": "wrap prompts in the tokenizer's chat template"}
    )
    seed: int = dataclasses.field(default=0, metadata={"help": "seed for value initialization"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EditorConfig:
        """The config a saved edit set recorded. A setting it lacks was added after it was
        written, so it keeps the behaviour it had then (:meth:`before_settings`), not today's
        default; keys this version does not know are dropped with a warning."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            warnings.warn(f"{cls.__name__}: ignoring unknown keys {unknown}", stacklevel=2)
        before = cls.before_settings()
        return cls(**{k: data[k] if k in data else before[k] for k in names})

    @classmethod
    def before_settings(cls) -> dict:
        """Each setting's value in a run recorded before the setting existed: its ``before``
        metadata where a setting changed behaviour when it was added (HoReN's ``optimizer``
        was Adam before the setting existed), else its default."""

        def default(f):
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return f.default

        return {f.name: f.metadata["before"] if "before" in f.metadata else default(f)
                for f in dataclasses.fields(cls)}

    @classmethod
    def inert_settings(cls, config: dict) -> set[str]:
        """Settings that change nothing in a run with the settings ``config`` (every setting,
        those the run did not record at their :meth:`before_settings` value); a report
        leaves their changed defaults out of the run's label. None here."""
        return set()

    def replaced(self, settings: dict, method: str) -> EditorConfig:
        """A copy with ``settings`` changed; an unknown one is a ValueError that lists the
        known settings of ``method`` (the one home of that check: the editors and the
        benchmark runner both come here)."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise ValueError(f"{method}: unknown setting(s) {unknown}; known: {', '.join(names)}")
        return dataclasses.replace(self, **settings) if settings else self


class Editor(ABC):
    """An editing method applied to one frozen Hugging Face causal LM.

    Args:
        model: the causal LM (its parameters are frozen by the editor).
        tokenizer: its tokenizer.
        config: the method's config; ``**overrides`` replace single fields.

    Attributes:
        edits: the edit log, one dict per live edit: ``id``, ``prompt``, ``target``,
            ``entry``, ``case``, ``time``, ``seconds`` (what :meth:`list_edits` returns).
    """

    method: ClassVar[str]
    config_class: ClassVar[type[EditorConfig]] = EditorConfig

    def __init__(self, model, tokenizer, config: EditorConfig | None = None, **overrides):
        self.config = (config or self.config_class()).replaced(overrides, self.method)
        self.model, self.tokenizer = model, tokenizer
        prepare_tokenizer(tokenizer)
        for p in model.parameters():
            p.requires_grad_(False)
        self.site = edit_site(model, self.config.layer)
        self.edits: list[dict] = []
        self.next_edit_id = 1

    # ---- what a method implements -------------------------------------------------------
    @abstractmethod
    def _apply(self, record: EditRecord) -> dict:
        """Write one edit; return its log fields (``entry``, ``case``, anything else)."""

    @abstractmethod
    def _remove(self, edit: dict) -> None:
        """Undo one edit (it is the latest one touching what it touched)."""

    @abstractmethod
    def _state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """``(json_state, tensors)`` to save, besides the config and the edit log."""

    @abstractmethod
    def _load_state(self, state: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`_state` returned."""

    @abstractmethod
    @contextmanager
    def disabled(self):
        """The unedited base model, inside this block."""

    def _conflicts(self, edit: dict) -> list[int]:
        """Ids of later edits that build on ``edit`` (must go before it can)."""
        return []

    # ---- the public API ------------------------------------------------------------------
    def edit(self, prompt: str, target: str, **fields) -> int:
        """Apply one edit ``prompt -> target``; returns its stable edit id.

        Example:
            >>> ed.edit("Who leads Zorblat Industries?", "Mira Quell")  # doctest: +SKIP
            1
        """
        return self.apply(EditRecord(prompt=prompt, target=target, **fields))

    def apply(self, record: EditRecord) -> int:
        """Apply one :class:`EditRecord`; returns its edit id."""
        start = time.perf_counter()
        info = self._apply(record)
        return self._log(record, info, time.perf_counter() - start)

    def apply_many(self, records, micro_batch: int | None = None) -> list[int]:
        """Apply edits in order; returns their ids. Methods may batch the work."""
        return [self.apply(r) for r in records]

    def _log(self, record: EditRecord, info: dict, seconds: float) -> int:
        edit = {
            "id": self.next_edit_id,
            "prompt": record.prompt,
            "target": record.target,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": round(seconds, 4),
            **info,
        }
        self.edits.append(edit)
        self.next_edit_id += 1
        return edit["id"]

    def batch_edit(
        self,
        prompts,
        target_new,
        rephrase_prompts=None,
        locality_inputs=None,
        subject=None,
        sequential_edit: bool = True,
        **_ignored,
    ) -> list[int]:
        """EasyEdit-style call: edits applied one after another; returns their ids.

        ``rephrase_prompts`` and ``locality_inputs`` (EasyEdit's dict of
        ``{name: {"prompt": [...], "ground_truth": [...]}}``) are kept on the records for
        scoring; they do not change what is written.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        target_new = [target_new] if isinstance(target_new, str) else list(target_new)
        if len(prompts) != len(target_new):
            raise ValueError(f"{len(prompts)} prompts but {len(target_new)} targets")
        records = []
        for i, (prompt, target) in enumerate(zip(prompts, target_new)):
            rephrase = rephrase_prompts[i] if rephrase_prompts else None
            loc_p = loc_a = None
            if locality_inputs:
                first = next(iter(locality_inputs.values()))
                loc_p, loc_a = first["prompt"][i], first["ground_truth"][i]
            records.append(
                EditRecord(
                    prompt=prompt,
                    target=target,
                    rephrases=[rephrase] if isinstance(rephrase, str) else list(rephrase or []),
                    locality_prompt=loc_p,
                    locality_answer=loc_a,
                    subject=subject[i] if subject else None,
                    source=f"batch_edit#{i}",
                )
            )
        return [self.apply(r) for r in records]

    def list_edits(self) -> list[dict]:
        """The live edits, oldest first."""
        return [dict(e) for e in self.edits]

    def remove(self, edit_id: int, cascade: bool = False) -> list[int]:
        """Roll back edit ``edit_id``: the model answers as it did before that edit.

        If later edits built on it (they trained the same entry), it refuses unless
        ``cascade``, which rolls those back too. Returns the ids removed.
        """
        index = {e["id"]: e for e in self.edits}
        if edit_id not in index:
            raise KeyError(f"no edit with id {edit_id}")
        later, todo = set(), [edit_id]
        while todo:  # what builds on the edit, and on those, and so on
            for eid in self._conflicts(index[todo.pop()]):
                if eid not in later and eid != edit_id:
                    later.add(eid)
                    todo.append(eid)
        later = sorted(later)
        if later and not cascade:
            raise ValueError(
                f"edits {later} were built on edit {edit_id}; remove them first or pass cascade"
            )
        removed = []
        for eid in sorted(later, reverse=True) + [edit_id]:
            self._remove(index[eid])
            self.edits = [e for e in self.edits if e["id"] != eid]
            removed.append(eid)
        return removed

    # ---- inference -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_context(self, ctx: PromptContext):
        """Context under which a forward pass sees ``ctx``'s prompt positions.

        Weight-rewriting editors need nothing (the edit is in the weights); codebook editors
        route from the prompt.
        """
        return nullcontext()

    @torch.no_grad()
    def logits(self, batch: Batch, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, T, vocab)`` of a right-padded :class:`~horen.text.Batch`.

        Args:
            batch: the sequences.
            columns: if given, a sorted 1-D tensor of positions: the LM head runs there only
                and the result is ``(B, len(columns), vocab)`` (the other positions' logits
                are never computed; the layers below run on every position as before).
        """
        batch = batch.to(self.device)
        keep = {} if columns is None else {"logits_to_keep": columns.to(self.device)}
        with self.prompt_context(PromptContext.of(batch)):
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **keep)
        return out.logits

    @torch.no_grad()
    def generate(
        self,
        prompts,
        max_new_tokens: int | Sequence[int] = 32,
        use_cache: bool = True,
        return_ids: bool = False,
        stop_at_newline: bool = False,
        chat: bool | None = None,
    ):
        """Greedy answers of the edited model.

        Routing (codebook editors) is decided once from each prompt, then decoding runs.

        Args:
            prompts: one prompt or a list (batched with left padding).
            max_new_tokens: length limit of each answer, or one per prompt: the batch decodes
                as many steps as its longest and each answer is cut to its own, so an answer
                never depends on the prompts batched with it.
            use_cache: KV cache on (the default) or off; both give the same tokens.
            return_ids: return each answer's new token ids (cut to its budget) instead of text.
            stop_at_newline: end each answer at its first newline after some text (a
                newline before any text is skipped), as well as at the end-of-sequence
                token; the free-generation scorer's answers (:mod:`horen.metrics.free`).
            chat: wrap the prompts in the chat template (default: the config's ``chat``).
        """
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)
        budgets = (list(max_new_tokens) if isinstance(max_new_tokens, Sequence)
                   else [max_new_tokens] * len(prompts))
        if len(budgets) != len(prompts):
            raise ValueError(f"{len(budgets)} token budgets for {len(prompts)} prompts")
        chat = self.config.chat if chat is None else chat
        ids = [encode_prompt(self.tokenizer, p, chat) for p in prompts]
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=self.device)
        pools = [pool_positions(self.tokenizer, p, chat) if chat else [1] * len(i) for p, i in zip(prompts, ids)]
        pool = torch.tensor([[0] * (width - len(q)) + q for q in pools], device=self.device)
        ctx = PromptContext(mask, pool_mask=pool, reapply=not use_cache)
        stop = StoppingCriteriaList([NewlineStop(self.tokenizer, width)]) if stop_at_newline else None
        with self.prompt_context(ctx):
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max(budgets),
                do_sample=False,
                use_cache=use_cache,
                pad_token_id=pad,
                stopping_criteria=stop,
            )
        new_ids = [row[width : width + k] for row, k in zip(out, budgets)]
        if return_ids:
            rows = [row.tolist() for row in new_ids]
            return rows[0] if single else rows
        texts = [self._answer_text(row.tolist(), stop_at_newline) for row in new_ids]
        return texts[0] if single else texts

    @property
    def eos_ids(self) -> set[int]:
        """The token ids that end an answer (the generation config's end-of-sequence ids)."""
        ends = self.model.generation_config.eos_token_id
        return set(ends if isinstance(ends, list) else [ends]) - {None}

    @property
    def model_name(self) -> str:
        """The model's name (the embedded model's label, else its id or directory)."""
        return getattr(self.model, "horen_name", self.model.config._name_or_path)

    def _answer_text(self, ids: list[int], stop_at_newline: bool) -> str:
        """An answer's text: cut at its first end-of-sequence token (and newline after text)."""
        ends = self.eos_ids
        cut = next((k for k, t in enumerate(ids) if t in ends), len(ids))
        text = self.tokenizer.decode(ids[:cut], skip_special_tokens=True).strip()
        return text.split("\n", 1)[0].strip() if stop_at_newline else text

    # ---- save / load ---------------------------------------------------------------------
    def identity(self) -> dict:
        """What a saved edit set must match: family, site, dimensions, W's fingerprint."""
        return {
            "name": self.model_name,
            "model_type": self.model.config.model_type,
            "site": self.site.path,
            "d_in": self.site.d_in,
            "d_out": self.site.d_out,
            "fingerprint": fingerprint(self.model, self.site),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the edits (never the base weights) to directory ``path``, atomically."""
        path = Path(path)
        state, tensors = self._state()
        meta = {
            "format": FORMAT,
            "method": self.method,
            "config": self.config.to_dict(),
            "model": self.identity(),
            "edits": self.edits,
            "next_edit_id": self.next_edit_id,
            "state": state,
        }
        refuse_foreign(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp / "edits.safetensors")
            (tmp / "edit_config.json").write_text(json.dumps(meta, indent=1))
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        return path

    @classmethod
    def load(cls, model, tokenizer, path: str | os.PathLike) -> Editor:
        """Load a saved edit set onto a freshly loaded base ``model``.

        Works on the base class too (``Editor.load``): the method is read from the file.
        Raises ``ValueError`` if the save comes from another model (family, edit site,
        dimensions or weight fingerprint differ).
        """
        path = Path(path)
        meta, tensors = read_saved(path)
        editor_cls = get_method(meta["method"])
        if cls is not Editor and not issubclass(editor_cls, cls):
            raise ValueError(f"{path} holds '{meta['method']}' edits, not '{cls.method}'")
        config = editor_cls.config_class.from_dict(meta["config"])
        editor = editor_cls(model, tokenizer, config)
        mine, theirs = editor.identity(), meta["model"]
        diff = [k for k in ("model_type", "site", "d_in", "d_out", "fingerprint") if mine[k] != theirs[k]]
        if diff:
            editor.close()
            details = ", ".join(f"{k}: saved {theirs[k]!r}, this model {mine[k]!r}" for k in diff)
            raise ValueError(f"{path} was saved from another model ({details})")
        try:
            editor._load_state(meta["state"], tensors)
            editor.edits, editor.next_edit_id = meta["edits"], meta["next_edit_id"]
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            editor.close()  # the model is left as it was: a later editor can wrap it
            raise ValueError(f"{path}: the saved edits do not load ({type(err).__name__}: "
                             f"{err})") from err
        return editor

    def close(self) -> None:
        """Detach the editor from the model (the base model is left as it was loaded)."""


class NewlineStop(StoppingCriteria):
    """Generation stopping rule: a row is done once its new text holds a newline after some
    non-blank text (a ``transformers`` stopping criterion; the end-of-sequence token is
    handled by ``generate`` itself)."""

    def __init__(self, tokenizer, width: int) -> None:
        self.tokenizer, self.width = tokenizer, width

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width :], skip_special_tokens=True)
        done = ["\n" in t.lstrip() for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def refuse_foreign(path: str | os.PathLike) -> None:
    """A ``ValueError`` if ``path`` exists and is neither a saved edit set nor an empty folder:
    whatever a user keeps there is never replaced by an edit set."""
    path = Path(path)
    if path.exists() and not (path / "edit_config.json").exists() and (
            not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{path} exists and is not a saved edit set (no edit_config.json); "
                         "refusing to replace it")


def saved_dir(path: str | os.PathLike) -> Path | None:
    """The directory holding the edit set saved at ``path``, or None if there is none.

    A save that crashed between its two renames leaves no ``path`` but the previous save
    intact beside it (``.NAME.old-PID``): that one (the newest, if several) is returned.
    """
    path = Path(path)
    if (path / "edit_config.json").exists():
        return path
    olds = [p for p in path.parent.glob(f".{path.name}.old-*") if (p / "edit_config.json").exists()]
    if not olds:
        return None
    newest = max(olds, key=lambda p: (p / "edit_config.json").stat().st_mtime)
    warnings.warn(f"{path} is missing; reading the previous save {newest}", stacklevel=3)
    return newest


def read_meta(path: str | os.PathLike) -> dict | None:
    """The metadata of the edit set at ``path`` (None if there is none), checked."""
    where = saved_dir(path)
    return None if where is None else _meta_at(where)


def _meta_at(where: Path) -> dict:
    try:
        meta = json.loads((where / "edit_config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where / 'edit_config.json'} is unreadable: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{where}: unknown format {found!r}, expected {FORMAT}")
    missing = [k for k in ("method", "config", "model", "edits", "next_edit_id", "state")
               if k not in meta]
    if missing:
        raise ValueError(f"{where / 'edit_config.json'}: missing {missing}")
    return meta


def read_saved(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(meta, tensors)`` of a saved edit set, with clear errors for what is wrong."""
    where = saved_dir(path)
    if where is None:
        raise FileNotFoundError(f"no saved edits at {path} (no edit_config.json)")
    meta = _meta_at(where)
    try:
        return meta, load_file(where / "edits.safetensors")
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{where / 'edits.safetensors'} is unreadable: {err}") from err
