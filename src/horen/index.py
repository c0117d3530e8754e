"""Routing backends for big codebooks: the HoReN routing decision, engineered for speed.

Both routers answer the question of :func:`horen.codebook.refine` followed by
:func:`horen.codebook.route_cosine` (one damped Hopfield step, then a cosine threshold) and
share one call, ``route(q, keys, tau, beta=, alpha=, steps=, eps=) -> (rows, scores)``:

* :class:`ExactRouter` (the default) gives the same decisions as the plain path, up to float32
  rounding (a score within ~1e-6 of tau or of the runner-up), with less work:

  1. one pass over the keys in chunks: ``S = Q K^T`` (first GEMM), the running top-(k+1) of
     S per query, and the online softmax ``Xi += exp(beta (S - max)) K`` (second GEMM; the
     softmax normalizer cancels in ``normalize(Xi)``). A chunk of keys is used twice while it
     is still in the CPU cache, and no ``(B, K)`` matrix is held beyond one chunk;
  2. ``q' = normalize((1 - alpha) q + alpha xi)`` (or ``q' = q`` where ``||xi - q|| < eps``),
     exact refined scores ``K_c q'`` for the top-k candidates ``c`` by S only;
  3. a certificate instead of the third GEMM ``K q'``: with ``phi = angle(q, q')`` and
     ``s = S_(k+1)`` (the best non-candidate), every non-candidate scores at most
     ``cos(max(0, arccos(s) - phi))`` (spherical triangle inequality; tighter than the bound
     from ``K_i . xi <= 1``). A row is settled if its best candidate beats that bound, or if
     the bound is <= tau (then no non-candidate can match). Other rows fall back to full
     scores ``K q'`` (chunked), for those rows only.

  ``steps > 1`` falls back to the plain loop; ``steps == 0`` is plain cosine routing.

* :class:`FaissRouter` (optional ``faiss-cpu``) is approximate: it takes the top-k neighbours
  by inner product from a faiss index and runs the softmax, the step and the rescoring over
  those candidates only. Use :func:`agreement` to measure it against :class:`ExactRouter`.

Example:
    >>> keys = normalize(torch.randn(1000, 64))
    >>> rows, scores = ExactRouter().route(keys[:3], keys, tau=0.8)
    >>> rows.tolist()
    [0, 1, 2]
"""

from __future__ import annotations

import math

import torch

from .codebook import NO_MATCH, normalize, refine, route_cosine

__all__ = ["ExactRouter", "FaissRouter", "agreement"]


def agreement(exact_rows: torch.Tensor, approx_rows: torch.Tensor) -> float:
    """Fraction of queries whose routing decision (row or ``NO_MATCH``) is the same."""
    if exact_rows.numel() == 0:
        return 1.0
    return (exact_rows.cpu() == approx_rows.cpu()).float().mean().item()


def _empty_route(q: torch.Tensor):
    b = q.shape[0]
    rows = torch.full((b,), NO_MATCH, dtype=torch.long, device=q.device)
    return rows, torch.full((b,), -math.inf, device=q.device)


def _step(q, xi, alpha: float, eps: float) -> torch.Tensor:
    """One damped normalized Hopfield update; rows with ``||xi - q|| < eps`` stay put."""
    active = (xi - q).norm(dim=-1) >= eps
    return torch.where(active[:, None], normalize((1 - alpha) * q + alpha * xi), q)


