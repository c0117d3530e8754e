"""L-BFGS for a batch of independent problems: one per row, solved together.

Value training minimizes, for each edit b of a micro-batch, a loss f_b(v_b) of its own value
v_b; one batched forward gives every f_b and one backward every gradient (the losses share no
variable). :func:`rowwise_lbfgs` runs L-BFGS on each row with its OWN curvature history, step
length and stopping, so a row converges exactly as it would alone, while every loss evaluation
is still one batched pass (the LM head read once for all rows).

Per row: the two-loop recursion gives the direction p = -H g from the last ``history`` pairs
(s, y) with H0 = (s·y / y·y) I; a bisection line search from t = 1 finds a step with
sufficient decrease, f(v + t p) <= f(v) + 1e-4 t g·p, and enough curvature, g(v + t p)·p >=
0.9 g·p (weak Wolfe: it multiplies t by ``expand`` while the slope stays steep, bisects past a
point without decrease). All rows' trial points are evaluated in one pass; a row whose
search is done waits. A trial point without sufficient decrease in any row gets no gradient
(no backward pass: about half an evaluation saved; the curvature test is only asked of points
that pass the decrease test). A pair with s·y <= 0 is not stored. The first step of a row has
no history: its length is 1 / |g|_1, torch's L-BFGS rule, unless ``first_step`` sets it.

With ``min_gain`` a row also stops when it is making too little progress to be worth its
evaluations: at the end of an iteration, if its best loss is above ``(1 - min_gain)`` times
its best of ``window`` evaluations before. A target that no value can fit (a paragraph-long
answer) otherwise spends every one of ``max_evals`` evaluations on the last percent of loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ARMIJO, WOLFE = 1e-4, 0.9
MAX_TRIALS = 12


def rowwise_lbfgs(
    x0: torch.Tensor,
    losses: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_evals: int,
    stop_loss: float,
    history: int = 10,
    first_step: float | None = None,
    expand: float = 2.0,
    min_gain: float = 0.0,
    window: int = 20,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Minimize each row's loss from ``x0`` ``(B, ...)``.

    Args:
        losses: ``(x, rows) -> (B,)`` per-row losses, differentiable (row b depends on
            ``x[b]`` only); only the rows of the mask ``rows`` are needed (others may be 0).
        max_evals: loss evaluations per row, at most (each one batched pass).
        stop_loss: a row stops once its loss is below this.
        history: (s, y) pairs kept per row.
        first_step: length of a row's first trial step along -g (while it has no history);
            None: torch's rule, 1 / |g|_1.
        expand: a trial step that satisfies the decrease but still descends steeply is
            followed by one this many times longer (until one is too long; then bisection).
        min_gain: a row stops once its best loss fell by less than this fraction over its
            last ``window`` evaluations (0: never; only ``stop_loss`` and ``max_evals``).
        window: see ``min_gain``.

    Returns:
        ``(best_x, stats)``: each row's best point seen, and ``stats`` with per-row tensors
        ``best`` (its loss), ``start`` (the loss at ``x0``), ``evals`` (evaluations it used),
        ``slow`` (stopped by ``min_gain``), and ``trace``: ``(T, 2, B)``, each row's evaluation
        count and best loss at the end of each of the T iterations (row 0: at ``x0``).
    """
    shape, n_b = x0.shape, x0.shape[0]
    x = x0.detach().reshape(n_b, -1).clone()
    dim = x.shape[1]
    s_hist = x.new_zeros(n_b, history, dim)
    y_hist = x.new_zeros(n_b, history, dim)
    rho = x.new_zeros(n_b, history)  # 0 marks an empty slot
    evals = torch.zeros(n_b, dtype=torch.long)
    active = torch.ones(n_b, dtype=torch.bool)

    def evaluate(points: torch.Tensor, rows: torch.Tensor):
        """Losses now (``(B,)`` on the CPU) and ``gradient()``, their gradient on demand: a
        trial too long for sufficient decrease in every row skips the backward pass."""
        points = points.detach().requires_grad_(True)
        f = losses(points.view(shape), rows)
        evals.add_(rows.long())

        def gradient() -> torch.Tensor:
            grad, = torch.autograd.grad(f[rows.to(f.device)].sum(), points)
            return grad.detach()

        return f.detach().cpu(), gradient

    f, gradient = evaluate(x, active)
    g = gradient()
    start, best, best_x = f.clone(), f.clone(), x.clone()
    trace = [torch.stack([evals.to(best), best.clone()])]
    slow = torch.zeros(n_b, dtype=torch.bool)
    active &= best >= stop_loss
    while active.any() and int(evals[active].max()) < max_evals:
        size = g.abs().sum(1, keepdim=True) if first_step is None else g.norm(dim=1, keepdim=True) / first_step
        steepest = -g / size.clamp_min(1e-12)  # a first step
        first = (rho.abs().sum(1) == 0).to(g.device)
        p = torch.where(first[:, None], steepest, -_two_loop(g, s_hist, y_hist, rho))
        slope = (g * p).sum(1).cpu()
        bad = active & ~(slope < 0)  # not a descent direction: forget the history, go downhill
        if bad.any():
            rho[bad], p[bad] = 0, steepest[bad]
            slope = (g * p).sum(1).cpu()
        lo, hi, t = torch.zeros(n_b), torch.full((n_b,), float("inf")), torch.ones(n_b)
        waiting = active.clone()
        new_x, new_f, new_g = x.clone(), f.clone(), g.clone()
        found = torch.zeros(n_b, dtype=torch.bool)  # an Armijo point is in new_x
        for _ in range(MAX_TRIALS):
            trial = x + t.to(x)[:, None] * p
            tf, gradient = evaluate(torch.where(waiting.to(x.device)[:, None], trial, new_x), waiting)
            armijo = waiting & (tf <= f + ARMIJO * t * slope)
            tg = gradient() if armijo.any() else torch.zeros_like(g)  # zeros: never read
            steep = (tg * p).sum(1).cpu() < WOLFE * slope  # still going down fast: go further
            new_x[armijo], new_f[armijo], new_g[armijo] = trial[armijo], tf[armijo], tg[armijo]
            found |= armijo
            done = armijo & ~steep
            too_far, too_short = waiting & ~armijo, armijo & steep
            hi[too_far], lo[too_short] = t[too_far], t[too_short]
            waiting &= ~done
            if not waiting.any() or int(evals[waiting].max()) >= max_evals:
                break
            t = torch.where(torch.isinf(hi), expand * lo, (lo + hi) / 2)
        stalled = active & ~found  # no acceptable step: this row is done
        moved = active & ~stalled
        s, y = new_x - x, new_g - g
        sy = (s * y).sum(1)
        keep = moved & (sy > 1e-10).cpu()
        if keep.any():
            s_hist[keep] = torch.roll(s_hist[keep], 1, dims=1)
            y_hist[keep] = torch.roll(y_hist[keep], 1, dims=1)
            rho[keep] = torch.roll(rho[keep], 1, dims=1)
            s_hist[keep, 0], y_hist[keep, 0], rho[keep, 0] = s[keep], y[keep], 1 / sy[keep]
        x[moved], f[moved], g[moved] = new_x[moved], new_f[moved], new_g[moved]
        better = moved & (f < best)
        best[better], best_x[better] = f[better], x[better]
        trace.append(torch.stack([evals.to(best), best.clone()]))
        if min_gain:
            gained = gained_little(torch.stack(trace), min_gain, window)
            slow |= active & ~stalled & (best >= stop_loss) & gained
        active &= ~stalled & ~slow & (best >= stop_loss) & (evals < max_evals)
    stats = {"best": best, "start": start, "evals": evals, "slow": slow,
             "trace": torch.stack(trace)}
    return best_x.view(shape), stats


