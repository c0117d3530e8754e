"""UnKE: unstructured knowledge editing by refitting one whole decoder block (Deng et al.,
2025, "Everything is Editable"), ``../shared/docs/BASELINES-MORE.md`` §2.

A whole early block l (attention, MLP and norms: every parameter) is the key → value memory.
One edit, question q and a long answer y (y ends with the answer-end token, see below),
p = the last token of q:

1. **Target z** (:meth:`UnKE.compute_z`): h₀ = block l's output at p on q ⊕ y; a free δ ∈ R^d
   (zero start) is added there and the layers above run to the logits:

       L(δ) = −(1/T) Σ_j log P(y_j | q, y_<j; h_l(p) + δ) + v_weight_decay · ‖δ‖ / ‖h₀‖²,

   Adam(v_lr 0.5) for ``v_num_grad_steps`` = 25 passes, the last only computes the loss (24
   updates), δ projected onto ‖δ‖ ≤ clamp_norm_factor · ‖h₀‖ after each; z = h₀ + δ.
2. **Fit the block** (:meth:`UnKE.fit_block`): K_e, V_e = block l's inputs and outputs at all
   positions of q alone, V̂_e = V_e with V̂_e[p] = z (the authors' V_e[p] += z − h(p) with
   one edited layer); K_p, V_p = the same on ``n_preserve`` preservation texts. Over all
   block parameters θ, ``optim_num_step`` = 50 full-batch AdamW(lr 2e-4, β (0.9, 0.999),
   eps 1e-8) steps, no decay on norm weights, on

       L(θ) = MSE(B_θ(K_p), V_p) + MSE(B_θ(K_e), V̂_e)    (means over positions × d).

   The block runs standalone on the arguments of its real forward call, captured with a
   forward pre-hook (:func:`capture_block`), so rotary embeddings, masks and positions are
   the model's own whatever the transformers version; a block that returns a tuple or a
   tensor both work.

The edit is stored as the dense difference of every block-l parameter (:class:`WeightEditor`:
rollback by replay, bit-exact). That is the block's size per edit, 3.5M floats (14 MB) on
the embedded SmolLM2-135M, so ``rollback_window`` defaults to 10: the last 10 edits can be
rolled back (about 140 MB), older ones are folded into the weights.

Settings: the authors' config (Llama-3-8B / Qwen2.5-7B: layer 7 of 32, lr 2e-4, 50 steps,
20 preservation texts, v_lr 0.5, 25 passes, λ 1e-3, clamp 4); the layer scaled to depth,
``round(7/32 · n_layers)``, layer 7 of the embedded 30-layer model. Where we differ from
the authors' code:

* ``weight_decay`` 0 by default (theirs 0.01): on a sequential stream 0.01 · lr per step
  shrinks every weight of the block by e^(−1e-4·N) after N edits; ``weight_decay=0.01`` is
  theirs. Norm weights (any module whose class name holds "Norm") never decay.
* Sequential by default: their script restores the weights after each edit
  (``keep_original_weight``); ``restore_after_each=True`` does that here: each edit starts
  from the unedited model, which then holds only the latest edit (score it with the
  ``immediate`` protocol).
* Preservation texts: 20 documents of the offline Wikipedia corpus (``preserve_corpus``,
  the first ``preserve_tokens`` tokens of each), drawn per edit (seeded by the seed and the
  edit id), not Alpaca instruction + output pairs in the chat template; padding positions
  are left out of the MSE (their mean includes them).
* The answer ends with the answer-end token (``answer_end="auto"``: EOS, or the template's
  end-of-turn token in chat mode; :func:`horen.text.answer_end_ids`, the codebook editors'
  convention), as their script appends ``</s>`` / ``<|im_end|>``; no double BOS; the
  question is joined to the answer by the repository's rule (:mod:`horen.text`).
"""

from __future__ import annotations

import dataclasses
import random
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ...data.record import EditRecord
from ...layer import StopForward
from ...models import get_module
from ...stats import CORPORA, corpus_texts
from ...text import answer_end_ids, check_answer_end, make_batch
from ..base import register
from .editor import WeightConfig, WeightEditor
from .locate import depth_layer, n_layers

LAYER_DEPTH = 7 / 32  # the authors' layer 7 of Llama-3-8B / Qwen2.5-7B (32 and 28 layers)


