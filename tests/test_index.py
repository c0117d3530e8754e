"""ExactRouter must make the decisions of refine + route_cosine; FaissRouter must mostly agree."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from horen.codebook import normalize, refine, route_cosine
from horen.index import ExactRouter, FaissRouter, agreement


def plain(q, keys, tau, steps=1):
    return route_cosine(refine(q, keys, beta=20.0, alpha=0.1, steps=steps, eps=1e-5), keys, tau)


def data(kind, n_keys, n_queries, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = normalize(torch.randn(n_keys, d, generator=g))
    if kind == "copies":  # noisy copies of stored keys
        pick = torch.randint(n_keys, (n_queries,), generator=g)
        return keys, normalize(keys[pick] + 0.8 * torch.randn(n_queries, d, generator=g) / d**0.5)
    if kind == "random":
        return keys, normalize(torch.randn(n_queries, d, generator=g))
    center = normalize(torch.randn(1, d, generator=g))  # clustered: cosines ~0.8-0.95
    keys = normalize(center + 0.5 * torch.randn(n_keys, d, generator=g) / d**0.5)
    return keys, normalize(center + 0.5 * torch.randn(n_queries, d, generator=g) / d**0.5)


@pytest.mark.parametrize("kind", ["copies", "random", "clustered"])
@pytest.mark.parametrize("n_keys,n_queries,d", [(1, 3, 16), (7, 5, 32), (3000, 33, 64)])
@pytest.mark.parametrize("steps", [0, 1, 2])
def test_exact_matches_plain(kind, n_keys, n_queries, d, steps):
    keys, q = data(kind, n_keys, n_queries, d)
    for tau in (-1.0, 0.5, 0.85, 0.95):
        rows, scores = plain(q, keys, tau, steps)
        got_rows, got_scores = ExactRouter(chunk_bytes=4 * d * 500).route(q, keys, tau, steps=steps)
        assert torch.equal(got_rows, rows)
        matched = rows >= 0
        assert torch.allclose(got_scores[matched], scores[matched], atol=1e-5)
        assert (got_scores[~matched] <= tau).all()


def test_certificate_failure_falls_back():
    """One candidate on clustered keys: the bound fails and the full pass must decide."""
    keys, q = data("clustered", 2000, 32, 64, seed=1)
    router = ExactRouter(candidates=1, chunk_bytes=4 * 64 * 300)
    fallbacks = 0
    for tau in (0.5, 0.9, 0.97):
        assert torch.equal(router.route(q, keys, tau)[0], plain(q, keys, tau)[0])
        fallbacks += router.last_fallback
    assert fallbacks > 0


def test_early_stop_rows_keep_their_query():
    """A query equal to a lone key has xi == q: the step must not move it (score exactly 1)."""
    keys = normalize(torch.randn(1, 8))
    rows, scores = ExactRouter().route(keys, keys, 0.99)
    assert rows.tolist() == [0] and abs(scores.item() - 1.0) < 1e-6


def test_empty_codebook():
    rows, scores = ExactRouter().route(normalize(torch.randn(4, 8)), torch.zeros(0, 8), 0.5)
    assert rows.tolist() == [-1] * 4 and torch.isinf(scores).all()


def test_agreement():
    assert agreement(torch.tensor([1, -1, 2]), torch.tensor([1, -1, 3])) == pytest.approx(2 / 3)
    assert agreement(torch.tensor([]), torch.tensor([])) == 1.0


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss-cpu not installed")
@pytest.mark.parametrize("ivf_min", [None, 2000])
def test_faiss_agrees(ivf_min):
    keys, q = data("copies", 4000, 200, 64)
    router = FaissRouter(64, k=64, ivf_min=ivf_min, nprobe=16)
    router.add(keys[:1000])
    router.add(keys[1000:])  # incremental; crosses ivf_min
    exact = ExactRouter().route(q, keys, 0.8)[0]
    assert agreement(exact, router.route(q, keys, 0.8)[0]) >= 0.95
    _, rand = data("random", 4000, 200, 64, seed=2)
    assert agreement(ExactRouter().route(rand, keys, 0.8)[0], router.route(rand, keys, 0.8)[0]) == 1
    router.remove([0], keys[1:])
    assert len(router) == 3999
