"""WISE: side memory, knowledge sharding and activation routing (Wang et al., NeurIPS 2024),
as EasyEdit implements it; BASELINES.md §6.

The FFN value matrix W_v (the MLP output projection, HoReN's site) stays frozen. A copy W_v′,
the *side memory*, is trained per edit and chosen at inference per sequence by its
activation score

    Δ(x) = mean over the prompt tokens t of ‖φ(W_v′ a_t) − φ(W_v a_t)‖₂   (φ: the model's act)

Training one edit (:meth:`WISE.train`): the prompt + target under 11 templates (``"{}"`` and
10 greedy continuations of "I", "You", "Because", "Yes", "Q: " to 5 and 10 tokens) plus one
irrelevant sentence (a Wikipedia sentence from the offline corpus, never an evaluation
probe); SGD (lr 1.0, weight decay 1e-5) on W_v′ only, each gradient multiplied by the
shard's fixed Bernoulli(mask_ratio) mask, W_v′ clamped to W_v ± norm_constraint, on

    L = CE(target | in-scope rows) + mean⁺(Δ_out − Δ_in + γ) + mean⁺(Δ_out − α) + mean⁺(β − Δ_in)

(mean⁺: the mean of the positive entries), stopped when the loss changes by ≤ 1e-4 and is
≤ 0.02 (the target: the answer's tokens, and with ``answer_end="auto"`` the end-of-sequence
token after them, as HoReN trains; EasyEdit: the answer only). The shard's threshold is the
minimum in-scope Δ recorded at the last step of its edits. Every ``save_freq`` edits W_v′ is
saved to memory and reset (a new mask); every ``merge_freq`` edits the last saved shards are
TIES-merged (top-``densities`` magnitudes of each task vector, elected sign, disjoint mean)
into one memory with the minimum threshold.

Routing (retrieve mode): the current side memory is used if Δ ≥ act_ratio·its threshold,
else the original W_v; then each saved memory i replaces the choice if its Δ_i exceeds the
best Δ so far and act_ratio·threshold_i. The chosen matrix is applied to every token of the
sequence (and to the tokens decoded after it).

Where we differ from EasyEdit's code, on purpose: the decision is made once per prompt from
the prompt tokens (the code re-scores whatever sequence it is given, target tokens and
padding included, and asks for batch size 1), so teacher-forced and generation scoring see
the same routing and batching does not change it; the training Δ's are over the same
prompt tokens; the cross-entropy is a plain mean over target tokens. Rollback of an edit of
the live shard retrains the shard's other edits from its start (exact, as training is
deterministic); edits already saved to memory cannot be rolled back.
"""

from __future__ import annotations

import dataclasses
import random

import torch
import torch.nn.functional as F
from torch import nn

from ...data.record import EditRecord
from ...layer import PromptContext, WrapperLayer
from ...models import get_module, set_module
from ...stats import corpus_texts
from ...suffix import Suffix
from ...text import answer_end_ids, check_answer_end, make_batch
from ..base import EditorConfig, register
from ..swapped import SwappedLayerEditor
from ..weights.locate import cat_batches

TEMPLATE_STARTS = ("I", "You", "Because", "Yes", "Q: ")
FALLBACK_LOC = ("The river flows through the old town.", "Paris is the capital of France.",
                "A triangle has three sides.", "The museum opened in 1901.")
ANSWER_END_HELP = (
    "trained after each target: 'none' (the authors': only the target's tokens, so answers "
    "run on after it), 'auto' (the end-of-sequence token; chat: the template's end-of-turn "
    "token, as HoReN trains), or a stop string")