def _field(default, text: str):
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass
class UnKEConfig(WeightConfig):
    """UnKE's settings (module docstring). ``layer`` None = ``round(7/32 · n_layers)``."""

    rollback_window: int | None = _field(
        10, "keep the deltas of the last K edits (a whole block each); older ones are folded "
        "into the weights and cannot be rolled back; None = keep all")
    v_lr: float = _field(0.5, "Adam lr for delta (stage 1)")
    v_num_grad_steps: int = _field(25, "stage-1 passes; the last only computes the loss")
    v_weight_decay: float = _field(1e-3, "weight of ||delta|| / ||h0||^2 in the stage-1 loss")
    clamp_norm_factor: float = _field(4.0, "project delta onto ||delta|| <= factor * ||h0||")
    lr: float = _field(2e-4, "AdamW lr for the block's parameters (stage 2)")
    optim_num_step: int = _field(50, "stage-2 full-batch AdamW steps")
    weight_decay: float = _field(
        0.0, "AdamW weight decay of the block's non-norm weights (the authors': 0.01; it "
        "shrinks the block at every edit of a sequential stream)")
    n_preserve: int = _field(20, "preservation texts per edit (the authors' ex_data_num)")
    preserve_corpus: str = _field(
        "wiki_corpus", "preservation texts: 'wiki_corpus', 'ovos' or 'random' (token ids, tests)")
    preserve_tokens: int = _field(128, "each preservation text is cut to this many tokens")
    answer_end: str = _field(
        "auto", "appended to the answer: 'auto' (EOS; chat: the end-of-turn token), 'none', "
        "or a stop string")
    restore_after_each: bool = _field(
        False, "the authors' mode: restore the weights before each edit (only the latest "
        "edit is held); False = sequential")

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.v_lr, self.lr, self.clamp_norm_factor) <= 0:
            raise ValueError("v_lr, lr and clamp_norm_factor must be > 0")
        if self.v_num_grad_steps < 1 or self.optim_num_step < 0:
            raise ValueError("v_num_grad_steps must be >= 1 and optim_num_step >= 0")
        if min(self.v_weight_decay, self.weight_decay, self.n_preserve) < 0:
            raise ValueError("v_weight_decay, weight_decay and n_preserve must be >= 0")
        if self.preserve_corpus not in CORPORA or self.preserve_tokens < 1:
            raise ValueError(f"preserve_corpus must be one of {CORPORA} and preserve_tokens >= 1")
        check_answer_end(self.answer_end)


class BlockCall(NamedTuple):
    """One real call of a decoder block: its input, other arguments and output."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict
    output: torch.Tensor


def block_output(out) -> torch.Tensor:
    """The hidden states a decoder block returns (a tensor, or the first item of a tuple)."""
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def capture_block(model: nn.Module, block: nn.Module, input_ids, attention_mask) -> BlockCall:
    """Run ``model`` up to ``block`` and keep the block's call and output (then stop)."""
    store = {}

    def pre(_module, args, kwargs):
        store["args"], store["kwargs"] = args, dict(kwargs)

    def post(_module, _args, output):
        store["output"] = block_output(output).detach()
        raise StopForward

    handles = [block.register_forward_pre_hook(pre, with_kwargs=True),
               block.register_forward_hook(post)]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    args, kwargs = store["args"], store["kwargs"]
    hidden = args[0] if args else kwargs.pop("hidden_states")
    return BlockCall(hidden.detach(), tuple(args[1:]), kwargs, store["output"])


def replay(block: nn.Module, call: BlockCall, hidden: torch.Tensor | None = None) -> torch.Tensor:
    """The block's output on the captured call (or on ``hidden`` with the same arguments)."""
    return block_output(block(call.hidden if hidden is None else hidden, *call.args, **call.kwargs))


