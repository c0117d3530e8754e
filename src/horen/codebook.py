"""The codebook and its routing math: pure tensors, no model inside.

Spec (``HOREN_SPEC.md``) to code:

* keys and queries: :func:`pool` (mean of the last ceil(rho*n) prompt activations) then
  :func:`normalize` (q = q_raw / ||q_raw||);
* the damped Hopfield step: :func:`refine`
  (p = softmax(beta K q), xi = normalize(K^T p), q <- normalize((1-alpha) q + alpha xi));
* the match: :func:`route_cosine` (scores = K q, match iff max > tau) for HoReN,
  :func:`route_euclid` (nearest key inside its deferral radius) for GRACE and
  :func:`route_anchored` (cosine > tau AND the entry's subject anchor found among the
  query's tokens) for horen-entity;
* the storage: :class:`Codebook`, keys in one contiguous float32 matrix that grows
  geometrically, one value per entry, a label (target string) and a stable id per entry.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NO_MATCH = -1


def pool(acts: torch.Tensor, mask: torch.Tensor, pool_ratio: float) -> torch.Tensor:
    """Mean of the last ``k = max(ceil(pool_ratio * n), 1)`` real tokens of each row.

    Args:
        acts: ``(B, T, d)`` activations (any dtype; pooled in float32).
        mask: ``(B, T)`` 1 for real prompt tokens, 0 for padding or non-prompt positions.
        pool_ratio: rho in (0, 1].

    Returns:
        ``(B, d)`` float32 pooled activations.
    """
    mask = mask.to(torch.float32)
    n = mask.sum(dim=1, keepdim=True)
    k = torch.clamp(torch.ceil(n * pool_ratio - 1e-6), min=1.0)
    from_end = torch.flip(torch.cumsum(torch.flip(mask, [1]), dim=1), [1])  # 1 = last token
    weights = mask * (from_end <= k).to(torch.float32) / k
    return torch.einsum("bt,btd->bd", weights, acts.to(torch.float32))


def last_token(acts: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """``acts[b, last[b]]`` in float32 (GRACE's raw key)."""
    return acts[torch.arange(acts.shape[0], device=acts.device), last].to(torch.float32)


def normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Unit L2 norm along the last dimension."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def refine(
    q: torch.Tensor,
    keys: torch.Tensor,
    *,
    beta: float = 20.0,
    alpha: float = 0.1,
    steps: int = 1,
    eps: float = 1e-5,
    normalized: bool = True,
) -> torch.Tensor:
    """Damped Hopfield refinement of queries ``q`` (B, d) against ``keys`` (K, d).

    With ``normalized`` (HoReN) every iterate is put back on the unit sphere; without it
    (the paper's ablation) the raw vectors are mixed. A row stops once the retrieved
    pattern is within ``eps`` of its query.
    """
    if steps <= 0 or keys.shape[0] == 0:
        return q
    active = torch.ones(q.shape[0], dtype=torch.bool, device=q.device)
    for _ in range(steps):
        p = torch.softmax(beta * (q @ keys.T), dim=-1)
        xi = p @ keys
        if normalized:
            xi = normalize(xi)
        active &= (xi - q).norm(dim=-1) >= eps
        if not active.any():
            break
        step = (1 - alpha) * q + alpha * xi
        if normalized:
            step = normalize(step)
        q = torch.where(active[:, None], step, q)
    return q


def route_cosine(q: torch.Tensor, keys: torch.Tensor, tau: float):
    """Best entry by cosine (dot product of unit vectors); ``NO_MATCH`` where <= tau.

    Returns:
        ``(index, score)``: ``(B,)`` long entry indices (``NO_MATCH`` = -1) and ``(B,)`` best
        cosine scores (``-inf`` for an empty codebook).
    """
    if keys.shape[0] == 0:
        return _empty_route(q)
    scores = normalize(q) @ normalize(keys).T
    best, index = scores.max(dim=-1)
    return torch.where(best > tau, index, NO_MATCH), best


def route_euclid(q: torch.Tensor, keys: torch.Tensor, radii: torch.Tensor):
    """GRACE: nearest key by Euclidean distance; a match iff it lies within that key's radius.

    Returns:
        ``(index, distance)`` with ``NO_MATCH`` where outside; distance ``inf`` when empty.
    """
    if keys.shape[0] == 0:
        index, score = _empty_route(q)
        return index, -score
    dist = torch.cdist(q, keys)
    best, index = dist.min(dim=-1)
    return torch.where(best <= radii[index], index, NO_MATCH), best


