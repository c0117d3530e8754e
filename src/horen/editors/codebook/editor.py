"""Machinery shared by the codebook editors (HoReN, GRACE and the ablations).

A :class:`CodebookEditor` owns a :class:`~horen.codebook.Codebook`, swaps a
:class:`~horen.layer.CodebookLayer` in place of W, and writes one edit as:

1. tokenize ``prompt + " " + target`` (:func:`horen.text.make_batch`);
2. run the layers below L once (:meth:`horen.suffix.Suffix.capture`) and read W's input;
3. ``query`` it (method-specific), ``write`` the codebook (method-specific: the update cases);
4. train that entry's value (L-BFGS or Adam, ``optimizer``) on the target's cross-entropy
   (the end token weighted, ``end_weight``), running only layers
   L..end on the captured activations, the LM head only at the target positions
   (:mod:`horen.editors.codebook.training`).

Values are direct vectors (d_model) or, as the paper's appendix H.3, rank-r LoRA pairs
(:class:`LoRAValues`), applied to W's input at the last prompt token.
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import torch

from ...codebook import Codebook
from ...layer import CodebookLayer, PromptContext, StopForward, WrapperLayer
from ...models import get_module, set_module
from ...suffix import Suffix
from ...text import Batch, answer_end_ids, check_answer_end, make_batch
from ..base import EditorConfig, NotConvergedWarning
from ..swapped import SwappedLayerEditor
from .training import full_forward, tail_forward, train_values


@dataclasses.dataclass
class TrainConfig(EditorConfig):
    """Value-training settings shared by the codebook editors."""

    lr: float = dataclasses.field(
        default=1.0,
        metadata={"help": "Adam learning rate (with L-BFGS: its first step is as long as "
                  "Adam's first, lr * sqrt(value size))"},
    )
    max_steps: int = dataclasses.field(
        default=200,
        metadata={"help": "Adam steps (L-BFGS: loss evaluations) per edit, at most (the paper: "
                  "50 Adam steps)"},
    )
    early_stop: bool = dataclasses.field(
        default=True,
        metadata={"help": "stop when loss < stop_loss or no gain for `patience` steps"},
    )
    stop_loss: float = dataclasses.field(
        default=0.05, metadata={"help": "early-stop loss (the reference: 0.01)"}
    )
    patience: int = dataclasses.field(default=3, metadata={"help": "steps without improvement"})
    plateau_decay: float = dataclasses.field(
        default=0.0,
        metadata={"help": "at a plateau above converge_loss, go on from the best value with "
                  "the learning rate times this (0: stop there, the reference's rule)"},
    )
    value_init: str = dataclasses.field(
        default="zero", metadata={"help": "'zero', or 'cold' (uniform [0,1), the reference's)"}
    )
    optimizer: str = dataclasses.field(
        default="adam",
        metadata={"help": "'adam' (the paper's) or 'lbfgs' (per-edit L-BFGS with a line search; "
                  "max_steps then counts loss evaluations)"},
    )
    lbfgs_first: float = dataclasses.field(
        default=1.0,
        metadata={"help": "L-BFGS: the first step's length in units of Adam's first at lr "
                  "(lr * sqrt(value size))"},
    )
    lbfgs_expand: float = dataclasses.field(
        default=2.0,
        metadata={"help": "L-BFGS line search: a step that still descends steeply is tried "
                  "this many times longer"},
    )
    lbfgs_history: int = dataclasses.field(
        default=10, metadata={"help": "L-BFGS: curvature pairs kept per edit"}
    )
    lbfgs_min_gain: float = dataclasses.field(
        default=0.0,
        metadata={"help": "L-BFGS: an edit stops once its loss fell by less than this fraction "
                  "over its last lbfgs_window evaluations (0: never)"},
    )
    lbfgs_window: int = dataclasses.field(
        default=20, metadata={"help": "L-BFGS: evaluations over which lbfgs_min_gain is asked"}
    )
    value: str = dataclasses.field(default="direct", metadata={"help": "'direct' or 'lora'"})
    lora_rank: int = dataclasses.field(default=4, metadata={"help": "rank of LoRA values"})
    truncate: bool = dataclasses.field(
        default=True,
        metadata={"help": "train values through layers L..end only (False: the full model)"},
    )
    answer_end: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "trained after each target so the answer stops there: 'auto' (chat: the "
            "template's end-of-turn token; plain: the end-of-sequence token), 'none' (the "
            "paper: nothing, answers run on), or a stop string"
        },
    )
    end_weight: float = dataclasses.field(
        default=1.0,
        metadata={"help": "weight of the answer-end token(s) in an edit's training loss (a sum "
                  "over the target's tokens divided by their number; 1: a plain mean)"},
    )
    value_l2: float = dataclasses.field(
        default=0.0,
        metadata={"help": "adds value_l2 * mean(value**2) to each edit's training loss (and to "
                  "the loss reported): a smaller push at the edit site (0: off, the paper)"},
    )
    converge_loss: float = dataclasses.field(
        default=0.1,
        metadata={"help": "an edit whose final loss is above this is reported as not converged"},
    )
    micro_batch: int | None = dataclasses.field(
        default=None,
        metadata={"help": "edits whose values train together in apply_many; None = 32 CPU, 64 GPU"},
    )

    @classmethod
    def inert_settings(cls, config: dict) -> set[str]:
        """The L-BFGS settings when ``config`` trains with Adam: they change nothing there."""
        if config["optimizer"] == "lbfgs":
            return set()
        return {f.name for f in dataclasses.fields(cls) if f.name.startswith("lbfgs_")}

    def __post_init__(self) -> None:
        if self.value_init not in ("zero", "cold"):
            raise ValueError(f"value_init must be 'zero' or 'cold', not {self.value_init!r}")
        if self.optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"optimizer must be 'adam' or 'lbfgs', not {self.optimizer!r}")
        if self.value not in ("direct", "lora"):
            raise ValueError(f"value must be 'direct' or 'lora', not {self.value!r}")
        check_answer_end(self.answer_end)
        if not 0 <= self.plateau_decay < 1:
            raise ValueError(f"plateau_decay must be in [0, 1), not {self.plateau_decay}")
        if self.end_weight <= 0:
            raise ValueError(f"end_weight must be > 0, not {self.end_weight}")
        if self.value_l2 < 0:
            raise ValueError(f"value_l2 must be >= 0, not {self.value_l2}")
        if self.lbfgs_first <= 0 or self.lbfgs_expand <= 1 or self.lbfgs_history < 1:
            raise ValueError("lbfgs_first must be > 0, lbfgs_expand > 1, lbfgs_history >= 1")
        if not 0 <= self.lbfgs_min_gain < 1 or self.lbfgs_window < 1:
            raise ValueError("lbfgs_min_gain must be in [0, 1) and lbfgs_window >= 1")
        if self.lr <= 0 or self.max_steps < 1 or self.patience < 1:
            raise ValueError("lr must be > 0, max_steps and patience >= 1")


class DirectValues:
    """A value is one d_model vector added to (or replacing) W's output."""

    def __init__(self, d_in: int, d_out: int) -> None:
        self.shape = (d_out,)

    def delta(self, values: torch.Tensor, acts_last: torch.Tensor) -> torch.Tensor:
        return values

    def init(self, how: str, gen: torch.Generator) -> torch.Tensor:
        return torch.rand(self.shape, generator=gen) if how == "cold" else torch.zeros(self.shape)