def gained_little(trace: torch.Tensor, min_gain: float, window: int) -> torch.Tensor:
    """``(B,)``: rows whose best loss now (the last of ``trace``, ``(T, 2, B)`` as
    :func:`rowwise_lbfgs` returns it) is above ``(1 - min_gain)`` times their best at the last
    iteration end at least ``window`` evaluations before (False while a row has used fewer)."""
    count, best = trace[:, 0], trace[:, 1]
    early = count <= count[-1] - window
    before = torch.where(early, best, torch.full_like(best, float("inf"))).min(0).values
    return best[-1] > (1 - min_gain) * before


def _two_loop(g, s_hist, y_hist, rho) -> torch.Tensor:
    """H g for every row at once (newest pair in slot 0; empty slots have rho = 0)."""
    q = g.clone()
    alphas = []
    for i in range(s_hist.shape[1]):
        a = rho[:, i] * (s_hist[:, i] * q).sum(1)
        q -= a[:, None] * y_hist[:, i]
        alphas.append(a)
    yy = (y_hist[:, 0] * y_hist[:, 0]).sum(1)
    gamma = torch.where(rho[:, 0] > 0, 1 / (rho[:, 0] * yy).clamp_min(1e-30), torch.ones_like(yy))
    r = gamma[:, None] * q
    for i in reversed(range(s_hist.shape[1])):
        b = rho[:, i] * (y_hist[:, i] * r).sum(1)
        r += s_hist[:, i] * (alphas[i] - b)[:, None]
    return r
