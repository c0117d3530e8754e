"""Run only the layers that matter: the decoder layers from the edit site upward.

Value training changes nothing below decoder layer L (the one holding W), so the hidden
states entering layer L are computed once per edit (:meth:`Suffix.capture`, stopping the
forward there) and every training step runs layers L..end, the final norm and the LM head,
the head only at the positions whose logits the loss needs (:meth:`Suffix.logits`).

The value is added at one position (HoReN: the LAST prompt token; ROME/MEMIT: the subject's
last token), so no position before it changes either, in any layer. :meth:`Suffix.tail`
therefore runs the tokens before it once and keeps their keys and values (:class:`PrefixKV`);
a training step then runs layers L..end from that position on only (a few tokens instead of
the whole sequence). Rows are aligned so that every row's edited position sits in the same
column (left padding, explicit positions).

The decoder layers of every family in :data:`horen.models.ARCHITECTURES` take the same
keyword arguments at every depth (causal mask, rotary embeddings, positions), so the
arguments captured at layer L are replayed for the layers above it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .layer import StopForward
from .models import EditSite, get_module
from .text import Batch


class PrefixKV:
    """The keys and values of the prefix tokens at layers L..end, frozen.

    Passed to the decoder layers in place of their KV cache: ``update`` returns the prefix
    followed by the new tokens' keys/values and stores nothing, so every training step sees
    the same prefix and the autograd graph never reaches across steps.
    """

    def __init__(self, keys: dict[int, torch.Tensor], values: dict[int, torch.Tensor]) -> None:
        self.keys, self.values = keys, values

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys = torch.cat([self.keys[layer_idx], key_states], dim=-2)
        return keys, torch.cat([self.values[layer_idx], value_states], dim=-2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return next(iter(self.keys.values())).shape[-2]


class Tail(NamedTuple):
    """What :meth:`Suffix.tail` returns: replayable activations and the loss positions.

    ``captured`` is for :meth:`Suffix.logits`; ``prompt_mask`` ``(B, 1)`` marks column 0 (the
    edited position: for HoReN the last prompt token) as the prompt; ``rows``/``cols`` index
    the tail logits predicting ``labels`` (the batch's target tokens).
    """

    captured: tuple
    prompt_mask: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    labels: torch.Tensor


def align_at(batch: Batch, positions: list[int], pad_id: int):
    """``(input_ids, attention_mask, position_ids, P)`` with row i's ``positions[i]`` at column P.

    Rows are left-padded before that position and right-padded after their last real token;
    positions count real tokens only, so each row sees the positions it has in ``batch``.
    """
    lengths = batch.attention_mask.sum(1).tolist()
    last = max(positions)
    width = last + max(n - p for n, p in zip(lengths, positions))
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long, device=batch.input_ids.device)
    mask = torch.zeros_like(ids)
    for i, (n, p) in enumerate(zip(lengths, positions)):
        start = last - p
        ids[i, start : start + n] = batch.input_ids[i, :n]
        mask[i, start : start + n] = 1
    return ids, mask, (mask.cumsum(1) - 1).clamp_min(0), last


class Suffix:
    """The part of a causal LM from decoder layer ``site.layer`` to the logits.

    Args:
        model: a Hugging Face causal LM.
        site: where W lives (gives the layer index, the layer list and the final norm).
    """

    def __init__(self, model: nn.Module, site: EditSite) -> None:
        self.model = model
        self.first = site.layer
        self.layers = get_module(model, site.layers_path)[site.layer :]
        self.norm = get_module(model, site.final_norm)
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)

    @torch.no_grad()
    def capture(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **model_kwargs):
        """Hidden states and call arguments entering layer L (layers below run once, no grad)."""
        store = {}

        def hook(_module, args, kwargs):
            store["args"], store["kwargs"] = args, kwargs
            raise StopForward

        handle = self.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            kwargs = {"use_cache": False, **model_kwargs}
            self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        except StopForward:
            pass
        finally:
            handle.remove()
        args, kwargs = store["args"], dict(store["kwargs"])
        hidden = args[0] if args else kwargs.pop("hidden_states")
        return hidden.detach(), (args[1:] if args else ()), kwargs

    @torch.no_grad()
    def tail(self, batch: Batch, pad_id: int, positions: list[int] | None = None) -> Tail:
        """Activations entering layer L from each row's edited position onward only.

        The edited position is ``positions[i]`` (default: the last prompt token). The tokens
        before it run once through the whole model; their keys and values at layers L..end
        are kept in a :class:`PrefixKV` that replaces the cache in the captured call
        arguments. In the tail, every row's edited position is column 0.
        """
        from transformers import Cache, DynamicCache

        if positions is None:
            positions = (batch.prompt_mask.sum(1) - 1).tolist()
        ids, mask, pos, last = align_at(batch, positions, pad_id)
        cache = None
        if last > 0:
            cache = DynamicCache(config=self.model.config)
            self.model(
                input_ids=ids[:, :last],
                attention_mask=mask[:, :last],
                position_ids=pos[:, :last],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,  # only the keys and values are needed, not the prefix's logits
            )
        hidden, args, kwargs = self.capture(
            ids[:, last:], mask, position_ids=pos[:, last:], past_key_values=cache, use_cache=cache is not None
        )
        if cache is not None:
            above = range(self.first, self.first + len(self.layers))
            prefix = PrefixKV(
                {i: cache.layers[i].keys[..., :last, :] for i in above},
                {i: cache.layers[i].values[..., :last, :] for i in above},
            )
            args = tuple(prefix if isinstance(a, Cache) else a for a in args)
            kwargs = {k: prefix if isinstance(v, Cache) else v for k, v in kwargs.items()}
        rows, cols = batch.target_mask.nonzero(as_tuple=True)
        labels = batch.input_ids[rows, cols]
        cols = cols - 1 - torch.as_tensor(positions, device=cols.device)[rows]  # predicting col
        prompt_mask = torch.ones(len(ids), 1, dtype=torch.long, device=ids.device)
        return Tail((hidden, args, kwargs), prompt_mask, rows, cols, labels)

    def hidden(self, captured) -> torch.Tensor:
        """Final hidden states (before the norm) from a :meth:`capture`."""
        hidden, args, kwargs = captured
        for layer in self.layers:
            out = layer(hidden, *args, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def logits(self, captured, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Logits at positions ``(rows[i], cols[i])`` only: ``(len(rows), vocab)``."""
        hidden = self.hidden(captured)[rows, cols]
        logits = self.head(self.norm(hidden)).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
