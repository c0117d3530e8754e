"""horen.optim.rowwise_lbfgs: each row solved as it would be alone, in one batched pass."""

from __future__ import annotations

import pytest
import torch

from horen.optim import rowwise_lbfgs


def rosenbrock(scale: torch.Tensor):
    """Per-row Rosenbrock in 4-d, each row's loss scaled by its own factor (conditioning)."""

    def losses(x, rows=None):
        a, b = x[:, :-1], x[:, 1:]
        return scale * ((1 - a) ** 2 + 10 * (b - a**2) ** 2).sum(1)

    return losses


def test_each_row_converges_as_it_would_alone():
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, dtype=torch.float64)
    scale = torch.tensor([1.0, 30.0, 0.05], dtype=torch.float64)
    x, st = rowwise_lbfgs(x0, rosenbrock(scale), max_evals=400, stop_loss=1e-10)
    assert torch.allclose(x, torch.ones_like(x), atol=1e-4)
    assert (st["best"] < 1e-10).all() and (st["start"] > st["best"]).all()
    for b in range(3):
        alone, one = rowwise_lbfgs(x0[b : b + 1], rosenbrock(scale[b : b + 1]), 400, 1e-10)
        assert torch.allclose(alone[0], x[b]) and one["evals"][0] == st["evals"][b]
    assert len(set(st["evals"].tolist())) > 1  # rows stop on their own


def test_a_row_at_its_minimum_or_out_of_budget_stops():
    x0 = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, 2.0, -1.0, 2.0]], dtype=torch.float64)
    x, st = rowwise_lbfgs(x0, rosenbrock(torch.ones(2, dtype=torch.float64)), 5, 1e-12)
    assert st["evals"].tolist()[0] == 1 and torch.equal(x[0], x0[0])
    assert st["evals"][1] <= 5 and st["best"][1] < st["start"][1]


def test_first_step_sets_the_first_trial_length():
    """The first trial point lies ``first_step`` from x0 along -g (torch's rule: 1 / |g|_1)."""
    x0 = torch.zeros(1, 8, dtype=torch.float64)
    target = torch.arange(1.0, 9.0, dtype=torch.float64)
    seen = []

    def losses(x, rows=None):
        seen.append(x.detach().clone())
        return ((x - target) ** 2).sum(1)

    rowwise_lbfgs(x0, losses, max_evals=2, stop_loss=0.0, first_step=3.0)
    assert torch.allclose((seen[1] - x0).norm(), torch.tensor(3.0, dtype=torch.float64))
    assert torch.allclose((seen[1] - x0) / 3.0, target / target.norm())
    seen.clear()
    rowwise_lbfgs(x0, losses, max_evals=2, stop_loss=0.0)
    g = -2 * target
    assert torch.allclose(seen[1] - x0, -g / g.abs().sum())


def test_a_steep_step_is_followed_by_one_expand_times_longer():
    """Far from the minimum along -g the decrease holds and the slope stays steep: the trial
    lengths grow by ``expand`` (1, 2, 4 ... or 1, 5, 25 ...), and a larger factor reaches a
    distant minimum in fewer evaluations."""
    x0 = torch.zeros(1, 4, dtype=torch.float64)
    target = torch.full((4,), 100.0, dtype=torch.float64)
    seen = []

    def losses(x, rows=None):
        seen.append(x.detach().clone())
        return ((x - target) ** 2).sum(1)

    counts = {}
    for expand in (2.0, 5.0):
        seen.clear()
        _, st = rowwise_lbfgs(x0, losses, max_evals=50, stop_loss=1e-6, first_step=1.0,
                              expand=expand)
        lengths = [float((p - x0).norm()) for p in seen[1:4]]
        assert lengths == pytest.approx([1.0, expand, expand**2])
        assert st["best"][0] < 1e-6
        counts[expand] = int(st["evals"][0])
    assert counts[5.0] < counts[2.0]


def test_the_codebook_editors_pass_their_lbfgs_settings(monkeypatch):
    from conftest import build

    from horen import HoReN
    from horen.editors.codebook import training

    seen = {}
    real = training.rowwise_lbfgs

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "rowwise_lbfgs", spy)
    model, tok = build("llama")
    ed = HoReN(model, tok, lr=0.5, lbfgs_first=3.0, lbfgs_expand=4.0, lbfgs_history=7,
               lbfgs_min_gain=0.03, lbfgs_window=9, max_steps=3)
    ed.edit("Who leads Zorblat Industries?", "Mira Quell")
    width = ed.codebook.values.shape[-1]
    assert seen["first_step"] == pytest.approx(3.0 * 0.5 * width**0.5)
    assert seen["expand"] == 4.0 and seen["history"] == 7
    assert seen["min_gain"] == 0.03 and seen["window"] == 9
    with pytest.raises(ValueError, match="lbfgs_min_gain"):
        HoReN(model, tok, lbfgs_min_gain=1.0)


def test_a_trial_without_decrease_gets_no_backward_pass():
    """A first step 100x too long fails the decrease test: its loss is evaluated, its gradient
    is not (one fewer backward than evaluations), and the minimum is reached all the same."""
    target = torch.arange(1.0, 5.0, dtype=torch.float64)
    backward = []

    def losses(x, rows=None):
        x = x * 1.0
        x.register_hook(lambda grad: backward.append(1))
        return ((x - target) ** 2).sum(1)

    x0 = torch.zeros(1, 4, dtype=torch.float64)
    x, st = rowwise_lbfgs(x0, losses, max_evals=50, stop_loss=1e-12,
                          first_step=100 * target.norm().item())
    assert torch.allclose(x[0], target)
    assert len(backward) < int(st["evals"][0])


def test_min_gain_stops_a_row_that_gains_too_little_and_no_other():
    """Row 0's loss creeps toward a floor it never reaches (1 + sum exp(-x)): without
    ``min_gain`` it spends evaluations on the last digits; with it, it stops once a window of
    evaluations gains under 1%, keeping a loss within 1% of the long run's. Row 1, a quadratic
    solved in a few evaluations, runs exactly as it does without the rule."""
    target = torch.arange(1.0, 5.0, dtype=torch.float64)

    def losses(x, rows=None):
        creep = 1 + torch.exp(-x[0]).sum()
        bowl = ((x[1] - target) ** 2).sum()
        return torch.stack([creep, bowl])

    x0 = torch.zeros(2, 4, dtype=torch.float64)
    x_all, full = rowwise_lbfgs(x0, losses, max_evals=300, stop_loss=1e-12)
    x_cut, cut = rowwise_lbfgs(x0, losses, max_evals=300, stop_loss=1e-12, min_gain=0.01,
                               window=5)
    assert cut["slow"].tolist() == [True, False] and not full["slow"].any()
    assert cut["evals"][0] < full["evals"][0] / 2
    assert cut["best"][0] <= 1.01 * full["best"][0]
    assert torch.equal(x_cut[1], x_all[1]) and cut["evals"][1] == full["evals"][1]
    trace = cut["trace"]  # (T, 2, B): evaluation counts rise; best losses never do
    assert trace[0, 0].tolist() == [1, 1] and (trace[1:, 0] >= trace[:-1, 0]).all()
    assert (trace[1:, 1] <= trace[:-1, 1]).all() and trace[-1, 1, 0] == cut["best"][0]