def route_anchored(
    q: torch.Tensor,
    tokens: list[torch.Tensor],
    keys: torch.Tensor,
    anchors: torch.Tensor,
    tau: float,
    anchor_tau: float | torch.Tensor,
    anchor_mask: torch.Tensor | None = None,
    questions: torch.Tensor | None = None,
    question_keys: torch.Tensor | None = None,
    question_tau: float | torch.Tensor | None = None,
    **hopfield,
) -> torch.Tensor:
    """horen-entity: the relation, entity and question gates (:mod:`horen.editors.codebook.entity`).

    Args:
        q: ``(B, d)`` unit pooled queries; refined by :func:`refine` (``**hopfield``: beta,
            alpha, steps, eps), then scored by cosine against ``keys`` ``(K, d)``.
        tokens: per query, its ``(n_b, d_a)`` unit anchor-layer activations.
        anchors: ``(K, d_a)`` one unit anchor per key, or ``(K, J, d_a)`` several (the
            subject's tokens), ``anchor_mask`` ``(K, J)`` marking the real ones.
        anchor_tau: the entity gate's threshold: one for all anchors, or ``(K,)`` / ``(K, J)``
            one per anchor (:meth:`horen.editors.codebook.entity.EntityHoReN.anchor_thresholds`).
        questions, question_keys, question_tau: the optional question gate, ``(B, d_q)``
            unit queries and ``(K, d_q)`` unit keys (the edit site's input at the last prompt
            token): an entry also needs cosine ``> question_tau`` there (one threshold, or
            ``(K,)`` one per entry, -inf for an entry without the gate). None: no such gate.

    Returns:
        ``(B,)`` rows: among the entries with relation score ``> tau`` whose every anchor
        has cosine ``>`` its threshold with some token of the query (min over anchors of the
        max over tokens, less the threshold), and whose question key passes, the best
        relation score; else ``NO_MATCH``.
    """
    out = torch.full((q.shape[0],), NO_MATCH, dtype=torch.long, device=q.device)
    if keys.shape[0] == 0:
        return out
    if anchors.dim() == 2:
        anchors = anchors[:, None]
    if anchor_mask is None:
        anchor_mask = torch.ones(anchors.shape[:2], dtype=torch.bool, device=anchors.device)
    thresholds = torch.as_tensor(anchor_tau, dtype=anchors.dtype, device=anchors.device)
    thresholds = thresholds.reshape(-1, 1) if thresholds.dim() == 1 else thresholds
    thresholds = thresholds.expand(anchors.shape[:2])
    scores = refine(q, keys, **hopfield) @ keys.T
    for b in range(q.shape[0]):
        cand = (scores[b] > tau).nonzero().flatten()
        if not len(cand) or not len(tokens[b]):
            continue
        found = torch.einsum("cjd,td->cjt", anchors[cand], tokens[b]).max(dim=2).values
        margin = (found - thresholds[cand]).masked_fill(~anchor_mask[cand], math.inf)
        cand = cand[margin.min(dim=1).values > 0]
        if len(cand) and question_tau is not None:
            limit = question_tau[cand] if torch.is_tensor(question_tau) else question_tau
            cand = cand[question_keys[cand] @ questions[b] > limit]
        if len(cand):
            out[b] = cand[scores[b, cand].argmax()]
    return out


def _empty_route(q: torch.Tensor):
    b = q.shape[0]
    return (
        torch.full((b,), NO_MATCH, dtype=torch.long, device=q.device),
        torch.full((b,), -math.inf, device=q.device),
    )


