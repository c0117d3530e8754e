"""MEMIT: Mass-Editing Memory in a Transformer (Meng et al., ICLR 2023, arXiv 2210.07229),
BASELINES.md §3.

A batch of n facts is written into W_out of a window R of consecutive layers. For each
request the residual-stream target z_i at the last window layer L is found first
(:meth:`LocateEditor.compute_value`, ``at="block"``). Then for l ∈ R in increasing order
(paper Alg. 1, Eq. 14):

    K_l = [k_1 … k_n]                     keys at layer l, template-averaged, current weights
    R_l = (z − h^L) / (|R| − i)           the remaining residual, spread over the layers left
    ΔW_l = R_l K_lᵀ (λ·C_l + K_l K_lᵀ)⁻¹   in float64: X = solve(λC + KKᵀ, K), ΔW = R Xᵀ

which is the least-squares solution of ``min ||Ŵ K − V||² + λ·E_k~C ||(Ŵ − W)k||²``, λ the
``mom2_update_weight`` and C the mean second moment (:mod:`horen.stats`). ΔW_l is added
before moving to the next layer. Sequential MEMIT is repeated batches; nothing but the
weights carries over (:meth:`MEMIT.apply` is a batch of one, :meth:`MEMIT.apply_batch` a
batch of many).

Layers: MEMIT and AlphaEdit use layers 4–8 of Llama-3-8B's 32 (GPT-J 3–8 of 28). Scaled to
depth: a window of ``min(5, n_layers)`` layers starting at ``round(4/32 · n_layers)``, i.e.
4–8 of the embedded 30-layer SmolLM2-135M (it contains ROME's layer 5).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ...data.record import EditRecord
from ...models import edit_site
from ..base import register
from .locate import LocateConfig, LocateEditor, Request, depth_layer, make_request, n_layers

WINDOW = 5


@dataclasses.dataclass
class MEMITConfig(LocateConfig):
    """MEMIT's settings; defaults are MEMIT's GPT-J config (BASELINES.md §3: v_lr 0.5, 25
    steps, v_wd 0.5, clamp 0.75, KL 0.0625, λ 15000). Not the Llama-3 v_lr of 0.1: SmolLM2's
    residual stream is large (‖h₀‖ ≈ 150 at layer 8) and with 0.1 the z optimization left the
    target NLL at 4.1 after 25 steps in a smoke run. ``layers`` None = 5 layers from
    ``round(4/32 · n_layers)``;
    ``layer`` (the z layer) is always the last of ``layers``; given alone, the window is the
    5 layers ending there.
    """

    layers: list[int] | None = dataclasses.field(
        default=None, metadata={"help": "consecutive layers edited; None = depth-scaled window"})
    v_lr: float = dataclasses.field(default=0.5, metadata={"help": "Adam lr for delta"})
    clamp_norm_factor: float = dataclasses.field(
        default=0.75, metadata={"help": "project delta onto ||delta|| <= factor * ||h0||"})
    mom2_update_weight: float = dataclasses.field(
        default=15000.0, metadata={"help": "lambda: weight of the covariance term C"})
    template_starts: list[str] = dataclasses.field(
        default_factory=lambda: ["The", "Therefore", "Because", "I", "You"],
        metadata={"help": "one generated context template from each start"})
    template_length: int = dataclasses.field(
        default=10, metadata={"help": "new tokens per generated context template"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers is not None:
            self.layers = [int(x) for x in self.layers]
            if not self.layers or sorted(self.layers) != self.layers or len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers must be increasing and non-empty, not {self.layers}")
        if self.mom2_update_weight < 0 or self.template_length < 1:
            raise ValueError("mom2_update_weight must be >= 0 and template_length >= 1")


def memit_solve(cov: torch.Tensor, keys: torch.Tensor, lam: float) -> torch.Tensor:
    """``X = (λC + KKᵀ)⁻¹ K`` in float64, so that ΔW = R Xᵀ (MEMIT Eq. 14).

    Args:
        cov: (d_in, d_in) C; keys: (d_in, n) K; lam: λ.
    Returns:
        X (d_in, n).
    """
    cov, keys = cov.double(), keys.double()
    return torch.linalg.solve(lam * cov + keys @ keys.T, keys)


def key_gain(keys: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``diag(Kᵀ X)``: how much of its own residual column each key gets back, ΔW k_j = R Xᵀ k_j.

    For one edit (MEMIT's solve) it is ``a / (λ + a)`` with ``a = kᵀC⁻¹k``: near 1 when the
    key stands out of C, near 0 when λ·C dominates and the edit is mostly not written
    (``benchmarks/memit_key_gain.py`` measures it on a model).
    """
    return (keys.double() * x.double()).sum(0)