class LoRAValues:
    """A value is a rank-r pair (A: r x d_in, B: d_out x r); delta = B A a at the last token."""

    def __init__(self, d_in: int, d_out: int, rank: int) -> None:
        self.d_in, self.d_out, self.rank = d_in, d_out, rank
        self.shape = (rank * (d_in + d_out),)

    def delta(self, values: torch.Tensor, acts_last: torch.Tensor) -> torch.Tensor:
        a = values[:, : self.rank * self.d_in].view(-1, self.rank, self.d_in)
        b = values[:, self.rank * self.d_in :].view(-1, self.d_out, self.rank)
        return torch.einsum("bor,brd,bd->bo", b, a, acts_last.to(values.dtype))

    def init(self, how: str, gen: torch.Generator) -> torch.Tensor:
        a = torch.randn(self.rank * self.d_in, generator=gen) / self.d_in**0.5
        return torch.cat([a, torch.zeros(self.rank * self.d_out)])  # B = 0: starts as a no-op


class CodebookEditor(SwappedLayerEditor):
    """Base of the codebook editors. Subclasses define ``query``, ``match`` and ``write``."""

    config_class = TrainConfig
    mode = "add"

    def __init__(self, model, tokenizer, config=None, **overrides):
        super().__init__(model, tokenizer, config, **overrides)
        site = self.site
        self.values = (
            LoRAValues(site.d_in, site.d_out, self.config.lora_rank)
            if self.config.value == "lora"
            else DirectValues(site.d_in, site.d_out)
        )
        base = get_module(model, site.path)
        if isinstance(base, WrapperLayer):
            raise ValueError(f"{site.path} is already wrapped by an editor; close() it first")  # noqa: TRY004
        self.codebook = Codebook(site.d_in, self.values.shape, device=base.weight.device)
        self.layer = CodebookLayer(base, self)
        set_module(model, site.path, self.layer)
        self.suffix = Suffix(model, site)
        self.end_ids = answer_end_ids(tokenizer, self.config.chat, self.config.answer_end)
        self.undo: dict[str, torch.Tensor] = {}
        self._tail_ok: bool | None = None  # does the cached-prefix training match? (checked once)

    # ---- method-specific ---------------------------------------------------------------
    def query(self, acts: torch.Tensor, ctx: PromptContext) -> torch.Tensor:
        """``(B, d_in)`` float32 query of each prompt from W's input ``acts``."""
        raise NotImplementedError

    def match(self, q: torch.Tensor) -> torch.Tensor:
        """``(B,)`` matched codebook rows, ``NO_MATCH`` (-1) where none."""
        raise NotImplementedError

    def write(self, q: torch.Tensor, target: str) -> tuple[int, dict]:
        """Update the codebook for one edit: ``(row to train, log fields)``."""
        raise NotImplementedError

    # ---- used by CodebookLayer -----------------------------------------------------------
    def route(self, acts: torch.Tensor, ctx: PromptContext) -> torch.Tensor:
        return self.match(self.query(acts, ctx))

    def delta(self, rows, acts_last, values=None) -> torch.Tensor:
        values = self.codebook.values[rows] if values is None else values
        return self.values.delta(values, acts_last)

    # ---- writing edits -------------------------------------------------------------------
    def _apply(self, record) -> dict:
        return self._apply_batch([record])[0]

    def apply_many(self, records, micro_batch: int | None = None) -> list[int]:
        """Apply edits in order, ``micro_batch`` at a time; returns their edit ids.

        Routing stays strictly sequential: each edit is routed against the codebook as it
        stands after every earlier edit, those of its own micro-batch included, so the
        codebook decisions are those of one-at-a-time editing. Only the value training of a
        micro-batch runs as one batched optimization (each edit its own value and its own
        early stop); an edit that trains an entry an earlier edit of the same micro-batch
        trains waits for it (a later "wave").
        """
        size = micro_batch or self.micro_batch_size
        ids = []
        for start in range(0, len(records), size):
            chunk = list(records[start : start + size])
            began = time.perf_counter()
            infos = self._apply_batch(chunk)
            seconds = (time.perf_counter() - began) / len(chunk)
            ids += [self._log(r, {**info, "batch": len(chunk)}, seconds) for r, info in zip(chunk, infos)]
        return ids

    @property
    def micro_batch_size(self) -> int:
        """The configured micro-batch, else 32 edits on a CPU and 64 on a GPU.

        Larger batches share each read of the LM head (the biggest matrix of a step) among
        more target tokens: 0.60 -> 0.48 s/edit from 8 to 32 on the embedded model, 2 threads.
        """
        return self.config.micro_batch or (64 if self.device.type == "cuda" else 32)

    def _apply_batch(self, records) -> list[dict]:
        chat = self.config.chat
        prompts, targets = [r.prompt for r in records], [r.target for r in records]
        batch = make_batch(
            self.tokenizer, self.model, prompts, targets, chat, end_ids=self.end_ids
        ).to(self.device)
        captured = self.suffix.capture(batch.input_ids, batch.attention_mask)
        q = self.query(self.read_acts(captured, batch), PromptContext.of(batch))
        plan, wave_of = [], {}
        for i, target in enumerate(targets):
            row, info = self.write(q[i], target)
            wave_of[row] = wave = wave_of.get(row, -1) + 1
            plan.append((row, info, wave))
        for wave in range(max(w for _, _, w in plan) + 1):
            idx = [i for i, (_, _, w) in enumerate(plan) if w == wave]
            for i in idx:
                row, info, _ = plan[i]
                if info["case"] == "extend":
                    self.snapshot(f"undo.{self.next_edit_id + i}.{info['entry']}", row)
            sub = batch if len(idx) == len(plan) else batch.select(idx)
            init = torch.cat([self.initial_value(plan[i][0], plan[i][1]) for i in idx])
            values, stats = self.train_value(init, sub)
            for k, i in enumerate(idx):
                self.codebook.set_value(plan[i][0], values[k])
                plan[i][1].update(stats[k])
        infos = [info for _, info, _ in plan]
        stuck = [(r.prompt, info["loss"]) for r, info in zip(records, infos) if not info["converged"]]
        if stuck:
            shown = "; ".join(f"{p!r} (loss {loss:.3g})" for p, loss in stuck[:3])
            more = f" and {len(stuck) - 3} more" if len(stuck) > 3 else ""
            warnings.warn(
                f"{len(stuck)} of {len(records)} edits did not converge (final loss above "
                f"converge_loss={self.config.converge_loss}): {shown}{more}; they are stored "
                "and marked converged=False in the edit log",
                NotConvergedWarning,
                stacklevel=3,
            )
        return infos

    def read_acts(self, captured, batch: Batch) -> torch.Tensor:
        """W's input over the whole sequence, from the activations entering layer L."""
        ctx = PromptContext.of(batch, capture=True)
        with torch.no_grad(), self.layer.prompt(ctx):
            try:
                self.suffix.hidden(captured)
            except StopForward:
                pass
        return ctx.captured

    def initial_value(self, row: int, info: dict) -> torch.Tensor:
        if info["case"] == "extend":
            return self.codebook.values[row][None].clone()
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + info["entry"])
        return self.values.init(self.config.value_init, gen)[None].to(self.codebook.device)

    def train_value(self, init: torch.Tensor, batch: Batch, truncated: bool | None = None):
        """Train one value per row of ``batch`` from ``init`` ``(B, *value_shape)``
        (:func:`~horen.editors.codebook.training.train_values`: the loss, the optimizers and
        their early stops); returns ``(values, stats)``.

        With ``truncated`` (default: the ``truncate`` setting) only layers L..end run, on the
        last prompt token and the targets (:meth:`horen.suffix.Suffix.tail`); otherwise the
        full model runs every step (the reference's cost; same results up to float rounding).
        """
        truncated = self.config.truncate if truncated is None else truncated
        forward = self._tail_forward(batch, init) if truncated else self._full_forward(batch)
        return train_values(init, forward, self.config, len(self.end_ids))

    def _full_forward(self, batch: Batch):
        """The whole model's forward (:func:`~horen.editors.codebook.training.full_forward`)."""
        return full_forward(self.model, self.layer, batch)

    def _tail_forward(self, batch: Batch, check: torch.Tensor | None = None):
        """``forward(values) -> (rows, logits, labels)`` through layers L..end, on the tail
        (:func:`~horen.editors.codebook.training.tail_forward`).

        The first time (per editor) it is checked against the full model with the values
        ``check``; a model whose layers do not replay that way trains through the full model.
        """
        if self._tail_ok is False:
            return self._full_forward(batch)
        with self.disabled():  # the prefix as inference sees it: no value before the last token
            tail = self.suffix.tail(batch, self.tokenizer.pad_token_id or 0)
        forward = tail_forward(self.suffix, self.layer, tail)
        if self._tail_ok is None and check is not None:
            with torch.no_grad():
                fast, slow = forward(check)[1], self._full_forward(batch)(check)[1]
            self._tail_ok = bool(torch.allclose(fast, slow, atol=1e-3, rtol=1e-3))
            if not self._tail_ok:
                warnings.warn(
                    f"{type(self.model).__name__}: layers {self.site.layer}.. do not replay on a "
                    "cached prefix; value training runs the full model (slower, same result)",
                    stacklevel=3,
                )
                return self._full_forward(batch)
        return forward

    # ---- rollback bookkeeping --------------------------------------------------------------
    def snapshot(self, eid_key: str, row: int) -> None:
        """Keep an entry's value before this edit changes it (for rollback)."""
        self.undo[eid_key] = self.codebook.values[row].detach().clone().cpu()

    def _conflicts(self, edit: dict) -> list[int]:
        mine = set(edit["touches"])
        return [e["id"] for e in self.edits if e["id"] > edit["id"] and mine & set(e["touches"])]

    def _remove(self, edit: dict) -> None:
        cb = self.codebook
        for entry_id in edit["touches"]:
            row = cb.row(entry_id)
            if entry_id == edit["entry"] and edit["case"] != "extend":
                cb.remove(row)
                continue
            key = f"undo.{edit['id']}.{entry_id}"
            if key in self.undo:
                cb.set_value(row, self.undo.pop(key))
            radius = edit.get("old_radii", {}).get(str(entry_id))
            if radius is not None:
                cb.set_radius(row, radius)

    # ---- state -------------------------------------------------------------------------------
    def _state(self):
        cb = self.codebook
        state = {"labels": cb.labels, "ids": cb.ids, "next_id": cb.next_id}
        return state, {**cb.tensors(), **self.undo}

    def _load_state(self, state, tensors):
        undo = {k: v for k, v in tensors.items() if k.startswith("undo.")}
        self.codebook.load_tensors(tensors, state["labels"], state["ids"], state["next_id"])
        self.undo = undo

    # ---- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def queries(self, prompts: list[str]) -> torch.Tensor:
        """``(B, d_in)`` queries of prompts, before any refinement (read below layer L+1)."""
        batch = make_batch(self.tokenizer, self.model, prompts, chat=self.config.chat).to(self.device)
        captured = self.suffix.capture(batch.input_ids, batch.attention_mask)
        acts = self.read_acts(captured, batch)
        return self.query(acts, PromptContext.of(batch))

    @torch.no_grad()
    def routes(self, prompts: list[str]) -> torch.Tensor:
        """The codebook row each prompt is routed to (-1 = no match)."""
        return self.match(self.queries(prompts))

