"""The base of the editors that keep the base model frozen: they swap a
:class:`~horen.layer.WrapperLayer` in for W and never change W's weights (the codebook
editors of :mod:`horen.editors.codebook`, the side memories of :mod:`horen.editors.memory`)."""

from __future__ import annotations

from contextlib import contextmanager

from ..layer import PromptContext, WrapperLayer
from ..models import get_module, set_module
from .base import Editor


class SwappedLayerEditor(Editor):
    """Base of the editors that swap a :class:`~horen.layer.WrapperLayer` in for W
    (``self.layer``): the unedited model, unwrapping, and the prompt context."""

    layer: WrapperLayer

    @contextmanager
    def disabled(self):
        previous, self.layer.enabled = self.layer.enabled, False
        try:
            yield self.model
        finally:
            self.layer.enabled = previous

    def close(self) -> None:
        """Put the original W back into the model."""
        if get_module(self.model, self.site.path) is self.layer:
            set_module(self.model, self.site.path, self.layer.base_layer)

    def prompt_context(self, ctx: PromptContext):
        return self.layer.prompt(ctx)