def masked_mse(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real positions (``mask`` (B, T)) × d."""
    w = mask.to(torch.float32)[..., None]
    return ((out.float() - target.float()) ** 2 * w).sum() / (w.sum() * out.shape[-1]).clamp_min(1)


@register
class UnKE(WeightEditor):
    """UnKE: write the answer's target state into a whole early block (module docstring).

    Example:
        >>> ed = UnKE(model, tok)  # doctest: +SKIP
        >>> ed.edit("What is Zorblat Industries known for?", "It builds quiet engines ...")
    """

    method = "unke"
    config_class = UnKEConfig

    def __init__(self, model, tokenizer, config=None, **overrides):
        config = dataclasses.replace(config or self.config_class(), **overrides)
        if config.layer is None:
            config = dataclasses.replace(config, layer=depth_layer(n_layers(model), LAYER_DEPTH))
        super().__init__(model, tokenizer, config)
        layers = get_module(model, self.site.layers_path)
        self.block_path = f"{self.site.layers_path}.{self.site.layer}"
        self.block = layers[self.site.layer]
        self.above = layers[self.site.layer + 1 :]
        self.norm = get_module(model, self.site.final_norm)
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.end_ids = answer_end_ids(tokenizer, self.config.chat, self.config.answer_end)
        self.names = [f"{self.block_path}.{n}" for n, _ in self.block.named_parameters()]
        self._texts: list[str] | None = None

    # ---- stage 1 -------------------------------------------------------------------------
    def compute_z(self, record: EditRecord) -> tuple[torch.Tensor, dict]:
        """z = h₀ + δ at the last question token, block l's output (module docstring, 1)."""
        cfg = self.config
        batch = make_batch(self.tokenizer, self.model, [record.prompt], [record.target],
                           cfg.chat, end_ids=self.end_ids).to(self.device)
        p = int(batch.prompt_mask.sum()) - 1
        cols = batch.target_mask[0].nonzero()[:, 0]
        labels, before = batch.input_ids[0, cols], cols - 1
        call = capture_block(self.model, self.block, batch.input_ids, batch.attention_mask)
        h0 = call.output[0, p].float()
        delta = torch.zeros_like(h0, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=cfg.v_lr)
        for step in range(cfg.v_num_grad_steps):
            hidden = call.output.clone()
            hidden[0, p] = hidden[0, p] + delta.to(hidden.dtype)
            for layer in self.above:
                hidden = replay(layer, call, hidden)
            logits = self.head(self.norm(hidden[0, before])).float()
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            nll = F.cross_entropy(logits, labels)
            loss = nll + cfg.v_weight_decay * delta.norm() / h0.norm() ** 2
            if step == 0:
                nll0 = nll.item()
            if step == cfg.v_num_grad_steps - 1:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                limit = cfg.clamp_norm_factor * h0.norm()
                if delta.norm() > limit:
                    delta.mul_(limit / delta.norm())
        info = {"nll_start": round(nll0, 5), "nll": round(nll.item(), 5),
                "delta_norm": round(delta.norm().item(), 5), "h0_norm": round(h0.norm().item(), 5)}
        return h0 + delta.detach(), info

    # ---- stage 2 -------------------------------------------------------------------------
    def preservation_batch(self, group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` of this edit's preservation texts (right-padded)."""
        cfg, tok = self.config, self.tokenizer
        n, width, seed = cfg.n_preserve, cfg.preserve_tokens, cfg.seed * 7919 + group
        if cfg.preserve_corpus == "random":
            gen = torch.Generator().manual_seed(seed)
            ids = torch.randint(0, len(tok), (n, width), generator=gen)
            return ids.to(self.device), torch.ones_like(ids, device=self.device)
        if self._texts is None:
            self._texts = corpus_texts(cfg.preserve_corpus)
        texts = random.Random(seed).sample(self._texts, min(n, len(self._texts)))
        enc = tok(texts, truncation=True, max_length=width, padding=True, padding_side="right",
                  return_tensors="pt")
        return enc.input_ids.to(self.device), enc.attention_mask.to(self.device)

    def fit_block(self, edit: BlockCall, target: torch.Tensor, keep: BlockCall | None,
                  keep_mask: torch.Tensor | None) -> dict:
        """AdamW on all block parameters: MSE(keep) + MSE(edit, target) (module docstring, 2)."""
        cfg = self.config
        norms = {id(p) for m in self.block.modules() if "norm" in type(m).__name__.lower()
                 for p in m.parameters(recurse=False)}
        params = list(self.block.parameters())
        groups = [{"params": [p for p in params if id(p) not in norms], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if id(p) in norms], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)

        def losses():
            edit_loss = F.mse_loss(replay(self.block, edit).float(), target.float())
            if keep is None:
                return edit_loss, torch.zeros((), device=edit_loss.device)
            return edit_loss, masked_mse(replay(self.block, keep), keep.output, keep_mask)

        for p in params:
            p.requires_grad_(True)
        try:
            with torch.no_grad():
                start = losses()
            for _ in range(cfg.optim_num_step):
                edit_loss, keep_loss = losses()
                opt.zero_grad(set_to_none=True)
                (keep_loss + edit_loss).backward()
                opt.step()
            with torch.no_grad():
                end = losses()
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        return {"edit_mse_start": start[0].item(), "edit_mse": end[0].item(),
                "keep_mse_start": start[1].item(), "keep_mse": end[1].item()}

    # ---- one edit --------------------------------------------------------------------------
    def _apply(self, record: EditRecord) -> dict:
        if self.config.restore_after_each and self.edits:  # the authors' mode: start unedited
            self.deltas.clear()
            self.base.clear()
            self.replay()
            self.edits = []
        group = self.next_edit_id
        z, info = self.compute_z(record)
        q = make_batch(self.tokenizer, self.model, [record.prompt], chat=self.config.chat)
        q = q.to(self.device)
        edit = capture_block(self.model, self.block, q.input_ids, q.attention_mask)
        p = int(q.prompt_mask.sum()) - 1
        target = edit.output.clone()
        target[0, p] = z.to(target.dtype)
        keep = mask = None
        if self.config.n_preserve > 0:
            ids, mask = self.preservation_batch(group)
            keep = capture_block(self.model, self.block, ids, mask)
        before = [self.param(n).detach().clone() for n in self.names]
        info.update(self.fit_block(edit, target, keep, mask))
        with torch.no_grad():
            for name, w0 in zip(self.names, before):
                param = self.param(name)
                delta = param.detach() - w0
                param.copy_(w0)  # then add the stored delta: the weights are exactly W₀ + ΣΔ
                self.add_delta(group, name, {"dense": delta})
        info = {k: float(f"{v:.5g}") if isinstance(v, float) else v for k, v in info.items()}
        return {"case": "unke", "group": group, "layers": [self.site.layer],
                "params": list(self.names), **info}
