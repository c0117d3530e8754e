"""Fine-tuning baselines FT-L and FT-M: gradient steps on one W_out (BASELINES.md §8).

* **FT-L** (Zhu et al. 2020, "Modifying Memories in Transformer Models", as run in the ROME
  paper): feed the prompt only and, at its last position, maximize the mean log-probability of
  the target tokens under that *single* next-token distribution (ROME's ``prompt_last``
  objective; a bag of tokens, wrong for multi-token targets, EasyEdit #173); after every Adam
  step each weight is clamped to ``[w₀ − ε, w₀ + ε]`` (the L∞ ``norm_constraint``).
* **FT-M** (EasyEdit's ``objective_optimization: target_new``): teacher-forced cross-entropy
  on the target tokens after the prompt (prompt masked); unconstrained by default.

Both train W_out of one layer (weight, and bias where it has one: GPT-2's ``c_proj``) with
Adam for at most ``num_steps`` steps, stopping once the loss is below ``stop_loss``; only the
layers from the edited one upward run per step (:class:`horen.suffix.Suffix`). The edit is
stored as the dense difference of the trained and the previous weights (d_ff·d_model floats
per edit: memory and saved size grow linearly with the number of edits).

Layer: EasyEdit's Llama/Qwen FT recipes train layer 21 of 32 (AlphaEdit repo: the same);
scaled to depth, ``round(21/32 · n_layers)``, layer 20 of the embedded 30-layer model.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ...data.record import EditRecord
from ...suffix import Suffix
from ...text import encode_pair, make_batch
from ..base import register
from .editor import WeightConfig, WeightEditor
from .locate import depth_layer, n_layers


@dataclasses.dataclass
class FTConfig(WeightConfig):
    """Fine-tuning settings (lr, steps: the ROME/EasyEdit FT configs, BASELINES.md §8).

    ``layer`` None = ``round(21/32 · n_layers)``.
    """

    lr: float = dataclasses.field(default=5e-4, metadata={"help": "Adam learning rate"})
    num_steps: int = dataclasses.field(default=25, metadata={"help": "Adam steps per edit, at most"})
    stop_loss: float = dataclasses.field(default=1e-2, metadata={"help": "stop below this loss"})
    norm_constraint: float | None = dataclasses.field(
        default=None, metadata={"help": "epsilon of the L-inf clamp |w - w0| <= eps; None = off"})
    train_bias: bool = dataclasses.field(
        default=True, metadata={"help": "also train W_out's bias where it has one (GPT-2)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr <= 0 or self.num_steps < 1 or self.stop_loss < 0:
            raise ValueError("lr must be > 0, num_steps >= 1 and stop_loss >= 0")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            raise ValueError(f"norm_constraint must be > 0 or None, not {self.norm_constraint}")


@dataclasses.dataclass
class FTLConfig(FTConfig):
    """FT-L: ``norm_constraint`` on by default (GPT-2 XL's constrained value, ROME paper)."""

    norm_constraint: float | None = dataclasses.field(
        default=5e-4, metadata={"help": "epsilon of the L-inf clamp |w - w0| <= eps; None = off"})


class FineTune(WeightEditor):
    """Shared FT loop; subclasses define :meth:`loss_fn`."""

    config_class = FTConfig

    def __init__(self, model, tokenizer, config=None, **overrides):
        config = dataclasses.replace(config or self.config_class(), **overrides)
        if config.layer is None:
            config = dataclasses.replace(config, layer=depth_layer(n_layers(model), 21 / 32))
        super().__init__(model, tokenizer, config)
        self.suffix = Suffix(model, self.site)
        module = model.get_submodule(self.site.path)
        self.names = [f"{self.site.path}.weight"]
        if self.config.train_bias and getattr(module, "bias", None) is not None:
            self.names.append(f"{self.site.path}.bias")

    def loss_fn(self, record: EditRecord):
        """A closure computing this record's loss with the current weights."""
        raise NotImplementedError

    def _apply(self, record: EditRecord) -> dict:
        cfg = self.config
        params = [self.param(n) for n in self.names]
        before = [p.detach().clone() for p in params]
        loss_of = self.loss_fn(record)
        opt = torch.optim.Adam(params, lr=cfg.lr)
        for p in params:
            p.requires_grad_(True)
        try:
            for step in range(1, cfg.num_steps + 1):
                loss = loss_of()
                if step == 1:
                    start = loss.item()
                if loss.item() < cfg.stop_loss:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if cfg.norm_constraint is not None:
                    with torch.no_grad():
                        for p, w0 in zip(params, before):
                            p.copy_(torch.clamp(p, w0 - cfg.norm_constraint, w0 + cfg.norm_constraint))
            with torch.no_grad():
                final = loss_of().item()
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        group = self.next_edit_id
        with torch.no_grad():
            for name, p, w0 in zip(self.names, params, before):
                delta = p.detach() - w0
                p.copy_(w0)  # then add the stored delta: the weights are exactly W₀ + ΣΔ
                self.add_delta(group, name, {"dense": delta})
        return {"case": "finetune", "group": group, "layers": [self.site.layer],
                "params": list(self.names), "steps": step, "loss_start": round(start, 5),
                "loss": round(final, 5)}


@register
class FTL(FineTune):
    """FT-L: last prompt position, target tokens as a bag, L∞-clamped (see module docstring)."""

    method = "ft-l"
    config_class = FTLConfig

    def loss_fn(self, record: EditRecord):
        tok, chat = self.tokenizer, self.config.chat
        batch = make_batch(tok, self.model, [record.prompt], chat=chat).to(self.device)
        target = torch.tensor(encode_pair(tok, record.prompt, record.target, chat)[1], device=self.device)
        captured = self.suffix.capture(batch.input_ids, batch.attention_mask)
        last = batch.prompt_mask.sum(1) - 1
        rows = torch.zeros(1, dtype=torch.long, device=self.device)

        def loss():
            logp = torch.log_softmax(self.suffix.logits(captured, rows, last), dim=-1)[0]
            return -logp[target].mean()

        return loss


@register
class FTM(FineTune):
    """FT-M: teacher-forced cross-entropy on the target, prompt masked (see module docstring)."""

    method = "ft-m"
    config_class = FTConfig

    def loss_fn(self, record: EditRecord):
        batch = make_batch(self.tokenizer, self.model, [record.prompt], [record.target],
                           self.config.chat).to(self.device)
        captured = self.suffix.capture(batch.input_ids, batch.attention_mask)
        rows, cols = batch.target_mask.nonzero(as_tuple=True)
        labels = batch.input_ids[rows, cols]

        def loss():
            return F.cross_entropy(self.suffix.logits(captured, rows, cols - 1), labels)

        return loss
