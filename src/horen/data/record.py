"""The one edit record every dataset loader yields, and every editor and scorer consumes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EditRecord:
    """One fact to write into the model, with the probes used to score it.

    Args:
        prompt: the edit prompt x_t ("Who leads Zorblat Industries?").
        target: the new answer y_t ("Mira Quell"), without a leading space.
        rephrases: paraphrases x'_t of the prompt (Generalization probes).
        locality_prompt: an unrelated prompt l_t (Locality probe), or None.
        locality_answer: the answer text whose positions Locality compares, or None.
        subject: the subject span inside ``prompt`` (ROME/MEMIT need it), or None.
        extra: optional named probes (portability, sub-questions...), each a list of
            ``{"prompt": ..., "answer": ...}`` dicts.
        source: where the record came from ("zsre_mend_edit.json#12"), for error messages.
    """

    prompt: str
    target: str
    rephrases: list[str] = field(default_factory=list)
    locality_prompt: str | None = None
    locality_answer: str | None = None
    subject: str | None = None
    extra: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        where = f" ({self.source})" if self.source else ""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValueError(f"edit record{where}: 'prompt' must be a non-empty string")
        if not isinstance(self.target, str) or not self.target.strip():
            raise ValueError(f"edit record{where}: 'target' must be a non-empty string")
        if (self.locality_prompt is None) != (self.locality_answer is None):
            raise ValueError(
                f"edit record{where}: 'locality_prompt' and 'locality_answer' go together"
            )