@dataclasses.dataclass
class WISEConfig(EditorConfig):
    """WISE's settings; defaults are EasyEdit's Llama/Qwen config (HoReN's too)."""

    edit_lr: float = dataclasses.field(default=1.0, metadata={"help": "SGD lr on W_v'"})
    n_iter: int = dataclasses.field(default=70, metadata={"help": "SGD steps per edit, at most"})
    mask_ratio: float = dataclasses.field(default=0.2, metadata={"help": "Bernoulli gradient mask"})
    act_margin: list[float] = dataclasses.field(
        default_factory=lambda: [5.0, 20.0, 10.0],
        metadata={"help": "[alpha, beta, gamma]: out <= alpha, in >= beta, in - out >= gamma"})
    act_ratio: float = dataclasses.field(default=0.88, metadata={"help": "routing threshold factor"})
    save_freq: int = dataclasses.field(default=500, metadata={"help": "edits per shard"})
    merge_freq: int = dataclasses.field(default=1000, metadata={"help": "TIES-merge period"})
    densities: float = dataclasses.field(default=0.53, metadata={"help": "TIES: kept magnitudes"})
    weight_decay: float = dataclasses.field(default=1e-5, metadata={"help": "SGD weight decay"})
    norm_constraint: float = dataclasses.field(
        default=1.0, metadata={"help": "clamp W_v' to W_v +- this, elementwise"})
    templates: str = dataclasses.field(
        default="generated", metadata={"help": "'generated' (10 greedy prefixes) or 'bare'"})
    answer_end: str = dataclasses.field(
        default="none", metadata={"help": ANSWER_END_HELP})

    def __post_init__(self) -> None:
        if self.templates not in ("generated", "bare"):
            raise ValueError(f"templates must be 'generated' or 'bare', not {self.templates!r}")
        check_answer_end(self.answer_end)
        if len(self.act_margin) != 3 or self.edit_lr <= 0 or self.n_iter < 1:
            raise ValueError("act_margin needs 3 values; edit_lr > 0; n_iter >= 1")
        if not 0 < self.mask_ratio <= 1 or not 0 < self.densities <= 1:
            raise ValueError("mask_ratio and densities must be in (0, 1]")
        if self.save_freq < 1 or self.merge_freq % self.save_freq:
            raise ValueError("merge_freq must be a multiple of save_freq >= 1")


def greedy_templates(editor, how: str = "generated") -> list[str]:
    """WISE's (and MEMOIR's) edit templates: ``["{}"]`` and, with ``how="generated"``, the
    unedited model's greedy continuations of :data:`TEMPLATE_STARTS` to 5 and 10 new tokens,
    each followed by ``" {}"`` (braces in the text become spaces); ``"bare"``: ``["{}"]``."""
    templates = ["{}"]
    if how == "generated":
        tok, model = editor.tokenizer, editor.model
        with editor.disabled(), torch.no_grad():
            for length in (5, 10):
                for start in TEMPLATE_STARTS:
                    ids = torch.tensor([tok(start).input_ids], device=editor.device)
                    gen = model.generate(
                        input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                        max_new_tokens=length, pad_token_id=tok.pad_token_id)
                    text = tok.decode(gen[0], skip_special_tokens=True)
                    templates.append(text.replace("{", " ").replace("}", " ") + " {}")
    return templates


def mean_pos(x: torch.Tensor) -> torch.Tensor:
    """Mean of the positive entries of ``x`` (0 if there are none)."""
    pos = x[x > 0]
    return pos.mean() if pos.numel() else x.new_zeros(())


