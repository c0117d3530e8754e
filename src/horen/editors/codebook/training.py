"""Value training for the codebook editors: each edit's value fitted to its target.

:func:`train_values` fits a batch of values, one per edit, each with its own early stop, by
Adam (:func:`train_adam`, the paper's) or by per-row L-BFGS (:func:`train_lbfgs`). The loss
is each row's target cross-entropy with the answer-end token(s) weighted by
:func:`end_weights`. The logits come from a *forward*, ``forward(values, sel=None) -> (rows,
logits, labels)``: :func:`tail_forward` runs layers L..end on a cached prefix,
:func:`full_forward` the whole model (the reference's cost; same results up to float
rounding). :class:`~horen.editors.codebook.editor.CodebookEditor` picks the forward and
calls :func:`train_values`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...layer import PromptContext
from ...optim import rowwise_lbfgs
from ...text import Batch


def train_values(init: torch.Tensor, forward, cfg, n_end: int):
    """Adam (or L-BFGS) on each row's mean target cross-entropy; ``init`` is ``(B, *value_shape)``.

    The answer-end token(s) (the last ``n_end`` of each row) count ``end_weight`` times in the
    sum, which is divided by the number of target tokens: the loss bounds the plain mean (so
    ``stop_loss`` asks the target's tokens what it always did) and the end token's own loss
    much more tightly. (Issue 30: an edit that ends its own answer can still run on after a
    paraphrase when the end token is one token among many; a weighted MEAN instead relaxed
    the target's tokens, ZsRE N = 1000 teacher-forced Gen 0.880 -> 0.856.)

    Every row has its own value and its own early stop; the summed loss gives each value
    exactly the gradient of its own row (Adam is per element), so a batch trains as its
    rows would alone. With ``plateau_decay`` a row that stops improving above
    ``converge_loss`` goes back to its best value and on with a smaller step (its own
    learning rate times ``plateau_decay``, at most 8 times), instead of stopping.

    Args:
        forward: ``forward(values, sel=None) -> (rows, logits, labels)`` (see the module).
        cfg: the editor's :class:`~horen.editors.codebook.editor.TrainConfig`.

    Returns:
        ``(values, stats)``: the kept values ``(B, ...)`` (the best seen with early
        stopping, else the last) and per-row ``{"steps", "loss_start", "loss",
        "converged"}`` (converged: the loss is at most ``converge_loss``).
    """
    rows, _, labels = forward(None)
    n_b = init.shape[0]
    weight = end_weights(rows, n_end, cfg.end_weight, n_b)
    count = torch.zeros(n_b, device=labels.device).index_add_(0, rows, torch.ones_like(weight))

    def row_losses(value, keep=None):
        """(B,) mean target loss per row; rows outside ``keep`` are not computed (0)."""
        sel = None if keep is None else keep.to(rows.device)[rows]
        _, logits, _ = forward(value, sel)
        picked, wanted = (rows, labels) if sel is None else (rows[sel], labels[sel])
        token_loss = F.cross_entropy(logits, wanted, reduction="none")
        token_loss = token_loss * (weight if sel is None else weight[sel])
        loss = torch.zeros(n_b, device=labels.device).index_add(0, picked, token_loss) / count
        if cfg.value_l2:  # on a copy: a plateau may reset rows of `value` before backward
            loss = loss + cfg.value_l2 * value.reshape(n_b, -1).clone().pow(2).mean(1).to(loss)
        return loss

    if cfg.optimizer == "lbfgs":
        return train_lbfgs(init, row_losses, cfg)
    return train_adam(init, row_losses, cfg)


def train_adam(init: torch.Tensor, row_losses, cfg):
    """Adam on ``row_losses(value, keep) -> (B,)``, each row with its own early stop and
    (with ``plateau_decay``) its own learning rate; returns ``(values, stats)``."""
    n_b = init.shape[0]
    value = init.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([value], lr=cfg.lr)
    best = torch.full((n_b,), float("inf"))
    best_value, start = value.detach().clone(), None
    stale, steps = torch.zeros(n_b, dtype=torch.long), torch.zeros(n_b, dtype=torch.long)
    active = torch.ones(n_b, dtype=torch.bool)
    scale = torch.ones(n_b)  # each row's learning rate, relative to cfg.lr
    min_scale = cfg.plateau_decay**8
    for step in range(1, cfg.max_steps + 1):
        per_row = row_losses(value, active)  # finished rows skip the LM head
        current = per_row.detach().cpu()
        start = current.clone() if start is None else start
        better = active & (current < best - 1e-4)
        best = torch.where(better, current, best)
        best_value[better] = value.detach()[better]
        stale = torch.where(better, 0, stale + active.long())
        steps += active.long()
        if cfg.early_stop:
            plateau = stale >= cfg.patience
            if cfg.plateau_decay:
                decay = active & plateau & (best > cfg.converge_loss) & (scale > min_scale)
                if decay.any():
                    scale[decay] *= cfg.plateau_decay
                    stale[decay] = 0
                    with torch.no_grad():
                        value[decay] = best_value[decay]
                    plateau &= ~decay
            active &= ~((best < cfg.stop_loss) | plateau)
            if not active.any():
                break
        opt.zero_grad(set_to_none=True)
        per_row[active.to(per_row.device)].sum().backward()
        if cfg.plateau_decay:
            before = value.detach().clone()
            opt.step()
            with torch.no_grad():  # a per-row learning rate: scale each row's Adam step
                value.copy_(before + scale.to(value).view(-1, *[1] * (value.dim() - 1))
                            * (value - before))
        else:
            opt.step()
    if not cfg.early_stop:  # the reference keeps the last value (loss: before its step)
        best, best_value = current, value.detach().clone()
    return best_value, row_stats(steps, start, best, cfg.converge_loss)


def train_lbfgs(init: torch.Tensor, row_losses, cfg):
    """Each row by its own L-BFGS, all rows' losses in one pass (:mod:`horen.optim`);
    ``max_steps`` bounds each row's loss evaluations, which are its ``steps``.

    The first step is as long as Adam's first at ``lr`` (every element moved by lr):
    torch's rule, 1 / |g|_1, starts some 1000x shorter on a 576-wide value and spends
    a third of an edit's evaluations doubling its way out (demo facts + 16 synthetic, chat:
    35.3 evaluations per edit against 26.6); ``lbfgs_first`` scales it, ``lbfgs_expand`` is
    the line search's growth factor, ``lbfgs_min_gain`` and ``lbfgs_window`` stop a row
    that gains too little for its evaluations (a target no value fits)."""
    first = cfg.lbfgs_first * cfg.lr * init[0].numel() ** 0.5
    values, st = rowwise_lbfgs(init, row_losses, cfg.max_steps, cfg.stop_loss, first_step=first,
                               expand=cfg.lbfgs_expand, history=cfg.lbfgs_history,
                               min_gain=cfg.lbfgs_min_gain, window=cfg.lbfgs_window)
    return values, row_stats(st["evals"], st["start"], st["best"], cfg.converge_loss)


def row_stats(steps, start, best, converge_loss: float) -> list[dict]:
    """Per row: ``{"steps", "loss_start", "loss", "converged"}``."""
    return [
        {
            "steps": int(steps[b]),
            "loss_start": round(float(start[b]), 5),
            "loss": round(float(best[b]), 5),
            "converged": bool(best[b] <= converge_loss),
        }
        for b in range(len(best))
    ]


def end_weights(rows: torch.Tensor, n_end: int, weight: float, n_rows: int) -> torch.Tensor:
    """Per target token (``rows``: its batch row, row-major as ``nonzero`` gives them), its
    weight in the loss: ``weight`` for each row's last ``n_end`` tokens (the answer end
    :func:`horen.text.make_batch` appends), 1 for the others."""
    out = torch.ones(len(rows), device=rows.device)
    if not n_end or weight == 1:
        return out
    count = torch.zeros(n_rows, dtype=torch.long, device=rows.device).index_add_(
        0, rows, torch.ones_like(rows))
    last = count.cumsum(0)[rows] - 1  # index of the row's last token
    from_end = last - torch.arange(len(rows), device=rows.device)
    return torch.where(from_end < n_end, weight, out)


def full_forward(model, layer, batch: Batch):
    """``forward(values, sel=None) -> (rows, logits, labels)`` through the whole ``model``
    with ``layer`` (the swapped-in codebook layer) forcing ``values`` (logits at the target
    positions, only those of ``sel``, a mask over them)."""
    rows, cols = batch.target_mask.nonzero(as_tuple=True)
    labels = batch.input_ids[rows, cols]

    def forward(values, sel=None):
        if values is None:
            return rows, None, labels
        with layer.prompt(PromptContext.of(batch, forced_values=values)):
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        r, c = (rows, cols) if sel is None else (rows[sel], cols[sel])
        return rows, out.logits[r, c - 1].float(), labels

    return forward


def tail_forward(suffix, layer, tail):
    """``forward(values, sel=None) -> (rows, logits, labels)`` through layers L..end only,
    on ``tail`` (a :meth:`horen.suffix.Suffix.tail`: the last prompt token and the targets
    over the cached prefix), ``layer`` forcing ``values``."""

    def forward(values, sel=None):
        """Logits at the target positions (only those of ``sel``, a mask over them)."""
        if values is None:
            return tail.rows, None, tail.labels
        r, c = (tail.rows, tail.cols) if sel is None else (tail.rows[sel], tail.cols[sel])
        with layer.prompt(PromptContext(tail.prompt_mask, forced_values=values)):
            logits = suffix.logits(tail.captured, r, c)
        return tail.rows, logits, tail.labels

    return forward
