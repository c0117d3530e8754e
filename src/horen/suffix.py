"""Run only the layers that matter: the decoder layers from the edit site upward.

Value training changes nothing below decoder layer L (the one holding W), so the hidden
states entering layer L are computed once per edit (:meth:`Suffix.capture`, stopping the
forward there) and every training step runs layers L..end, the final norm and the LM head,
the head only at the positions whose logits the loss needs (:meth:`Suffix.logits`).

The decoder layers of every family in :data:`horen.models.ARCHITECTURES` take the same
keyword arguments at every depth (causal mask, rotary embeddings, positions), so the
arguments captured at layer L are replayed for the layers above it.
"""

from __future__ import annotations

import torch
from torch import nn

from .layer import StopForward
from .models import EditSite, get_module


class Suffix:
    """The part of a causal LM from decoder layer ``site.layer`` to the logits.

    Args:
        model: a Hugging Face causal LM.
        site: where W lives (gives the layer index, the layer list and the final norm).
    """

    def __init__(self, model: nn.Module, site: EditSite) -> None:
        self.model = model
        self.layers = get_module(model, site.layers_path)[site.layer :]
        self.norm = get_module(model, site.final_norm)
        self.head = model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)

    @torch.no_grad()
    def capture(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Hidden states and call arguments entering layer L (layers below run once, no grad)."""
        store = {}

        def hook(_module, args, kwargs):
            store["args"], store["kwargs"] = args, kwargs
            raise StopForward

        handle = self.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except StopForward:
            pass
        finally:
            handle.remove()
        args, kwargs = store["args"], dict(store["kwargs"])
        hidden = args[0] if args else kwargs.pop("hidden_states")
        return hidden.detach(), (args[1:] if args else ()), kwargs

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
