"""AlphaEdit: null-space constrained knowledge editing (Fang et al., ICLR 2025,
arXiv 2410.02355), BASELINES.md §4.

MEMIT's batch update (same z, keys K_l and spread residual R_l per layer l of the window),
projected onto the null space of the preserved knowledge so that ΔW·k₀ = 0 for the keys k₀
the covariance was estimated from (paper Eq. 14 and its closed form):

    C_l = U S Uᵀ                  (eigh of the second moment, :mod:`horen.stats`)
    P_l = U₀ U₀ᵀ                  U₀: eigenvectors with s_i < τ · s_max (null space)
    Y   = (P_l (K Kᵀ + K_p K_pᵀ) + α I)⁻¹ P_l K
    ΔW_l = R Yᵀ                   (= R Kᵀ P (K Kᵀ P + K_p K_pᵀ P + α I)⁻¹)

K_p K_pᵀ (``cache_c``) holds the keys of the earlier edits, recomputed with the edited model
after each batch, and starts at zero; ΔW P = ΔW holds exactly (so preserved keys, in the
span of I − P, are untouched). The original uses an *absolute* threshold (2e-2) on the raw
eigenvalues, which depends on the model, corpus and sample (issues #12, #38); here τ is
relative to the largest eigenvalue, and the null-space dimension of each layer is logged and
kept in ``editor.null_dims``.

Rollback also takes the edit's keys out of ``cache_c`` (rebuilt from the stored keys of the
live edits, in order; saved and loaded with the deltas).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..base import register
from .locate import Request
from .memit import MEMIT, MEMITConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class AlphaEditConfig(MEMITConfig):
    """AlphaEdit's settings; defaults are its official GPT-J config (BASELINES.md §4: v_lr
    0.5, 25 steps, v_wd 0.5, clamp 0.75, KL 0.0625, L2 10; the Llama-3 config's v_lr 0.1 is
    too small for SmolLM2, see :class:`MEMITConfig`), except that the null-space threshold is
    relative to the largest eigenvalue. Layers as MEMIT (4–8 of 30 for the embedded model).
    ``mom2_update_weight`` is not used by AlphaEdit.

    Null-space sizes on the embedded model (C from 20k wiki_corpus tokens), τ = 1e-2:
    525, 819, 758, 1012, 1174 of 1536 dims at layers 4–8; the original absolute 2e-2 would
    give 1195 (layer 4) and 972 (layer 8); the author reports ~70% for Llama-3-8B.
    """

    nullspace_threshold: float = dataclasses.field(
        default=1e-2,
        metadata={"help": "tau: eigenvectors of C with eigenvalue < tau * largest span the null space"})
    L2: float = dataclasses.field(
        default=10.0, metadata={"help": "alpha: the ridge term alpha*I of the projected solve"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.nullspace_threshold < 1:
            raise ValueError(f"nullspace_threshold is relative, in (0, 1): {self.nullspace_threshold}")
        if self.L2 <= 0:
            raise ValueError(f"L2 must be > 0, not {self.L2}")


def null_space_projector(cov: torch.Tensor, tau: float) -> tuple[torch.Tensor, int]:
    """``(P, dim)``: P = U₀U₀ᵀ over the eigenvectors of ``cov`` with s_i < tau·s_max."""
    s, u = torch.linalg.eigh(cov.double())
    u0 = u[:, s < tau * s.max()]
    return u0 @ u0.T, int(u0.shape[1])


def alphaedit_solve(proj, keys, cache, alpha: float) -> torch.Tensor:
    """``Y = (P(KKᵀ + cache) + αI)⁻¹ P K`` (float64), so that ΔW = R Yᵀ."""
    keys = keys.double()
    a = proj @ (keys @ keys.T + cache)
    a.diagonal().add_(alpha)
    return torch.linalg.solve(a, proj @ keys)


@register
class AlphaEdit(MEMIT):
    """MEMIT projected onto the null space of the preserved keys, with a cache of edited keys.

    Example:
        >>> ed = AlphaEdit(model, tok)  # doctest: +SKIP
        >>> ed.apply(EditRecord("The Eiffel Tower is in", "Rome", subject="The Eiffel Tower"))
    """

    method = "alphaedit"
    config_class = AlphaEditConfig

    def __init__(self, model, tokenizer, config=None, **overrides):
        super().__init__(model, tokenizer, config, **overrides)
        self.proj: dict[int, torch.Tensor] = {}
        self.null_dims: dict[int, int] = {}
        self.cache_keys: dict[int, dict[int, torch.Tensor]] = {}  # group -> layer -> K_p
        self.cache: dict[int, torch.Tensor] | None = None  # layer -> K_p K_pᵀ (running sum)

    def projector(self, layer: int) -> torch.Tensor:
        """P_l, computed once from C_l (the null-space dimension is logged)."""
        if layer not in self.proj:
            cov = self.covariances([layer])[layer]
            self.proj[layer], self.null_dims[layer] = null_space_projector(
                cov, self.config.nullspace_threshold)
            log.info("AlphaEdit layer %d: null space %d of %d dims (tau %g of the largest "
                     "eigenvalue)", layer, self.null_dims[layer], cov.shape[0],
                     self.config.nullspace_threshold)
        return self.proj[layer]

    def cache_c(self, layer: int) -> torch.Tensor:
        """K_p K_pᵀ of the live edits' stored keys (float64; rebuilt after a rollback)."""
        if self.cache is None:
            self.cache = {}
            for i, site in enumerate(self.sites):
                cache = torch.zeros(site.d_in, site.d_in, dtype=torch.float64, device=self.device)
                for group in sorted(self.cache_keys):
                    k = self.cache_keys[group][site.layer].to(self.device)
                    cache += k @ k.T
                self.cache[site.layer] = cache
        return self.cache[layer]

    def solve(self, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        return alphaedit_solve(self.projector(layer), keys, self.cache_c(layer), self.config.L2)

    def write(self, requests: list[Request], group: int) -> dict:
        self.covariances(self.config.layers)  # one pass over the corpus for the whole window
        for layer in self.config.layers:
            self.projector(layer)
        info = super().write(requests, group)
        info["null_dims"] = {str(k): v for k, v in self.null_dims.items()}
        return info

    def after_write(self, requests: list[Request], group: int) -> None:
        """Keys recomputed with the edited model join the cache (AlphaEdit's ``cache_c``);
        the window's weights are final here, so one forward pass reads every layer's keys."""
        self.cache_keys[group] = self.template_keys_at(requests, self.config.layers, grouped=True)
        for layer, k in self.cache_keys[group].items():
            self.cache_c(layer).add_(k @ k.T)

    # ---- rollback and state --------------------------------------------------------------
    def _remove(self, edit: dict) -> None:
        if self.cache_keys.pop(edit.get("group", edit["id"]), None) is not None:
            self.cache = None  # rebuilt from the live edits' keys when next needed
        super()._remove(edit)

    def _state(self):
        state, tensors = super()._state()
        for group, per_layer in self.cache_keys.items():
            for layer, k in per_layer.items():
                tensors[f"cache_keys.{group}.{layer}"] = k
        return {**state, "null_dims": {str(k): v for k, v in self.null_dims.items()}}, tensors

    def _load_state(self, state, tensors):
        super()._load_state(state, tensors)
        for key, value in tensors.items():
            if key.startswith("cache_keys."):
                _, group, layer = key.split(".")
                self.cache_keys.setdefault(int(group), {})[int(layer)] = value.double()
        self.cache = None
