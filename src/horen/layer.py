"""The wrapper that replaces W in the model, and the prompt context that drives it.

A :class:`CodebookLayer` holds the frozen ``base_layer`` (W) and is swapped in with
``setattr`` (it shows in ``print(model)`` and can be unwrapped). Its forward computes
``W(x)`` and then, for each row of the batch, asks its router which codebook entry the
prompt matches and adds (HoReN) or writes (GRACE) that entry's value at the LAST prompt token.
No match, or no codebook entry at all, leaves the output bit-identical to W's.

Which positions are "the prompt" is not something a layer can know, so callers say it with
:meth:`CodebookLayer.prompt`, a context manager taking the prompt-token mask. The routing
decision is made once, on the first forward inside the context (the prompt or the prefill
of generation), and reused: decode steps with the KV cache add nothing (the value's effect is
in the cache), full re-forwards without the cache re-apply the same decision at the same place.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .codebook import NO_MATCH


class StopForward(Exception):
    """Raised by a capture to end a forward pass early (nothing after it is needed)."""


@dataclass
class PromptContext:
    """What one batch's forward passes need to know about their prompts.

    Args:
        mask: ``(B, T_prompt)`` 1 at real prompt tokens (0 at padding, and at positions of
            a teacher-forced target that follows the prompt).
        reapply: True when later forwards re-run the whole sequence (no KV cache).
        pool_mask: ``(B, T_prompt)`` the tokens queries pool over (default: ``mask``).
        forced_values: during value training, apply these ``(B, ...)`` values without routing.
        capture: when set, the layer stores its input here and stops the forward.
    """

    mask: torch.Tensor
    pool_mask: torch.Tensor | None = None
    reapply: bool = True
    forced_values: torch.Tensor | None = None
    capture: bool = False
    decision: torch.Tensor | None = None
    captured: torch.Tensor | None = None
    calls: int = 0

    @classmethod
    def of(cls, batch, **kwargs) -> PromptContext:
        """The context of a :class:`horen.text.Batch`."""
        return cls(batch.prompt_mask, pool_mask=batch.pool_mask, **kwargs)

    @property
    def pooled(self) -> torch.Tensor:
        """The mask queries pool over."""
        return self.mask if self.pool_mask is None else self.pool_mask

    @property
    def last(self) -> torch.Tensor:
        """Index of the last prompt token of each row."""
        t = self.mask.shape[1]
        pos = torch.arange(t, device=self.mask.device).expand_as(self.mask)
        return torch.where(self.mask.bool(), pos, -1).max(dim=1).values


class WrapperLayer(nn.Module):
    """Base of the modules swapped in for W by the wrapper editors (codebook, WISE).

    Args:
        base_layer: the frozen W (``nn.Linear`` or GPT-2 ``Conv1D``).
        editor: the owning editor (kept as a plain attribute, not a submodule).
    """

    def __init__(self, base_layer: nn.Module, editor) -> None:
        super().__init__()
        self.base_layer = base_layer
        object.__setattr__(self, "editor", editor)  # not a submodule
        self.context: PromptContext | None = None
        self.enabled = True

    @contextmanager
    def prompt(self, ctx: PromptContext):
        """Route the forwards inside this block with ``ctx``'s prompt positions."""
        previous, self.context = self.context, ctx
        try:
            yield ctx
        finally:
            self.context = previous


class CodebookLayer(WrapperLayer):
    """W wrapped with a codebook.

    Args:
        base_layer: the frozen W (``nn.Linear`` or GPT-2 ``Conv1D``).
        editor: the owning editor; it provides ``route(acts, ctx) -> (B,) rows`` and
            ``delta(rows, acts_last, values) -> (B, d_out)``, and ``mode`` "add" or "replace".
    """

    def __init__(self, base_layer: nn.Module, editor) -> None:
        super().__init__(base_layer, editor)
        self.codebook = editor.codebook  # a child module: it moves with the model

    def extra_repr(self) -> str:
        return f"method={self.editor.method}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        ctx = self.context
        if ctx is not None and ctx.capture:
            ctx.captured = x.detach()
            raise StopForward
        if not self.enabled:
            return out
        if ctx is None:  # a bare model call: the whole input is the prompt
            if x.shape[1] == 1 or len(self.editor.codebook) == 0:
                return out
            ctx = PromptContext(torch.ones(x.shape[:2], device=x.device))
        ctx.calls += 1
        if ctx.calls > 1 and not ctx.reapply:
            return out  # a decode step with the cache on
        last = ctx.last
        if x.shape[1] <= int(last.max()):
            return out
        if ctx.forced_values is not None:
            rows = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            values = ctx.forced_values
        else:
            if ctx.decision is None:
                ctx.decision = self.editor.route(x[:, : ctx.mask.shape[1]], ctx)
            rows, values = ctx.decision, None
            if bool((rows == NO_MATCH).all()):
                return out
        hit = (rows != NO_MATCH).nonzero(as_tuple=True)[0]  # only these rows change at all
        pos = last[hit]
        delta = self.editor.delta(rows[hit], x[hit, pos], None if values is None else values[hit])
        out = out.clone()
        if self.editor.mode == "replace":
            out[hit, pos] = delta.to(out.dtype)
        else:
            out[hit, pos] = out[hit, pos] + delta.to(out.dtype)
        return out
