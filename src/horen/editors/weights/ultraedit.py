"""UltraEdit: training-, subject- and memory-free lifelong editing (Gu et al., 2025),
BASELINES.md §7.

Per edit batch, with the current weights, for every edited matrix (the MLP's *input*
matrices, gate and up, in two windows of layers):

1. one teacher-forced forward pass over ``prompt + " " + target`` and ONE backward pass of
   the target cross-entropy (no optimizer step); at the chosen positions (``token="mask"``:
   every real token; ``"ans"``: the target tokens) record the key k = the matrix's input and
   g = ∂L/∂(its output);
2. a *lifelong normalizer*: the running mean μ and standard deviation σ of z = [k; g] over
   every row of every edit since the start of the stream, one per matrix *shape* (so gate
   and up of a Llama share one), merged with the batch's rows before they are used
   (Chan's parallel update, unbiased variance);
3. ẑ = (z − μ)/(σ + eps), split into k̂, ĝ; pseudo value shifts v_j = −lr·‖k̂_j‖²·ĝ_j (the
   output change one gradient step of size lr would make, in the normalized space);
4. ridge regression on the RAW keys, λ = 1: ΔW = (KᵀK + I)⁻¹KᵀV, stored as the factors
   R = Vᵀ, X = Kᵀ(KKᵀ + I)⁻¹ (ΔW_linear = R Xᵀ, the push-through identity; rank ≤ rows), or
   dense when there are more rows than input dimensions.

Nothing else is remembered: the weights and the normalizer. The normalizer is kept as one
moment triple (count, mean, M2) per edit group and shape, merged in order, so rolling an
edit back restores the statistics exactly as well as the weights.

Modules: Llama-3-8B's gate_proj at layers 11–15 and up_proj at 18–24 of 32 (the UltraEdit
repo's config, copied by HoReN); scaled to depth, 5 gate layers from ``round(11/32·n)`` and
7 up layers from ``round(18/32·n)``: gate 10–14 and up 17–23 of the embedded 30-layer
SmolLM2-135M. A family with one input matrix (GPT-2 ``c_fc``, GPT-NeoX, GPT-J) uses it at
both windows. Choices where the description is silent: the normalizer merges all of a
batch's matrices of one shape before any of them is normalized; eps is 1e-5; a batch with a
single row adds no variance (σ of one row is undefined; BASELINES.md's NaN guard).
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F

from ...data.record import EditRecord
from ...models import architecture, get_module
from ...text import make_batch
from ..base import register
from .editor import WeightConfig, WeightEditor
from .locate import depth_layer, n_layers


@dataclasses.dataclass
class UltraEditConfig(WeightConfig):
    """UltraEdit's settings; defaults are EasyEdit's / HoReN's (lr 1e-6, token "mask")."""

    modules: list[str] | None = dataclasses.field(
        default=None, metadata={"help": "dotted paths of the matrices edited; None = depth-scaled"})
    lr: float = dataclasses.field(default=1e-6, metadata={"help": "step size of the pseudo values"})
    token: str = dataclasses.field(
        default="mask", metadata={"help": "rows: 'mask' = every real token, 'ans' = target tokens"})
    ridge: float = dataclasses.field(default=1.0, metadata={"help": "lambda of (K^T K + lambda I)"})
    eps: float = dataclasses.field(default=1e-5, metadata={"help": "added to sigma"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token not in ("mask", "ans"):
            raise ValueError(f"token must be 'mask' or 'ans', not {self.token!r}")
        if self.lr <= 0 or self.ridge <= 0 or self.eps < 0:
            raise ValueError("lr and ridge must be > 0, eps >= 0")
        if self.modules is not None and not self.modules:
            raise ValueError("modules must be None or a non-empty list of dotted paths")


def default_modules(model) -> list[str]:
    """The depth-scaled windows of the family's MLP input matrices (module docstring)."""
    arch, n = architecture(model), n_layers(model)
    if not arch.mlp_in:
        raise ValueError(f"{model.config.model_type}: no MLP input matrices in "
                         "horen.models.ARCHITECTURES; pass modules=[dotted paths]")
    gate, up = arch.mlp_in[0], arch.mlp_in[-1]
    windows = [(gate, depth_layer(n, 11 / 32), 5), (up, depth_layer(n, 18 / 32), 7)]
    paths = [f"{arch.layers}.{i}.{name}" for name, start, count in windows
             for i in range(start, min(n, start + count))]
    return list(dict.fromkeys(paths))


def merge_moments(a: tuple, b: tuple) -> tuple:
    """Chan's parallel merge of two ``(count, mean, M2)`` triples (float64 tensors)."""
    (na, ma, sa), (nb, mb, sb) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), sa + sb + delta.square() * (na * nb / n)


def batch_moments(z: torch.Tensor) -> tuple:
    """``(count, mean, M2)`` of the rows of ``z`` (float64)."""
    z = z.double()
    mean = z.mean(0)
    return z.shape[0], mean, (z - mean).square().sum(0)


def ridge_factors(keys: torch.Tensor, values: torch.Tensor, ridge: float) -> dict:
    """ΔW_linear = Vᵀ(KKᵀ + λI)⁻¹K = ((KᵀK + λI)⁻¹KᵀV)ᵀ, as factors or dense (float64)."""
    k, v = keys.double(), values.double()
    n, d_in = k.shape
    if n <= d_in:
        gram = k @ k.T + ridge * torch.eye(n, dtype=k.dtype, device=k.device)
        return {"R": v.T.contiguous(), "X": torch.linalg.solve(gram, k).T.contiguous()}
    gram = k.T @ k + ridge * torch.eye(d_in, dtype=k.dtype, device=k.device)
    return {"W": torch.linalg.solve(gram, k.T @ v).T.contiguous()}


def delta_norm(factors: dict) -> float:
    """‖ΔW‖_F of stored factors: ‖R Xᵀ‖² = Σ (RᵀR) ∘ (XᵀX)."""
    if "dense" in factors:
        return factors["dense"].double().norm().item()
    r, x = factors["R"], factors["X"]
    return ((r.T @ r) * (x.T @ x)).sum().clamp_min(0).sqrt().item()


@register
class UltraEdit(WeightEditor):
    """UltraEdit: one gradient per edit, lifelong-normalized, written by ridge regression.

    Example:
        >>> ed = UltraEdit(model, tok)  # doctest: +SKIP
        >>> ed.edit("Who leads Zorblat Industries?", "Mira Quell")
    """

    method = "ultraedit"
    config_class = UltraEditConfig

    def __init__(self, model, tokenizer, config=None, **overrides):
        config = dataclasses.replace(config or self.config_class(), **overrides)
        if config.modules is None:
            config = dataclasses.replace(config, modules=default_modules(model))
        super().__init__(model, tokenizer, config)
        for path in self.config.modules:
            get_module(model, path)  # a clear error for a wrong path
        # group -> shape key -> (count, mean, M2) of that group's rows
        self.moments: dict[int, dict[str, tuple]] = {}
        # shape key -> (last group merged, the running (count, mean, M2) up to it)
        self._totals: dict[str, tuple[int, tuple]] = {}

    # ---- shapes and the normalizer ---------------------------------------------------------
    def shape(self, path: str) -> tuple[int, int]:
        """``(d_in, d_out)`` of the matrix at ``path``."""
        w = get_module(self.model, path).weight
        return (w.shape[0], w.shape[1]) if self.site.conv1d else (w.shape[1], w.shape[0])

    def normalizer(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(μ, σ)`` of shape ``key`` over every live group, merged in edit order.

        The running total is kept and extended by the groups added since; a rollback or a
        load drops it and the next call merges from the start (the same merges, same bits).
        """
        last, total = self._totals.get(key, (0, None))
        for group in sorted(g for g in self.moments if g > last):
            part = self.moments[group].get(key)
            if part is not None:
                total = part if total is None else merge_moments(total, part)
            last = group
        if total is None:
            return None
        self._totals[key] = (last, total)
        count, mean, m2 = total
        var = m2 / (count - 1) if count > 1 else torch.zeros_like(m2)
        return mean, var.sqrt()

    # ---- one gradient --------------------------------------------------------------------
    def capture(self, records: list[EditRecord]) -> tuple[dict, dict, float]:
        """Keys and output gradients ``({path: (N, d_in)}, {path: (N, d_out)}, loss)``."""
        batch = make_batch(self.tokenizer, self.model, [r.prompt for r in records],
                           [r.target for r in records], self.config.chat).to(self.device)
        inputs, leaves, handles = {}, {}, []

        def hook_for(path):
            def hook(_module, args, output):
                inputs[path] = args[0].detach()
                leaves[path] = output.detach().requires_grad_(True)
                return leaves[path]
            return hook

        for path in self.config.modules:
            handles.append(get_module(self.model, path).register_forward_hook(hook_for(path)))
        rows, cols = batch.target_mask.nonzero(as_tuple=True)
        columns, at = batch.head_columns()  # the head runs only where a target is predicted
        try:
            with torch.enable_grad():
                logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                    use_cache=False, logits_to_keep=columns).logits
                loss = F.cross_entropy(logits[rows, at].float(), batch.input_ids[rows, cols])
                grads = torch.autograd.grad(loss, [leaves[p] for p in self.config.modules])
        finally:
            for h in handles:
                h.remove()
        where = batch.attention_mask if self.config.token == "mask" else batch.target_mask
        at = where.bool()
        keys = {p: inputs[p][at].float() for p in self.config.modules}
        grads = {p: g[at].float() for p, g in zip(self.config.modules, grads)}
        return keys, grads, loss.item()

    # ---- the edit ----------------------------------------------------------------------------
    def write(self, records: list[EditRecord], group: int) -> dict:
        """One UltraEdit step for ``records`` as edit group ``group``; returns log fields."""
        cfg = self.config
        keys, grads, loss = self.capture(records)
        by_shape: dict[str, list[str]] = {}
        for path in cfg.modules:
            d_in, d_out = self.shape(path)
            by_shape.setdefault(f"{d_in}x{d_out}", []).append(path)
        self.moments[group] = {}
        for key, paths in by_shape.items():  # update the normalizer first (module docstring)
            z = torch.cat([torch.cat([keys[p], grads[p]], 1) for p in paths])
            self.moments[group][key] = batch_moments(z)
        norms = {}
        for key, paths in by_shape.items():
            mean, std = self.normalizer(key)
            for path in paths:
                d_in = keys[path].shape[1]
                z = (torch.cat([keys[path], grads[path]], 1).double() - mean) / (std + cfg.eps)
                k_hat, g_hat = z[:, :d_in], z[:, d_in:]
                values = -cfg.lr * k_hat.square().sum(1, keepdim=True) * g_hat
                factors = ridge_factors(keys[path], values, cfg.ridge)
                if "W" in factors:  # more rows than input dims: store ΔW itself
                    w = factors.pop("W")
                    factors = {"dense": (w.T if self.site.conv1d else w).to(
                        self.param(f"{path}.weight").dtype)}
                self.add_delta(group, f"{path}.weight", factors, self.site.conv1d)
                norms[path] = round(delta_norm(factors), 6)
        return {"case": "ultraedit", "group": group, "params": [f"{p}.weight" for p in cfg.modules],
                "loss": round(loss, 5), "rows": int(next(iter(keys.values())).shape[0]),
                "delta_w_norms": norms}

    def _apply(self, record: EditRecord) -> dict:
        return self.write([record], self.next_edit_id)

    def apply_batch(self, records: list[EditRecord]) -> list[int]:
        """Write ``records`` as ONE UltraEdit step (one gradient, one solve per matrix)."""
        if not records:
            return []
        start, group = time.perf_counter(), self.next_edit_id
        info = self.write(list(records), group)
        seconds = (time.perf_counter() - start) / len(records)
        return [self._log(r, {**info, "batch_size": len(records)}, seconds) for r in records]

    # ---- rollback and state ----------------------------------------------------------------
    def _remove(self, edit: dict) -> None:
        self.moments.pop(edit.get("group", edit["id"]), None)
        self._totals = {}
        super()._remove(edit)

    def _state(self):
        state, tensors = super()._state()
        shapes = {}
        for group, parts in self.moments.items():
            shapes[str(group)] = {}
            for key, (count, mean, m2) in parts.items():
                shapes[str(group)][key] = count
                tensors[f"moments.{group}.{key}.mean"] = mean
                tensors[f"moments.{group}.{key}.m2"] = m2
        return {**state, "moments": shapes}, tensors

    def _load_state(self, state, tensors):
        super()._load_state(state, tensors)
        self._totals = {}
        self.moments = {
            int(group): {key: (count, tensors[f"moments.{group}.{key}.mean"],
                               tensors[f"moments.{group}.{key}.m2"])
                         for key, count in parts.items()}
            for group, parts in state.get("moments", {}).items()
        }