class ExactRouter:
    """Exact HoReN routing (decisions of ``refine`` + ``route_cosine``), fast on big codebooks.

    Args:
        candidates: k, the number of top-by-S keys rescored exactly per query.
        chunk_bytes: bytes of keys per chunk (sized to stay in cache between the two GEMMs).
        chunk_elems: the largest ``(B, chunk)`` score block held at once, in elements.
        slack: safety margin of the certificate against float32 rounding.

    Attributes:
        last_fallback: how many rows of the last call needed the full ``K q'`` pass.
    """

    def __init__(
        self,
        candidates: int = 16,
        chunk_bytes: int = 16 << 20,
        chunk_elems: int = 1 << 22,
        slack: float = 1e-5,
    ) -> None:
        if candidates < 1:
            raise ValueError("candidates must be >= 1")
        self.candidates, self.chunk_bytes, self.chunk_elems = candidates, chunk_bytes, chunk_elems
        self.slack = slack
        self.last_fallback = 0

    def _chunk(self, b: int, d: int) -> int:
        return max(64, min(self.chunk_bytes // (4 * d), self.chunk_elems // max(b, 1)))

    @torch.no_grad()
    def route(self, q, keys, tau, *, beta=20.0, alpha=0.1, steps=1, eps=1e-5):
        """Route unit queries ``q`` (B, d) against unit ``keys`` (K, d).

        Returns:
            ``(rows, scores)``: ``(B,)`` long rows (``NO_MATCH`` = -1 where the best refined
            cosine is <= tau) and ``(B,)`` float32 best refined cosines (for a row settled as
            no-match by the bound alone, the best candidate's score, which is <= tau too).
        """
        q = normalize(q.to(torch.float32))
        keys = keys.to(torch.float32)
        self.last_fallback = 0
        if keys.shape[0] == 0 or q.shape[0] == 0:
            return _empty_route(q)
        if steps > 1:
            refined = refine(q, keys, beta=beta, alpha=alpha, steps=steps, eps=eps)
            return route_cosine(refined, keys, tau)
        n_keys, k = keys.shape[0], min(self.candidates + 1, keys.shape[0])
        chunk = self._chunk(q.shape[0], keys.shape[1])
        top_s = q.new_full((q.shape[0], 0), -math.inf)
        top_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=q.device)
        m = q.new_full((q.shape[0], 1), -math.inf)
        acc = torch.zeros_like(q)
        for start in range(0, n_keys, chunk):
            kc = keys[start : start + chunk]
            s = q @ kc.T
            vals, idx = torch.topk(s, min(k, s.shape[1]), dim=1)
            merged = torch.cat([top_s, vals], 1)
            top_s, pos = torch.topk(merged, min(k, merged.shape[1]), dim=1)
            top_i = torch.gather(torch.cat([top_i, idx + start], 1), 1, pos)
            if steps == 1:  # online softmax: rescale the accumulator to the new running max
                m_new = torch.maximum(m, s.max(dim=1, keepdim=True).values)
                weights = s.sub_(m_new).mul_(beta).exp_()  # in place: s is no longer needed
                acc = torch.addmm(acc * torch.exp(beta * (m - m_new)), weights, kc)
                m = m_new
        qp = _step(q, normalize(acc), alpha, eps) if steps == 1 else q
        cand = min(self.candidates, n_keys)
        cand_i = top_i[:, :cand]
        cand_s = torch.einsum("bkd,bd->bk", keys[cand_i], qp)
        best, arg = cand_s.max(dim=1)
        rows = cand_i.gather(1, arg[:, None])[:, 0]
        if n_keys > cand:  # certificate for the keys that were not rescored
            phi = torch.arccos((q * qp).sum(-1).clamp(-1, 1))
            gap = (torch.arccos(top_s[:, cand].clamp(-1, 1)) - phi).clamp_min(0)
            bound = torch.cos(gap) + self.slack
            settled = (best > bound) | (bound <= tau)
            todo = (~settled).nonzero()[:, 0]
            if len(todo):
                self.last_fallback = len(todo)
                best[todo], rows[todo] = self._full(qp[todo], keys, chunk)
        return torch.where(best > tau, rows, NO_MATCH), best

    def _full(self, qp, keys, chunk):
        """Best row and score of ``keys @ qp`` over all keys, chunk by chunk."""
        best = qp.new_full((qp.shape[0],), -math.inf)
        rows = torch.zeros(qp.shape[0], dtype=torch.long, device=qp.device)
        for start in range(0, keys.shape[0], chunk):
            vals, idx = (qp @ keys[start : start + chunk].T).max(dim=1)
            better = vals > best
            best, rows = torch.where(better, vals, best), torch.where(better, idx + start, rows)
        return best, rows


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            "FaissRouter needs the optional package faiss-cpu: pip install faiss-cpu"
        ) from err
    return faiss