def ties_merge(base: torch.Tensor, weights: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES merge of ``weights`` around ``base`` (equal weights; BASELINES.md §6)."""
    taus = []
    for w in weights:
        tau = w - base
        k = max(1, int(density * tau.numel()))
        cut = tau.abs().flatten().kthvalue(tau.numel() - k + 1).values
        taus.append(torch.where(tau.abs() >= cut, tau, torch.zeros_like(tau)))
    stack = torch.stack(taus)
    sign = torch.sign(stack.sum(0))
    agree = (torch.sign(stack) == sign) & (stack != 0)
    merged = (stack * agree).sum(0) / agree.sum(0).clamp_min(1)
    return base + merged


class WISELayer(WrapperLayer):
    """W_v wrapped with WISE's side memories; routes per sequence (module docstring)."""

    def __init__(self, base_layer: nn.Module, editor: WISE) -> None:
        super().__init__(base_layer, editor)
        self.train_side: torch.Tensor | None = None  # set while training: W_v' for every row
        self.train_delta: torch.Tensor | None = None  # (B, T) ‖φ(W'a) − φ(Wa)‖ of that pass

    def extra_repr(self) -> str:
        return f"method={self.editor.method}, memories={len(self.editor.memories)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        ed = self.editor
        if self.train_side is not None:
            side = ed.linear(x, self.train_side)
            self.train_delta = (ed.act(side) - ed.act(out)).norm(dim=-1)
            return side.clone()  # Falcon adds to the MLP output in place; train_delta needs side
        candidates = ed.candidates() if self.enabled else []
        if not candidates:
            return out
        ctx = self.context or PromptContext(torch.ones(x.shape[:2], device=x.device))
        if ctx.decision is None:
            ctx.decision = ed.route(x[:, : ctx.mask.shape[1]], out[:, : ctx.mask.shape[1]],
                                    ctx.pooled)
        choice = ctx.decision
        out = out.clone()
        for c in choice.unique().tolist():
            if c < 0:
                continue
            rows = (choice == c).nonzero(as_tuple=True)[0]
            out[rows] = ed.linear(x[rows], candidates[c][0]).to(out.dtype)
        return out


@register
class WISE(SwappedLayerEditor):
    """WISE: a trained side copy of W_v per shard, chosen per prompt by activation score.

    Example:
        >>> ed = WISE(model, tok)  # doctest: +SKIP
        >>> ed.edit("Who leads Zorblat Industries?", "Mira Quell")
    """

    method = "wise"
    config_class = WISEConfig

    def __init__(self, model, tokenizer, config=None, **overrides):
        super().__init__(model, tokenizer, config, **overrides)
        base = get_module(model, self.site.path)
        if isinstance(base, WrapperLayer):
            raise ValueError(f"{self.site.path} is already wrapped by an editor; close() it first")  # noqa: TRY004
        w = base.weight.detach()
        self.w0 = (w.T if self.site.conv1d else w).float().clone()  # (d_out, d_in)
        self.bias = None if getattr(base, "bias", None) is None else base.bias.detach().float()
        name = getattr(model.config, "hidden_act", None) or getattr(
            model.config, "activation_function", "gelu_new")
        from transformers.activations import ACT2FN

        self.act = ACT2FN[name]
        self.layer = WISELayer(base, self)
        set_module(model, self.site.path, self.layer)
        self.suffix = Suffix(model, self.site)
        self.templates: list[str] | None = None
        self._loc_pool: list[str] | None = None
        self.memories: list[tuple[torch.Tensor, float]] = []  # saved (W', threshold)
        self.saved_ids: list[int] = []  # edits inside saved memories
        self.side = self.w0.clone()
        self.end_ids = answer_end_ids(tokenizer, self.config.chat, self.config.answer_end)
        self.shard = 0
        self.mask = self._mask(0)
        self.shard_edits: list[tuple[int, EditRecord, float]] = []  # (id, record, in-scope Δ)

    @property
    def edit_count(self) -> int:
        """Live edits: those saved in memories and those of the live shard."""
        return len(self.saved_ids) + len(self.shard_edits)

    # ---- pieces -----------------------------------------------------------------------------
    def linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = F.linear(x.float(), w)
        return out if self.bias is None else out + self.bias

    def _mask(self, shard: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.config.seed * 100_003 + shard)
        return (torch.rand(self.w0.shape, generator=gen) < self.config.mask_ratio).float().to(
            self.w0.device)

    def threshold(self) -> float:
        """The live shard's threshold: the minimum in-scope Δ of its edits (inf if none)."""
        return min((d for _, _, d in self.shard_edits), default=float("inf"))

    def candidates(self) -> list[tuple[torch.Tensor, float]]:
        """``[(W', threshold)]``: the live side memory (if it holds edits), then saved ones."""
        live = [(self.side, self.threshold())] if self.shard_edits else []
        return live + self.memories

    def route(self, acts: torch.Tensor, base_out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B,)`` index into :meth:`candidates`, -1 for the original W_v (module docstring)."""
        weight = mask.to(acts.dtype)
        count = weight.sum(1).clamp_min(1)
        phi0 = self.act(base_out.float())
        choice = torch.full((acts.shape[0],), -1, dtype=torch.long, device=acts.device)
        best = torch.full((acts.shape[0],), -float("inf"), device=acts.device)
        live = bool(self.shard_edits)
        for i, (w, thr) in enumerate(self.candidates()):
            d = ((self.act(self.linear(acts, w)) - phi0).norm(dim=-1) * weight).sum(1) / count
            if i == 0 and live:  # the live shard; the running best starts at its score
                take, best = d >= self.config.act_ratio * thr, d
            else:
                take = (d > best) & (d > self.config.act_ratio * thr)
                best = torch.where(take, d, best)
            choice = torch.where(take, torch.full_like(choice, i), choice)
        return choice

    def context_templates(self) -> list[str]:
        """``["{}"]`` + greedy continuations of :data:`TEMPLATE_STARTS` (5 and 10 tokens)."""
        if self.templates is None:
            self.templates = greedy_templates(self, self.config.templates)
        return self.templates

    def loc_sentence(self, edit_id: int) -> str:
        """The irrelevant row of edit ``edit_id``: a Wikipedia sentence (seeded by the id)."""
        if self._loc_pool is None:
            try:
                texts = corpus_texts("wiki_corpus")[:2000]
            except (FileNotFoundError, OSError):
                texts = []
            pool = [s.strip() + "." for t in texts for s in t.split(". ")[:2] if 20 < len(s) < 160]
            self._loc_pool = pool or list(FALLBACK_LOC)
        return random.Random(self.config.seed * 7919 + edit_id).choice(self._loc_pool)

    # ---- training ----------------------------------------------------------------------------
    def train(self, record: EditRecord, edit_id: int) -> dict:
        """Train the live side memory on one edit (module docstring); returns log fields."""
        cfg, tok, chat = self.config, self.tokenizer, self.config.chat
        prompts = [t.replace("{}", record.prompt) for t in self.context_templates()]
        m = len(prompts)
        edit = make_batch(tok, self.model, prompts, [record.target] * m, chat, self.end_ids)
        loc = make_batch(tok, self.model, [self.loc_sentence(edit_id)], chat=chat)
        batch = cat_batches(edit, loc, tok.pad_token_id).to(self.device)
        prompt_w = torch.cat([batch.prompt_mask[:m], batch.attention_mask[m:]]).float()
        captured = self.suffix.capture(batch.input_ids, batch.attention_mask)
        rows, cols = batch.target_mask.nonzero(as_tuple=True)
        labels = batch.input_ids[rows, cols]
        side = self.side.clone().requires_grad_(True)
        opt = torch.optim.SGD([side], lr=cfg.edit_lr, weight_decay=cfg.weight_decay)
        alpha, beta, gamma = cfg.act_margin
        prev, step = None, 0
        try:
            self.layer.train_side = side
            for step in range(1, cfg.n_iter + 1):
                logits = self.suffix.logits(captured, rows, cols - 1)
                ce = F.cross_entropy(logits, labels)
                delta = (self.layer.train_delta * prompt_w).sum(1) / prompt_w.sum(1).clamp_min(1)
                d_in, d_out = delta[:m], delta[m:]
                act = mean_pos(d_out - d_in + gamma) + mean_pos(d_out - alpha) + mean_pos(beta - d_in)
                loss = ce + act + self.extra_loss(logits)
                if prev is not None and abs(loss.item() - prev) <= 1e-4 and loss.item() <= 0.02:
                    break
                prev = loss.item()
                if step == cfg.n_iter:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                side.grad.mul_(self.mask)
                opt.step()
                with torch.no_grad():
                    side.copy_(torch.clamp(side, self.w0 - cfg.norm_constraint,
                                           self.w0 + cfg.norm_constraint))
        finally:
            self.layer.train_side, self.layer.train_delta = None, None
        self.side = side.detach()
        return {"steps": step, "loss": round(loss.item(), 5), "ce": round(ce.item(), 5),
                "act_in": round(d_in.mean().item(), 4), "act_out": round(d_out.mean().item(), 4),
                "_act_in": d_in.mean().item()}

    def extra_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """A term added to the loss at every training step, given the answer-token logits
        ``(N, vocab)`` of the in-scope rows under the current W_v′: zero here (REPAIR adds its
        distillation term, :mod:`.repair`)."""
        return logits.new_zeros(())

    def _apply(self, record: EditRecord) -> dict:
        cfg = self.config
        if self.edit_count and self.edit_count % cfg.save_freq == 0 and self.shard_edits:
            self.save_shard()
        info = self.train(record, self.next_edit_id)
        self.shard_edits.append((self.next_edit_id, record, info.pop("_act_in")))
        return {"case": "train", "entry": f"shard {self.shard}", "shard": self.shard, **info}

    def save_shard(self) -> None:
        """Move the live side memory to memory (TIES-merging every merge_freq edits)."""
        cfg, count = self.config, self.edit_count
        self.memories.append((self.side, self.threshold()))
        self.saved_ids += [i for i, _, _ in self.shard_edits]
        per_merge = cfg.merge_freq // cfg.save_freq
        if per_merge > 1 and count % cfg.merge_freq == 0:
            group, self.memories = self.memories[-per_merge:], self.memories[:-per_merge]
            merged = ties_merge(self.w0, [w for w, _ in group], cfg.densities)
            self.memories.append((merged, min(t for _, t in group)))
        self.side, self.shard_edits = self.w0.clone(), []
        self.shard += 1
        self.mask = self._mask(self.shard)

    # ---- rollback ------------------------------------------------------------------------------
    def _conflicts(self, edit: dict) -> list[int]:
        return []  # the shard is retrained without it: later edits stay, as if it never was

    def _remove(self, edit: dict) -> None:
        if edit["id"] in self.saved_ids:
            raise ValueError(f"edit {edit['id']} is in a saved WISE memory; it cannot be rolled back")
        kept = [(i, r) for i, r, _ in self.shard_edits if i != edit["id"]]
        self.side, self.shard_edits = self.w0.clone(), []
        for i, record in kept:  # retrain from the shard's start: same steps, same result
            info = self.train(record, i)
            self.shard_edits.append((i, record, info["_act_in"]))

    # ---- state ---------------------------------------------------------------------------------
    def _state(self):
        tensors = {"side": self.side}  # the side memories are the edits (W_v itself is not saved)
        for k, (w, _) in enumerate(self.memories):
            tensors[f"memory.{k}"] = w
        state = {
            "thresholds": [t for _, t in self.memories], "saved_ids": self.saved_ids,
            "shard": self.shard, "templates": self.templates,
            "shard_edits": [[i, dataclasses.asdict(r), d] for i, r, d in self.shard_edits],
        }
        return state, tensors

    def _load_state(self, state, tensors):
        self.templates = state.get("templates")
        self.shard = state["shard"]
        self.mask = self._mask(self.shard)
        self.side = tensors["side"].to(self.w0)
        self.memories = [(tensors[f"memory.{k}"].to(self.w0), t)
                         for k, t in enumerate(state["thresholds"])]
        self.saved_ids = list(state["saved_ids"])
        self.shard_edits = [(i, EditRecord(**r), d) for i, r, d in state["shard_edits"]]

