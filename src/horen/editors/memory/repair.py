"""REPAIR (arXiv 2510.01879): WISE with distillation and periodic merging, as the public code
has it; ``../shared/docs/BASELINES-MORE.md`` §3.

The authors' public code is a WISE fork. What it adds to WISE, and all that is implemented
here (:class:`~.wise.WISE` does the rest: side memory, shards, masks, TIES, routing):

* REPAIR's released settings (:class:`REPAIRConfig`): a shard every 5 edits and a TIES merge of
  the last 3 shards every 15, act_ratio 0.2, SGD lr 0.9 for at most 30 steps, margins
  [2, 20, 10].
* A distillation term added to WISE's loss, L = L_ft + L_act + L_kd, with

      L_kd = w·[α·T²·KL(σ(z₁/T) ‖ σ(z/T)) + (1 − α)·T²·KL(σ(z̄/T) ‖ σ(z/T))]   (:func:`distill_loss`)

  ``batchmean`` (summed over the vocabulary, divided by the rows of z). Which logits, here:
  z are the answer-token logits of the edit being trained: one row per target token of each
  in-scope row (the row predicting the first target token is the last prompt token's).
  An edit's *mean logits* are the mean of those rows at its last training step; z₁ is the
  mean, over the edits of the previous merge group (the last ``merge_freq`` edits before the
  latest merge), of their mean logits, and z̄ the mean of the last ≤ 3 such group means. A
  mean over rows is a vocabulary vector whatever the sequence lengths, so groups of prompts
  and targets of any length can be averaged (the authors' code stacks whole logit tensors,
  which fails when lengths differ). L_kd = 0 until a group has closed, and when
  ``distill_weight`` is 0 (the default: the released configs set ``distill: False``).

NOT implemented, because their code is not public: the paper's closed-loop error feedback
(monitoring edits, re-initialising or pruning failing memories and re-editing), similarity
grouping of samples (inner-batch distillation over grouped samples) and the loss-aware
weights of its merge (the merge here is WISE's equal-weight TIES).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..base import register
from .wise import WISE, WISEConfig

GROUP_HISTORY = 3  # z̄ averages the means of the last 3 merge groups


@dataclasses.dataclass
class REPAIRConfig(WISEConfig):
    """REPAIR's settings: its released ``hparams/WISE/llama3-8b.yaml`` (mask_ratio 0.2,
    densities 0.53, norm_constraint 1.0 and the layer are WISE's defaults already).

    The margins are the yaml's absolute values, unscaled, as WISEConfig keeps EasyEdit's on
    every model (docs/design.md); ``√(d/4096)`` would give [0.75, 7.5, 3.75] on SmolLM2."""

    edit_lr: float = dataclasses.field(default=0.9, metadata={"help": "SGD lr on W_v'"})
    n_iter: int = dataclasses.field(default=30, metadata={"help": "SGD steps per edit, at most"})
    act_margin: list[float] = dataclasses.field(
        default_factory=lambda: [2.0, 20.0, 10.0],
        metadata={"help": "[alpha, beta, gamma]: out <= alpha, in >= beta, in - out >= gamma"},
    )
    act_ratio: float = dataclasses.field(default=0.2, metadata={"help": "routing threshold factor"})
    save_freq: int = dataclasses.field(default=5, metadata={"help": "edits per shard"})
    merge_freq: int = dataclasses.field(default=15, metadata={"help": "TIES-merge period"})
    distill_weight: float = dataclasses.field(
        default=0.0, metadata={"help": "w of L_kd; 0 turns it off (the released configs)"}
    )
    temperature: float = dataclasses.field(default=2.0, metadata={"help": "T of L_kd"})
    distill_alpha: float = dataclasses.field(
        default=0.5, metadata={"help": "L_kd: weight of the previous group vs the last 3"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.distill_weight < 0 or self.temperature <= 0 or not 0 <= self.distill_alpha <= 1:
            raise ValueError("distill_weight >= 0, temperature > 0, distill_alpha in [0, 1]")


def distill_loss(
    z: torch.Tensor,
    z1: torch.Tensor,
    zbar: torch.Tensor,
    weight: float,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """L_kd of the module docstring: student logits ``z`` ``(N, vocab)``, teacher logits
    ``z1`` and ``zbar`` ``(vocab,)`` (the same for every row); KL(teacher ‖ student),
    summed over the vocabulary and divided by N."""
    t = temperature
    log_p = F.log_softmax(z / t, dim=-1)

    def kl(teacher: torch.Tensor) -> torch.Tensor:
        q = F.softmax(teacher.to(z.dtype) / t, dim=-1).expand_as(log_p)
        return F.kl_div(log_p, q, reduction="batchmean")

    return weight * t * t * (alpha * kl(z1) + (1 - alpha) * kl(zbar))


@register
class REPAIR(WISE):
    """REPAIR as its public code has it: WISE + a distillation term + shards of 5, merges of 15.

    Example:
        >>> ed = REPAIR(model, tok, distill_weight=0.2)  # doctest: +SKIP
        >>> ed.edit("Who leads Zorblat Industries?", "Mira Quell")
    """

    method = "repair"
    config_class = REPAIRConfig

    def __init__(self, model, tokenizer, config=None, **overrides):
        super().__init__(model, tokenizer, config, **overrides)
        self.pending: dict[int, torch.Tensor] = {}  # edit id -> its mean logits (open group)
        self.history: list[torch.Tensor] = []  # the last <= 3 closed groups' means, oldest first
        self._mean: torch.Tensor | None = None  # mean logits at the latest training step
        self._kd: float = 0.0

    def teachers(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(z1, z̄)``: the previous merge group's mean logits and the mean of the last ≤ 3
        groups' (None before a group has closed)."""
        if not self.history:
            return None
        return self.history[-1], torch.stack(self.history).mean(0)

    def extra_loss(self, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.distill_weight <= 0:
            return logits.new_zeros(())
        self._mean = logits.detach().mean(0)
        teachers = self.teachers()
        if teachers is None:
            return logits.new_zeros(())
        kd = distill_loss(logits, *teachers, cfg.distill_weight, cfg.temperature, cfg.distill_alpha)
        self._kd = kd.item()
        return kd

    def train(self, record, edit_id: int) -> dict:
        self._mean, self._kd = None, 0.0
        info = super().train(record, edit_id)
        if self._mean is not None:
            self.pending[edit_id] = self._mean
        return {**info, "kd": round(self._kd, 5)}

    def save_shard(self) -> None:
        """WISE's save (and merge); every ``merge_freq`` edits the group closes too."""
        closes = self.edit_count % self.config.merge_freq == 0
        super().save_shard()
        if closes and self.pending:
            mean = torch.stack(list(self.pending.values())).mean(0)
            self.history = [*self.history, mean][-GROUP_HISTORY:]
            self.pending = {}

    def _remove(self, edit: dict) -> None:
        super()._remove(edit)  # retrains the shard's other edits: their mean logits are redone
        self.pending.pop(edit["id"], None)

    def _state(self):
        state, tensors = super()._state()
        state["pending"], state["history"] = list(self.pending), len(self.history)
        tensors.update({f"kd.pending.{i}": v for i, v in self.pending.items()})
        tensors.update({f"kd.history.{k}": v for k, v in enumerate(self.history)})
        return state, tensors

    def _load_state(self, state, tensors):
        super()._load_state(state, tensors)
        dev = self.w0.device
        self.pending = {i: tensors[f"kd.pending.{i}"].to(dev) for i in state["pending"]}
        self.history = [tensors[f"kd.history.{k}"].to(dev) for k in range(state["history"])]
