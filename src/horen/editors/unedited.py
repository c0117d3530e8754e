"""The unedited model as a method: the reference row of a benchmark table.

``horen bench --method unedited`` logs every edit and changes nothing, so its scores are the
base model's own on the same records and checkpoints: Rel and Gen say how much of each new
target the base model already produces (a counterfactual target scores near 0), Loc is 1 by
construction. Read the other methods against it, above all on UnKE, where long-form scores
(BLEU, ROUGE, BERTScore) have no natural zero.
"""

from __future__ import annotations

from contextlib import contextmanager

from ..data.record import EditRecord
from .base import Editor, register


@register
class Unedited(Editor):
    """Logs edits, writes nothing: the base model behind the editor interface."""

    method = "unedited"

    def _apply(self, record: EditRecord) -> dict:
        return {"case": "unedited"}

    def _remove(self, edit: dict) -> None:
        pass  # nothing was written

    def _state(self):
        return {}, {}

    def _load_state(self, state, tensors) -> None:
        pass

    @contextmanager
    def disabled(self):
        yield self.model