class Codebook(nn.Module):
    """Keys, values, labels, radii and stable ids of the stored entries.

    Keys live in one contiguous ``(capacity, d_key)`` float32 matrix whose capacity doubles
    when full; :attr:`keys` is the view of the ``len(self)`` used rows. Values are
    ``(capacity, *value_shape)`` float32 rows. An entry's id never changes and is never
    reused, even when other entries are removed.

    It is a module (a child of the wrapper layer, so it shows in ``print(model)``) whose
    tensors are buffers: ``model.to(device)`` moves them with the model. They stay float32
    whatever the model's dtype (routing is computed in float32), and they are saved with the
    edit set (:meth:`tensors`), not in the model's ``state_dict``.

    Args:
        d_key: key width (d_ff for HoReN).
        value_shape: shape of one value (``(d_model,)`` for a direct value).
        device: where the tensors live (the wrapped layer's device).
    """

    def __init__(self, d_key: int, value_shape: tuple[int, ...], device=None) -> None:
        super().__init__()
        self.d_key, self.value_shape = d_key, tuple(value_shape)
        self.register_buffer("_keys", torch.zeros(0, d_key, device=device), persistent=False)
        self.register_buffer("_values", torch.zeros(0, *self.value_shape, device=device),
                             persistent=False)
        self.register_buffer("_radii", torch.zeros(0, device=device), persistent=False)
        self.labels: list[str] = []
        self.ids: list[int] = []
        self.next_id = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def keys(self) -> torch.Tensor:
        return self._keys[: len(self)]

    @property
    def values(self) -> torch.Tensor:
        return self._values[: len(self)]

    @property
    def radii(self) -> torch.Tensor:
        return self._radii[: len(self)]

    @property
    def device(self) -> torch.device:
        return self._keys.device

    @property
    def capacity(self) -> int:
        """Rows allocated (``>= len(self)``)."""
        return self._keys.shape[0]

    def reserve(self, n: int) -> None:
        """Allocate room for ``n`` entries now (a stream of known length never regrows)."""
        if n > self.capacity:
            self._resize(n)

    def shrink(self) -> None:
        """Free the rows allocated beyond ``len(self)`` (geometric growth leaves up to half)."""
        if self.capacity > len(self):
            self._resize(len(self))

    def _reserve(self, n: int) -> None:
        if n > self.capacity:
            self._resize(max(n, 2 * self.capacity, 16))

    def _resize(self, cap: int) -> None:
        used = len(self)
        keys = self._keys.new_zeros(cap, self.d_key)
        values = self._values.new_zeros(cap, *self.value_shape)
        radii = self._radii.new_zeros(cap)
        keys[:used], values[:used], radii[:used] = self.keys, self.values, self.radii
        self._keys, self._values, self._radii = keys, values, radii

    def add(self, key: torch.Tensor, value: torch.Tensor, label: str, radius: float = 0.0) -> int:
        """Append an entry; returns its row index."""
        row = len(self)
        self._reserve(row + 1)
        self._keys[row] = key.to(self._keys)
        self._values[row] = value.to(self._values)
        self._radii[row] = radius
        self.labels.append(label)
        self.ids.append(self.next_id)
        self.next_id += 1
        return row

    def row(self, entry_id: int) -> int:
        """Row index of the entry with stable id ``entry_id``."""
        try:
            return self.ids.index(entry_id)
        except ValueError:
            raise KeyError(f"no codebook entry with id {entry_id}") from None

    def set_value(self, row: int, value: torch.Tensor) -> None:
        self._values[row] = value.detach().to(self._values)

    def set_radius(self, row: int, radius: float) -> None:
        self._radii[row] = radius

    def remove(self, row: int) -> None:
        """Drop one entry, shifting later rows up (ids stay as they were)."""
        n = len(self)
        for buf in (self._keys, self._values, self._radii):
            buf[row : n - 1] = buf[row + 1 : n].clone()
        del self.labels[row], self.ids[row]

    def _apply(self, fn, recurse=True):
        """``model.to(...)``, ``.cuda()``, ``.half()``: follow the device, stay float32."""
        for name in ("_keys", "_values", "_radii"):
            tensor = getattr(self, name)
            setattr(self, name, tensor.to(fn(tensor[:0]).device))
        return self

    def extra_repr(self) -> str:
        return f"entries={len(self)}, d_key={self.d_key}, value_shape={self.value_shape}"

    def tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to save (the labels and ids go in the JSON side)."""
        return {
            "keys": self.keys.contiguous().cpu(),
            "values": self.values.contiguous().cpu(),
            "radii": self.radii.contiguous().cpu(),
        }

    def load_tensors(self, tensors: dict[str, torch.Tensor], labels, ids, next_id) -> None:
        """Restore what :meth:`tensors` (and the JSON side) saved."""
        device = self.device
        n = len(labels)
        if tensors["keys"].shape != (n, self.d_key):
            raise ValueError(
                f"saved keys have shape {tuple(tensors['keys'].shape)}, expected ({n}, {self.d_key})"
            )
        if tuple(tensors["values"].shape[1:]) != self.value_shape:
            raise ValueError(
                f"saved values have shape {tuple(tensors['values'].shape[1:])} per entry, "
                f"expected {self.value_shape}"
            )
        self._keys = tensors["keys"].to(device, torch.float32).clone()
        self._values = tensors["values"].to(device, torch.float32).clone()
        self._radii = tensors["radii"].to(device, torch.float32).clone()
        self.labels, self.ids, self.next_id = list(labels), [int(i) for i in ids], int(next_id)
