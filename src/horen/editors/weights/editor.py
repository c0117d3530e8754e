"""Bookkeeping shared by the weight-rewriting editors (ROME, MEMIT, AlphaEdit, FT-L, FT-M).

These editors change parameters in place. :class:`WeightEditor` keeps, for every edit
*group* (one edit, or one MEMIT batch), the delta it added to each parameter:

* ``{"R": (d_out, n), "X": (d_in, n)}`` (float64 factors, ΔW = R Xᵀ = Σ_j r_j x_jᵀ) for the
  closed-form methods: rank one for ROME, rank n for an n-edit MEMIT/AlphaEdit batch;
* ``{"dense": tensor}`` (the parameter's dtype and orientation) for fine-tuning.

A delta is turned into a tensor by :meth:`WeightEditor.materialize` (a fixed sequence of
outer products, so the same factors always give the same bits; GPT-2 ``Conv1D`` weights get
the transpose, from the explicit ``conv1d`` flag) and *added* with ``param.add_``. The
original values W₀ of every touched parameter are kept, so:

* :meth:`disabled` swaps W₀ in and puts the edited weights back, both bit-exact;
* rollback replays W₀ + Δ₁ + Δ₂ + ... without the removed group, the same additions in the
  same order, so removing the latest edit restores the weights *bit-exactly* (subtracting
  the delta would not: floating-point ``(w + d) - d`` is not always ``w``);
* save writes only the deltas (safetensors), and load replays them onto a fresh base.

Bounded memory for long streams: with ``rollback_window = K`` only the last K groups keep
their deltas; an older group is *folded* into the replay base (the same additions in the same
order, so the weights keep their bits) and can no longer be rolled back. Dense fine-tuning
deltas cost d_ff·d_model floats per edit (3.5 MB on the embedded model), so a window is what
lets FT run 1000 edits without holding and saving gigabytes.

Rolling back an *older* edit of a sequential stream: later edits were computed on a model
that contained it. With ``strict_rollback`` (default) they count as built on it, so
:meth:`remove` refuses unless ``cascade`` (then everything from that edit on is undone,
exactly). With ``strict_rollback=False`` only that edit's own delta is taken out and later
deltas stay as they were computed: the result is not the model one would have had if that
edit had never been made.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import torch

from ...malloc import release_large_blocks
from ..base import Editor, EditorConfig

# settings that change what is kept for rollback, never the edited weights (report labels skip them)
ROLLBACK_SETTINGS = ("strict_rollback", "rollback_window")


@dataclasses.dataclass
class WeightConfig(EditorConfig):
    """Settings shared by the weight-rewriting editors."""

    strict_rollback: bool = dataclasses.field(
        default=True,
        metadata={"help": "later edits on the same weights block removing an older one "
                          "(remove it with cascade=True); False: subtract only its own delta"},
    )
    rollback_window: int | None = dataclasses.field(
        default=None,
        metadata={"help": "keep the deltas of the last K edit groups; older ones are folded "
                          "into the base weights and cannot be rolled back; None = keep all"},
    )

    def __post_init__(self) -> None:
        if self.rollback_window is not None and self.rollback_window < 1:
            raise ValueError(f"rollback_window must be >= 1 or None, not {self.rollback_window}")


class WeightEditor(Editor):
    """Base of the editors that rewrite weights in place (see the module docstring).

    Subclasses implement ``_apply`` and call :meth:`add_delta` for what they change; the
    contract's ``_remove``, ``_state``, ``_load_state``, ``disabled`` and ``close`` are here.
    """

    config_class = WeightConfig

    def __init__(self, model, tokenizer, config=None, **overrides):
        super().__init__(model, tokenizer, config, **overrides)
        release_large_blocks()  # per-edit d_ff² temporaries must not pile up in the heap
        self.w0: dict[str, torch.Tensor] = {}  # parameter name -> original values
        self.conv1d: dict[str, bool] = {}  # parameter name -> stored transposed (GPT-2)
        self.deltas: dict[int, dict[str, dict[str, torch.Tensor]]] = {}  # group -> name -> factors
        self.base: dict[str, torch.Tensor] = {}  # name -> W₀ + the folded groups' deltas
        self.folded_upto = 0  # groups up to this one are folded into self.base
        self._defer = self._dirty = False

    # ---- writing -----------------------------------------------------------------------------
    def param(self, name: str) -> torch.nn.Parameter:
        return self.model.get_parameter(name)

    def materialize(self, name: str, factors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tensor a stored delta adds to parameter ``name`` (its dtype and orientation)."""
        param = self.param(name)
        if "dense" in factors:
            return factors["dense"].to(param.device, param.dtype)
        r, x = factors["R"].to(param.device), factors["X"].to(param.device)
        delta = torch.zeros(r.shape[0], x.shape[0], dtype=torch.float64, device=param.device)
        for j in range(r.shape[1]):  # fixed order: the same factors give the same bits
            delta.addr_(r[:, j], x[:, j])
        if self.conv1d.get(name, False):
            delta = delta.T
        return delta.to(param.dtype).contiguous()

    def add_delta(self, group: int, name: str, factors: dict[str, torch.Tensor], conv1d=False):
        """Add a delta to parameter ``name`` now and remember it under ``group``."""
        param = self.param(name)
        self._track(name, conv1d)
        window = self.config.rollback_window
        if window is not None and group not in self.deltas:
            while len(self.deltas) >= window:
                self.fold(min(self.deltas))
        with torch.no_grad():
            param.add_(self.materialize(name, factors))
        self.deltas.setdefault(group, {})[name] = {k: v.detach() for k, v in factors.items()}

    def _track(self, name: str, conv1d: bool) -> None:
        """Keep W₀ and the orientation of ``name`` the first time an edit touches it."""
        if name not in self.w0:
            self.w0[name] = self.param(name).detach().clone()
            self.conv1d[name] = bool(conv1d)

    def fold(self, group: int) -> None:
        """Fold the oldest live ``group`` into the replay base: kept in the weights, no rollback."""
        if group != min(self.deltas):
            raise ValueError(f"only the oldest live group can be folded, not {group}")
        with torch.no_grad():
            for name, factors in self.deltas.pop(group).items():
                base = self.base.setdefault(name, self.w0[name].clone())
                base.add_(self.materialize(name, factors))
        self.folded_upto = group
        for e in self.edits:
            if e.get("group", e["id"]) <= group:
                e["folded"] = True

    # ---- rollback ----------------------------------------------------------------------------
    def replay(self) -> None:
        """Set every touched parameter to its base (W₀ + folded groups) + the live deltas,
        added in their original order."""
        with torch.no_grad():
            for name, w0 in self.w0.items():
                self.param(name).copy_(self.base.get(name, w0))
            for group in sorted(self.deltas):
                for name, factors in self.deltas[group].items():
                    self.param(name).add_(self.materialize(name, factors))
        self._dirty = False

    def _conflicts(self, edit: dict) -> list[int]:
        group = edit.get("group", edit["id"])
        same = [e["id"] for e in self.edits if e.get("group", e["id"]) == group and e["id"] != edit["id"]]
        if not self.config.strict_rollback:
            return same
        mine = set(edit.get("params", []))
        later = [e["id"] for e in self.edits if e["id"] > edit["id"] and e["id"] not in same
                 and mine & set(e.get("params", []))]
        return same + later

    def _remove(self, edit: dict) -> None:
        group = edit.get("group", edit["id"])
        if self.deltas.pop(group, None) is not None:
            self._dirty = True
        if not self._defer and self._dirty:
            self.replay()

    def remove(self, edit_id: int, cascade: bool = False) -> list[int]:
        """Roll back edit ``edit_id`` (see the module docstring); one replay at the end."""
        edit = next((e for e in self.edits if e["id"] == edit_id), None)
        if edit is not None and edit.get("group", edit_id) <= self.folded_upto:
            raise ValueError(
                f"edit {edit_id} was folded into the base weights (rollback_window="
                f"{self.config.rollback_window}); it can no longer be rolled back")
        self._defer = True
        try:
            return super().remove(edit_id, cascade)
        finally:
            self._defer = False
            if self._dirty:
                self.replay()

    # ---- state -------------------------------------------------------------------------------
    def _state(self):
        tensors = {}
        for group, params in self.deltas.items():
            for name, factors in params.items():
                for key, value in factors.items():
                    tensors[f"delta.{group}.{name}.{key}"] = value
        for name, base in self.base.items():  # float64 difference: reloads to the same bits
            tensors[f"folded.{name}"] = base.double() - self.w0[name].double()
        state = {
            "groups": {str(g): sorted(p) for g, p in self.deltas.items()},
            "conv1d": self.conv1d,
            "folded": {"upto": self.folded_upto, "params": sorted(self.base)},
        }
        return state, tensors

    def _load_state(self, state, tensors):
        self.replay()  # a fresh editor: nothing applied yet
        conv1d = state.get("conv1d", {})
        folded = state.get("folded", {"upto": 0, "params": []})
        with torch.no_grad():
            for name in folded["params"]:
                param = self.param(name)
                self._track(name, conv1d.get(name, False))
                diff = tensors[f"folded.{name}"].to(param.device)
                self.base[name] = (self.w0[name].double() + diff).to(param.dtype)
                param.copy_(self.base[name])
        self.folded_upto = int(folded["upto"])
        for group in sorted(state.get("groups", {}), key=int):
            for name in state["groups"][group]:
                prefix = f"delta.{group}.{name}."
                factors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                if not factors:
                    raise ValueError(f"saved edits lack the delta of group {group} on {name}")
                self.add_delta(int(group), name, factors, conv1d.get(name, False))

    @contextmanager
    def disabled(self):
        """The base model inside this block: W₀ swapped in, the edited weights put back after."""
        edited = {name: self.param(name).detach().clone() for name in self.w0}
        try:
            with torch.no_grad():
                for name, w0 in self.w0.items():
                    self.param(name).copy_(w0)
            yield self.model
        finally:
            with torch.no_grad():
                for name, w in edited.items():
                    self.param(name).copy_(w)

    def identity(self) -> dict:
        """The base model's identity (W's fingerprint is taken on the original weights)."""
        with self.disabled():
            return super().identity()

    def close(self) -> None:
        """Put the original weights back; the editor holds no edits afterwards."""
        with torch.no_grad():
            for name, w0 in self.w0.items():
                self.param(name).copy_(w0)
        self.w0, self.deltas, self.conv1d, self.base, self.folded_upto = {}, {}, {}, {}, 0
