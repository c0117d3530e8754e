"""ROME: Rank-One Model Editing (Meng et al., "Locating and Editing Factual Associations in
GPT", NeurIPS 2022, arXiv 2202.05262), BASELINES.md §2.

One fact is written into W_out of a single layer l as a rank-one update that makes the
subject's key map to a new value while changing W least under the key covariance C
(paper Eq. 2, the constrained least squares ``min ||ΔW K||`` s.t. ``Ŵ k* = v*``):

    u  = C⁻¹ k* / ||C⁻¹ k*||           (k*: the key averaged over the context templates)
    v  = (v* − W k_p) / (k_pᵀ u)       (k_p, W k_p: key and W's output on the bare prompt)
    ΔW = v uᵀ                           ([d_out, d_in]; transposed for GPT-2's Conv1D)

so that ``Ŵ k_p = v*``. v* = h₀ + δ is found at the MLP output of layer l by
:meth:`LocateEditor.compute_value`. ``r_rome=True`` is the "Rebuilding ROME" fix
(arXiv 2403.07175): k* and W k* in place of k_p and W k_p, so that ``Ŵ k* = v*`` and the
denominator cannot collapse. ``mom2_adjustment=False`` drops C (u = k*/||k*||).

Layer: ROME edits layer 5 of Llama-3-8B's 32 (HoReN's configs; GPT-J 5 of 28). Scaled to
depth that is ``round(5/32 · n_layers)``: layer 5 of the embedded 30-layer SmolLM2-135M.
"""

from __future__ import annotations

import dataclasses

import torch

from ...data.record import EditRecord
from ..base import register
from .locate import LocateConfig, LocateEditor, depth_layer, make_request, n_layers


@dataclasses.dataclass
class ROMEConfig(LocateConfig):
    """ROME's settings; defaults are HoReN's Llama-3-8B config (BASELINES.md §2).

    ``layer`` None = ``round(5/32 · n_layers)`` (5 for the embedded 30-layer model).
    """

    v_lr: float = dataclasses.field(default=0.5, metadata={"help": "Adam lr for delta"})
    v_num_grad_steps: int = dataclasses.field(default=25, metadata={"help": "Adam steps, at most"})
    v_weight_decay: float = dataclasses.field(
        default=1e-3, metadata={"help": "weight of ||delta|| / ||h0||^2 in the loss"})
    clamp_norm_factor: float = dataclasses.field(
        default=4.0, metadata={"help": "project delta onto ||delta|| <= factor * ||h0||"})
    mom2_adjustment: bool = dataclasses.field(
        default=True, metadata={"help": "u = C^-1 k* (True) or k* (False, no covariance)"})
    r_rome: bool = dataclasses.field(
        default=False, metadata={"help": "use the averaged k* in the denominator (r-ROME fix)"})
    templates_per_length: int = dataclasses.field(
        default=10, metadata={"help": "generated context templates per length"})
    template_lengths: list[int] = dataclasses.field(
        default_factory=lambda: [5, 10], metadata={"help": "token lengths of generated templates"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.templates_per_length < 1 or not self.template_lengths:
            raise ValueError("templates_per_length must be >= 1 and template_lengths non-empty")
        if any(int(n) < 1 for n in self.template_lengths):
            raise ValueError("template_lengths must be positive token counts")


@register
class ROME(LocateEditor):
    """Rank-one model editing: one closed-form rank-one update of W_out per edit.

    Example:
        >>> ed = ROME(model, tok)  # doctest: +SKIP
        >>> ed.apply(EditRecord("The Eiffel Tower is in", "Rome", subject="The Eiffel Tower"))
    """

    method = "rome"
    config_class = ROMEConfig

    def __init__(self, model, tokenizer, config=None, **overrides):
        config = dataclasses.replace(config or self.config_class(), **overrides)
        if config.layer is None:
            config = dataclasses.replace(config, layer=depth_layer(n_layers(model), 5 / 32))
        super().__init__(model, tokenizer, config)
        self._c_inv: torch.Tensor | None = None

    @property
    def template_specs(self):
        cfg = self.config
        return [(None, cfg.templates_per_length, int(n)) for n in cfg.template_lengths]

    def left_vector(self, k_star: torch.Tensor) -> torch.Tensor:
        """u = C⁻¹k* / ||C⁻¹k*|| (or k*/||k*|| without the covariance), float64."""
        if self.config.mom2_adjustment:
            if self._c_inv is None:
                cov = self.covariances([self.site.layer])[self.site.layer]
                self._c_inv = torch.linalg.inv(cov)
            u = self._c_inv @ k_star
        else:
            u = k_star
        return u / u.norm()

    def _apply(self, record: EditRecord) -> dict:
        request = make_request(record, "ROME")
        layer, path = self.site.layer, self.site.path
        k_star = self.template_keys([request], layer, grouped=False)[:, 0]
        ins, outs = self.read_at_subject([request], ["{}"], [path])
        k_p, out_p = ins[path][0].double(), outs[path][0].double()
        if self.config.r_rome:  # W's output is affine in k: mean of outputs = W k* + b
            k_p, out_p = k_star, self._w_out(k_star)
        u = self.left_vector(k_star)
        v_star, info = self.compute_value(request, layer, at="mlp")
        denom = (k_p @ u).item()
        v = (v_star - out_p) / denom
        group = self.next_edit_id
        self.add_delta(group, f"{path}.weight", {"R": v[:, None], "X": u[:, None]}, self.site.conv1d)
        self.last_solve = {"k_star": k_star, "k": k_p, "v_star": v_star, "u": u, "v": v}
        return {"case": "rank-one", "group": group, "layers": [layer],
                "params": [f"{path}.weight"], "denominator": round(denom, 6),
                "delta_w_norm": round((v.norm() * u.norm()).item(), 5), **info}

    def _w_out(self, k: torch.Tensor) -> torch.Tensor:
        """W_out's output for one key (bias included), float64."""
        weight = self.param(f"{self.site.path}.weight").detach().double()
        w = weight.T if self.site.conv1d else weight
        bias = getattr(self.model.get_submodule(self.site.path), "bias", None)
        bias = bias.detach() if bias is not None else None
        return w @ k + (bias.double() if bias is not None else 0.0)