@register
class MEMIT(LocateEditor):
    """Mass-editing: a batch of facts spread over a window of W_out layers.

    Example:
        >>> ed = MEMIT(model, tok)  # doctest: +SKIP
        >>> ed.apply_batch([EditRecord("The Eiffel Tower is in", "Rome", subject="The Eiffel Tower")])
    """

    method = "memit"
    config_class = MEMITConfig

    def __init__(self, model, tokenizer, config=None, **overrides):
        config = dataclasses.replace(config or self.config_class(), **overrides)
        n = n_layers(model)
        layers = config.layers
        if layers is None and config.layer is not None:  # a window ending at `layer`
            last = edit_site(model, config.layer).layer
            layers = list(range(max(0, last - WINDOW + 1), last + 1))
        elif layers is None:
            start = depth_layer(n, 4 / 32)
            layers = list(range(start, min(n, start + WINDOW)))
        layers = [edit_site(model, i).layer for i in layers]
        if config.layer is not None and edit_site(model, config.layer).layer != layers[-1]:
            raise ValueError(f"layer {config.layer} must be the last of layers {layers}")
        config = dataclasses.replace(config, layers=layers, layer=layers[-1])
        super().__init__(model, tokenizer, config)
        self.sites = [edit_site(model, i) for i in layers]

    @property
    def template_specs(self):
        return [(start, 1, self.config.template_length) for start in self.config.template_starts]

    # ---- the update ------------------------------------------------------------------------
    def solve(self, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        """X with ΔW_l = R Xᵀ (``(d_in, n)``); AlphaEdit overrides this."""
        cov = self.covariances([layer])[layer]
        return memit_solve(cov, keys, self.config.mom2_update_weight)

    def residual_targets(self, requests: list[Request]) -> torch.Tensor:
        """h^L: the block output at the z layer, subject-last token of the bare prompts."""
        block = f"{self.arch.layers}.{self.config.layer}"
        return self.read_at_subject(requests, ["{}"], [block])[1][block].T.double()

    def write(self, requests: list[Request], group: int) -> dict:
        """Compute the z's and write ΔW_l for every layer of the window; returns log fields."""
        zs, infos = [], []
        for request in requests:
            z, info = self.compute_value(request, self.config.layer, at="block")
            zs.append(z)
            infos.append(info)
        zs = torch.stack(zs, dim=1)  # (d_model, n)
        self.covariances(self.config.layers)
        self.last_solve = {}
        norms, gains = {}, {}
        for i, site in enumerate(self.sites):
            keys = self.template_keys(requests, site.layer, grouped=True)
            resid = (zs - self.residual_targets(requests)) / (len(self.sites) - i)
            x = self.solve(site.layer, keys, resid)
            self.add_delta(group, f"{site.path}.weight", {"R": resid, "X": x}, site.conv1d)
            self.last_solve[site.layer] = {"K": keys, "R": resid, "X": x}
            norms[str(site.layer)] = round((resid @ x.T).norm().item(), 5)
            gains[str(site.layer)] = round(key_gain(keys, x).median().item(), 5)
        self.after_write(requests, group)
        return {"layers": list(self.config.layers), "group": group,
                "params": [f"{s.path}.weight" for s in self.sites], "delta_w_norms": norms,
                "key_gain": gains, "z_info": infos}

    def after_write(self, requests: list[Request], group: int) -> None:
        """Hook run once the whole window is updated (AlphaEdit grows its key cache here)."""

    def _apply(self, record: EditRecord) -> dict:
        info = self.write([make_request(record, self.method)], self.next_edit_id)
        info.update(info.pop("z_info")[0])
        return {"case": "batch", **info}

    def apply_batch(self, records: list[EditRecord]) -> list[int]:
        """Write ``records`` as ONE batch (one solve per layer); returns their edit ids.

        The batch is one rollback group: removing any of its ids removes all of them.
        Raises ValueError (nothing written) if a record lacks a usable subject.
        """
        requests = [make_request(r, self.method) for r in records]
        if not requests:
            return []
        start, group = time.perf_counter(), self.next_edit_id
        info = self.write(requests, group)
        seconds = (time.perf_counter() - start) / len(records)
        z_info = info.pop("z_info")
        return [self._log(r, {"case": "batch", **info, "batch_size": len(records), **z},
                               seconds) for r, z in zip(records, z_info)]
