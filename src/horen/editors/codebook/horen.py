"""HoReN: Normalized Hopfield Retrieval (arXiv 2605.08143), and the paper's ablations.

The base model stays frozen; W (a late MLP output projection) is wrapped by a codebook whose
keys are unit-normalized pooled activations of the edit prompts. A query is refined by one
damped Hopfield step over the keys, matched by cosine against tau, and on a match the entry's
value is added to W's output at the last prompt token. Writing an edit (``write``):

1. no match: a new entry (key = the PRE-refinement query, label = the target);
2. match, same target string: keep the key, continue training that entry's value;
3. match, different target: a new entry (the old memory stays).

Ablations, each a registered method: ``grace-norm`` (normalized pooled keys, cosine, no
Hopfield step), ``horen-unnorm`` (the Hopfield step on raw pooled vectors),
``horen-multistep`` (several Hopfield steps).
"""

from __future__ import annotations

import dataclasses

import torch

from ...codebook import NO_MATCH, normalize, pool, refine, route_cosine
from ...index import ExactRouter, FaissRouter
from ...layer import PromptContext
from ...models import routing_defaults
from ..base import register
from .editor import CodebookEditor, TrainConfig

EXACT_ROUTER_MIN = 2048  # codebook size from which the chunked exact router pays off


@dataclasses.dataclass
class HoReNConfig(TrainConfig):
    """HoReN's settings (spec: HOREN_SPEC.md). tau/pool_ratio None = the model's defaults.

    Value training departs from the paper's Adam by default (``docs/design.md``, "Where we
    differ"): per-edit L-BFGS and the answer end weighted 10x in the loss. On ZsRE (1000
    edits) the paper's Adam leaves 6.8% of edits above loss 0.1, and with the end token
    weighted 1x 2.6% of paraphrase answers loop past the target ('Cooking Vinyl Vinyl
    Vinyl...'). ``optimizer="adam", end_weight=1`` gives the earlier behaviour."""

    optimizer: str = dataclasses.field(
        default="lbfgs",
        metadata={"help": "'lbfgs' (per-edit L-BFGS with a line search; max_steps counts loss "
                  "evaluations) or 'adam' (the paper's)", "before": "adam"},
    )
    end_weight: float = dataclasses.field(
        default=10.0,
        metadata={"help": "weight of the answer-end token(s) in an edit's training loss (a sum "
                  "over the target's tokens divided by their number; 1: a plain mean, the "
                  "paper's)",
                  "before": 1.0},
    )
    lbfgs_first: float = dataclasses.field(
        default=4.0,
        metadata={"help": "L-BFGS: the first step's length in units of Adam's first at lr "
                  "(lr * sqrt(value size)); 4 with lbfgs_expand 3: 18% fewer loss evaluations "
                  "per single edit than 1 and 2 (results/convergence/lbfgs_evals.json)",
                  "before": 1.0},
    )
    lbfgs_expand: float = dataclasses.field(
        default=3.0,
        metadata={"help": "L-BFGS line search: a step that still descends steeply is tried "
                  "this many times longer", "before": 2.0},
    )
    tau: float | None = dataclasses.field(
        default=None, metadata={"help": "cosine match threshold; None = model default"}
    )
    pool_ratio: float | None = dataclasses.field(
        default=None, metadata={"help": "pool the last ceil(rho*n) prompt tokens; None = default"}
    )
    beta: float = dataclasses.field(default=20.0, metadata={"help": "Hopfield inverse temperature"})
    alpha: float = dataclasses.field(default=0.1, metadata={"help": "Hopfield damping"})
    hopfield_steps: int = dataclasses.field(default=1, metadata={"help": "Hopfield steps M"})
    hopfield_eps: float = dataclasses.field(default=1e-5, metadata={"help": "Hopfield stop"})
    normalize: bool = dataclasses.field(default=True, metadata={"help": "unit-normalize keys"})
    index: str = dataclasses.field(
        default="exact",
        metadata={"help": "'exact' (default) or 'faiss' (approximate, for huge codebooks)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool_ratio is not None and not 0 < self.pool_ratio <= 1:
            raise ValueError(f"pool_ratio must be in (0, 1], not {self.pool_ratio}")
        if self.tau is not None and not -1 <= self.tau <= 1:
            raise ValueError(f"tau is a cosine threshold in [-1, 1], not {self.tau}")
        if self.hopfield_steps < 0:
            raise ValueError("hopfield_steps must be >= 0")
        if self.index not in ("exact", "faiss"):
            raise ValueError(f"index must be 'exact' or 'faiss', not {self.index!r}")


@register
class HoReN(CodebookEditor):
    """Normalized Hopfield Retrieval editor.

    Example:
        >>> model, tok = horen.load_model()  # doctest: +SKIP
        >>> ed = horen.HoReN(model, tok)
        >>> ed.edit("Who leads Zorblat Industries?", "Mira Quell")
        >>> ed.generate("Who is in charge of Zorblat Industries?")
    """

    method = "horen"
    config_class = HoReNConfig

    def __init__(self, model, tokenizer, config=None, **overrides):
        super().__init__(model, tokenizer, config, **overrides)
        defaults = routing_defaults(model)
        self.tau = self.config.tau if self.config.tau is not None else defaults.get("tau", 0.8)
        self.pool_ratio = self.config.pool_ratio or defaults.get("pool_ratio", 0.6)
        # the config records the values in use: a saved edit set reloads with them
        self.config = dataclasses.replace(self.config, tau=self.tau, pool_ratio=self.pool_ratio)
        self.router = ExactRouter()
        self._faiss, self._faiss_ids = None, []

    def query(self, acts: torch.Tensor, ctx: PromptContext) -> torch.Tensor:
        q = pool(acts, ctx.pooled[:, : acts.shape[1]], self.pool_ratio)
        return normalize(q) if self.config.normalize else q

    def match(self, q: torch.Tensor) -> torch.Tensor:
        cfg, keys = self.config, self.codebook.keys
        args = {"beta": cfg.beta, "alpha": cfg.alpha, "steps": cfg.hopfield_steps, "eps": cfg.hopfield_eps}
        if cfg.normalize and cfg.index == "faiss" and len(keys):
            return self._faiss_router().route(q, keys, self.tau, **args)[0]
        if cfg.normalize and len(keys) >= EXACT_ROUTER_MIN:
            # same decisions as refine + route_cosine below, engineered for big codebooks
            return self.router.route(q, keys, self.tau, **args)[0]
        refined = refine(
            q,
            keys,
            beta=cfg.beta,
            alpha=cfg.alpha,
            steps=cfg.hopfield_steps,
            eps=cfg.hopfield_eps,
            normalized=cfg.normalize,
        )
        return route_cosine(refined, keys, self.tau)[0]

    def _faiss_router(self) -> FaissRouter:
        """The approximate index, kept in step with the codebook (rebuilt after removals)."""
        cb = self.codebook
        if self._faiss is None:
            self._faiss = FaissRouter(cb.d_key)
        n = len(self._faiss_ids)
        if cb.ids[:n] != self._faiss_ids:
            self._faiss.rebuild(cb.keys)
        elif len(cb) > n:
            self._faiss.add(cb.keys[n:])
        self._faiss_ids = list(cb.ids)
        return self._faiss

    def write(self, q: torch.Tensor, target: str) -> tuple[int, dict]:
        cb = self.codebook
        row = int(self.match(q[None])[0])
        if row != NO_MATCH and cb.labels[row] == target:
            entry = cb.ids[row]
            return row, {"case": "extend", "entry": entry, "touches": [entry]}
        case = "new" if row == NO_MATCH else "conflict"
        row = cb.add(q, torch.zeros(self.values.shape), target)
        return row, {"case": case, "entry": cb.ids[row], "touches": [cb.ids[row]]}


def _ablation(name: str, method: str, doc: str, **defaults) -> type[HoReN]:
    """Register an ablation of the paper: HoReN whose config has other defaults."""
    fields = [(k, type(v), dataclasses.field(default=v)) for k, v in defaults.items()]
    config = dataclasses.make_dataclass(f"{name}Config", fields, bases=(HoReNConfig,))
    return register(type(name, (HoReN,), {"method": method, "config_class": config, "__doc__": doc}))


GraceNorm = _ablation(
    "GraceNorm", "grace-norm",
    "GRACE+Norm ablation: cosine on normalized pooled keys, no Hopfield step.",
    hopfield_steps=0,
)
HoReNUnnormalized = _ablation(
    "HoReNUnnormalized", "horen-unnorm",
    "Ablation: the Hopfield step on raw pooled vectors (the match is still by cosine).",
    normalize=False,
)
HoReNMultiStep = _ablation(
    "HoReNMultiStep", "horen-multistep",
    "Ablation: M = 5 Hopfield steps (the paper: more steps pull queries into the keys' hull).",
    hopfield_steps=5,
)