class FaissRouter:
    """Approximate HoReN routing over the top-k inner-product neighbours from a faiss index.

    The index is an ``IndexIVFFlat`` (inner product) once the codebook holds at least
    ``ivf_min`` keys, else an exact ``IndexFlatIP``. IVF was chosen for 100K-1M entries
    because it trains in seconds (k-means on a sample, nlist ~ sqrt(n)), accepts new keys
    without retraining, and a query scans only ``nprobe`` of its ``nlist`` lists; HNSW
    builds far slower at d_ff in the thousands and cannot remove entries. The softmax, the
    Hopfield step and the final cosine use the candidates only, so keys outside the top-k
    are ignored (approximate: measure with :func:`agreement`).

    Row ids in the index are codebook rows: :meth:`add` appends the codebook's new rows;
    after removing rows from the codebook call :meth:`remove` (a rebuild, O(n)).

    Args:
        dim: key width (d_ff).
        k: neighbours retrieved per query.
        nprobe: IVF lists scanned per query.
        ivf_min: smallest codebook that gets an IVF index (``None``: always flat).
        threads: faiss OpenMP threads (``None``: leave faiss's default).
    """

    def __init__(self, dim, k=64, nprobe=16, ivf_min=50_000, threads=None, seed=0):
        faiss = _faiss()
        if threads is not None:
            faiss.omp_set_num_threads(threads)
        self.dim, self.k, self.nprobe, self.ivf_min, self.seed = dim, k, nprobe, ivf_min, seed
        self.index = faiss.IndexFlatIP(dim)

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, keys: torch.Tensor) -> None:
        """Append keys (rows ``len(self) ..``); switches to IVF when the size passes ivf_min."""
        flat = not hasattr(self.index, "nprobe")
        if flat and self.ivf_min is not None and len(self) + keys.shape[0] >= self.ivf_min:
            old = self.index.reconstruct_n(0, len(self)) if len(self) else None
            self._make_ivf(keys if old is None else torch.cat([torch.from_numpy(old), keys]))
            if old is not None:
                self.index.add(old)
        self.index.add(keys.detach().to("cpu", torch.float32).contiguous().numpy())

    def _make_ivf(self, keys: torch.Tensor) -> None:
        faiss = _faiss()
        nlist = max(16, int(math.sqrt(keys.shape[0])))
        gen = torch.Generator().manual_seed(self.seed)
        sample = keys[torch.randperm(keys.shape[0], generator=gen)[: 40 * nlist]]
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = self.seed
        index.train(sample.detach().to("cpu", torch.float32).contiguous().numpy())
        index.nprobe = self.nprobe
        self.quantizer, self.index = quantizer, index

    def rebuild(self, keys: torch.Tensor) -> None:
        """Replace the index content by ``keys`` (an IVF keeps its trained lists)."""
        self.index.reset()
        if len(keys):
            self.add(keys)

    def remove(self, rows, keys: torch.Tensor) -> None:
        """After ``rows`` were removed from the codebook: re-index its remaining ``keys``."""
        self.rebuild(keys)

    @torch.no_grad()
    def route(self, q, keys, tau, *, beta=20.0, alpha=0.1, steps=1, eps=1e-5):
        """Like :meth:`ExactRouter.route`, over the top-k neighbours of each query only."""
        q = normalize(q.to(torch.float32))
        if self.index.ntotal != keys.shape[0]:
            raise ValueError(f"index holds {self.index.ntotal} keys, codebook {keys.shape[0]}")
        if keys.shape[0] == 0 or q.shape[0] == 0:
            return _empty_route(q)
        _, ids = self.index.search(q.cpu().contiguous().numpy(), min(self.k, keys.shape[0]))
        ids = torch.from_numpy(ids).to(q.device)
        valid = ids >= 0
        cand = keys.to(torch.float32)[ids.clamp_min(0)]
        for _ in range(max(steps, 0)):
            s = torch.einsum("bkd,bd->bk", cand, q).masked_fill(~valid, -math.inf)
            xi = normalize(torch.einsum("bk,bkd->bd", torch.softmax(beta * s, dim=1), cand))
            q_new = _step(q, xi, alpha, eps)
            if torch.equal(q_new, q):
                break
            q = q_new
        scores = torch.einsum("bkd,bd->bk", cand, q).masked_fill(~valid, -math.inf)
        best, arg = scores.max(dim=1)
        rows = ids.gather(1, arg[:, None])[:, 0]
        return torch.where(best > tau, rows, NO_MATCH), best
