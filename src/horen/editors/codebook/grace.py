"""GRACE (Hartvigsen et al., 2023) as the HoReN paper runs it.

A codebook on the same W as HoReN, but with the raw (unnormalized) key at the LAST prompt
token, Euclidean distance and a per-entry deferral radius eps (initialised at ``eps_init``).
Writing an edit, with i* the nearest key at distance d*:

* empty codebook, or d* > eps_init + eps_i*: add (q, value, eps_init);
* overlap and a different target: add (q, value, d*/2) and shrink eps_i* to d*/2 - 1e-5 (split);
* overlap and the same target: if d* > eps_i*, grow eps_i* to d* (expand, "coverage"), and
  keep training that entry's value.

At inference the value REPLACES W's output at the last prompt token when the query lies
inside the nearest key's radius. Values start "cold" (uniform [0, 1)) and train for 100 Adam
steps at lr 1.0 with no early stop (BASELINES.md section 5, HoReN's hparams).
"""

from __future__ import annotations

import dataclasses

import torch

from ...codebook import last_token, route_euclid
from ...layer import PromptContext
from ..base import register
from .editor import CodebookEditor, TrainConfig


@dataclasses.dataclass
class GRACEConfig(TrainConfig):
    """GRACE's settings; the training defaults are the HoReN paper's GRACE hparams."""

    eps_init: float = dataclasses.field(default=1.0, metadata={"help": "initial radius eps"})
    max_steps: int = dataclasses.field(default=100, metadata={"help": "Adam steps per edit"})
    early_stop: bool = dataclasses.field(default=False, metadata={"help": "GRACE runs all steps"})
    value_init: str = dataclasses.field(default="cold", metadata={"help": "'cold' or 'zero'"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eps_init <= 0:
            raise ValueError("eps_init must be > 0")
        if self.value != "direct":
            raise ValueError("GRACE values are direct vectors")


@register
class GRACE(CodebookEditor):
    """GRACE: discrete key-value codebook with deferral radii (replace, last token)."""

    method = "grace"
    config_class = GRACEConfig
    mode = "replace"

    def query(self, acts: torch.Tensor, ctx: PromptContext) -> torch.Tensor:
        return last_token(acts, ctx.last)

    def match(self, q: torch.Tensor) -> torch.Tensor:
        return route_euclid(q, self.codebook.keys, self.codebook.radii)[0]

    def write(self, q: torch.Tensor, target: str) -> tuple[int, dict]:
        cb, eps0 = self.codebook, self.config.eps_init
        zero = torch.zeros(self.values.shape)
        if len(cb) == 0:
            row = cb.add(q, zero, target, eps0)
            return row, {"case": "new", "entry": cb.ids[row], "touches": [cb.ids[row]]}
        dist = torch.cdist(q[None], cb.keys)[0]
        d, near = (float(x) for x in dist.min(dim=0))
        near = int(near)
        near_id, near_eps = cb.ids[near], float(cb.radii[near])
        if d > eps0 + near_eps:
            row = cb.add(q, zero, target, eps0)
            return row, {"case": "new", "entry": cb.ids[row], "touches": [cb.ids[row]]}
        if cb.labels[near] != target:  # split
            cb.set_radius(near, d / 2 - 1e-5)
            row = cb.add(q, zero, target, d / 2)
            touches = [cb.ids[row], near_id]
            return row, {"case": "conflict", "entry": cb.ids[row], "touches": touches,
                         "old_radii": {str(near_id): near_eps}}
        info = {"case": "extend", "entry": near_id, "touches": [near_id]}
        if d > near_eps:  # expand
            cb.set_radius(near, d)
            info["old_radii"] = {str(near_id): near_eps}
        return near, info
