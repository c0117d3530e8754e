"""Routing math against hand-computed cases, and codebook storage."""

import math

import pytest
import torch

from horen.codebook import NO_MATCH, Codebook, normalize, pool, refine, route_cosine, route_euclid


def test_pool_last_ceil_rho_n_real_tokens():
    acts = torch.arange(5, dtype=torch.float32)[None, :, None].repeat(2, 1, 1)  # values 0..4
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]])  # row 2: left pad + a target pos
    out = pool(acts, mask, 0.6)
    assert out[0, 0] == pytest.approx((2 + 3 + 4) / 3)  # ceil(0.6*5)=3 -> tokens 2,3,4
    assert out[1, 0] == pytest.approx((2 + 3) / 2)  # n=3, ceil(1.8)=2 -> tokens 2,3
    assert pool(acts, mask, 0.01)[0, 0] == 4  # k >= 1: the last token
    assert pool(acts, mask, 1.0)[1, 0] == pytest.approx(2.0)


def test_refine_one_damped_normalized_step_by_hand():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = normalize(torch.tensor([[1.0, 1.0]]) + torch.tensor([[0.5, 0.0]]))
    beta, alpha = 2.0, 0.1
    s = q[0] @ keys.T
    p = torch.softmax(beta * s, 0)
    xi = normalize(p @ keys)
    expect = normalize((1 - alpha) * q[0] + alpha * xi)
    got = refine(q, keys, beta=beta, alpha=alpha, steps=1)
    assert torch.allclose(got[0], expect, atol=1e-6)
    assert math.isclose(got.norm().item(), 1.0, rel_tol=1e-6)
    assert torch.equal(refine(q, keys, steps=0), q)


def test_refine_stops_at_fixed_point():
    keys = normalize(torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(refine(keys.clone(), keys, steps=3), keys)


def test_more_steps_pull_query_toward_keys():
    keys = torch.eye(3)
    q = normalize(torch.tensor([[0.6, 0.5, 0.62]]))
    one = refine(q, keys, steps=1) @ keys.T
    many = refine(q, keys, steps=50) @ keys.T
    assert many.max() > one.max() > (q @ keys.T).max()


def test_route_cosine_threshold_is_strict():
    keys = normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    q = normalize(torch.tensor([[1.0, 0.1], [1.0, 1.0]]))
    idx, score = route_cosine(q, keys, tau=0.9)
    assert idx.tolist() == [0, NO_MATCH]
    idx, _ = route_cosine(q, keys, tau=float(score[0]))
    assert idx[0] == NO_MATCH  # score must be > tau
    idx, score = route_cosine(q, keys[:0], 0.5)
    assert idx.tolist() == [NO_MATCH, NO_MATCH]


def test_route_euclid_radius():
    keys = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    radii = torch.tensor([1.0, 0.5])
    q = torch.tensor([[0.5, 0.0], [9.0, 0.0], [5.0, 0.0]])
    idx, dist = route_euclid(q, keys, radii)
    assert idx.tolist() == [0, NO_MATCH, NO_MATCH]
    assert dist.tolist() == pytest.approx([0.5, 1.0, 5.0])


def test_codebook_grows_geometrically_and_removes_with_stable_ids():
    cb = Codebook(3, (2,))
    for i in range(20):
        cb.add(torch.full((3,), float(i)), torch.full((2,), float(i)), f"t{i}")
    assert len(cb) == 20 and cb._keys.shape[0] == 32
    cb.remove(cb.row(5))
    assert len(cb) == 19 and 5 not in cb.ids and cb.keys[5, 0] == 6
    assert cb.labels[5] == "t6" and cb.values[5, 0] == 6
    row = cb.add(torch.zeros(3), torch.zeros(2), "new")
    assert cb.ids[row] == 20  # ids are never reused
    with pytest.raises(KeyError):
        cb.row(5)


def test_reserve_and_shrink_keep_the_entries():
    cb = Codebook(3, (2,))
    cb.reserve(100)
    assert cb.capacity == 100
    for i in range(40):
        cb.add(torch.full((3,), float(i)), torch.full((2,), -float(i)), f"t{i}", radius=i)
    assert cb.capacity == 100  # no regrowth inside the reservation
    keys, values, radii = cb.keys.clone(), cb.values.clone(), cb.radii.clone()
    cb.shrink()
    assert cb.capacity == 40
    assert torch.equal(cb.keys, keys) and torch.equal(cb.values, values)
    assert torch.equal(cb.radii, radii)
    cb.add(torch.zeros(3), torch.zeros(2), "more")
    assert cb.capacity == 80 and len(cb) == 41


def test_the_codebook_is_part_of_the_model_and_stays_float32(tiny):
    """A child of the wrapper layer: listed in the model, moved by ``model.to``, float32 under
    ``model.double()`` / ``.half()``, and not in the model's state_dict (the edit set saves it)."""
    from horen import HoReN

    model, tok = tiny
    ed = HoReN(model, tok, max_steps=2)
    ed.edit("Who leads Zorblat Industries?", "Mira Quell")
    name = ed.site.path + ".codebook"
    assert dict(model.named_modules())[name] is ed.codebook and "entries=1" in repr(model)
    keys = ed.codebook.keys.clone()
    model.double()
    assert ed.codebook.keys.dtype == torch.float32 and torch.equal(ed.codebook.keys, keys)
    assert ed.routes(["Who leads Zorblat Industries?"]).tolist() == [0]
    model.to("meta")
    assert ed.codebook.keys.device.type == "meta" and ed.codebook.keys.dtype == torch.float32
    assert not any(k.startswith(name) for k in model.state_dict())
