"""Comparisons the scorers share: SQuAD normalization, exact match, token accuracy, the
agreement of two greedy sequences, the geometric mean (OP) and small aggregation helpers."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

import torch


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, squeeze whitespace.

    Example:
        >>> normalize_answer("  The Eiffel-Tower!")
        'eiffeltower'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_accuracy(predicted: Sequence[int], reference: Sequence[int]) -> float:
    """Fraction of ``reference`` positions where ``predicted`` has the same token.

    Positions past the end of ``predicted`` score 0 (the reference's length-mismatch rule).
    """
    if len(reference) == 0:
        raise ValueError("empty reference")
    hits = sum(1 for i, tok in enumerate(reference) if i < len(predicted) and predicted[i] == tok)
    return hits / len(reference)


def agreement(edited: Sequence[int], base: Sequence[int], length: int) -> float:
    """Fraction of the first ``length`` positions where both sequences agree.

    A position neither sequence reaches (both stopped early) counts as agreement; one that
    only one of them reaches does not.
    """

    def pad(seq):
        seq = list(seq[:length])
        return seq + [None] * (length - len(seq))

    return sum(a == b for a, b in zip(pad(edited), pad(base))) / length


def geometric_mean(values: Sequence[float | None]) -> float | None:
    """``(v1 * ... * vk) ** (1/k)``, or None if any value is missing."""
    if not values or any(v is None for v in values):
        return None
    return math.prod(values) ** (1 / len(values))


def fraction_equal(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of positions where two equal-length id tensors agree (exact, not float32)."""
    return int((a == b).sum()) / len(b)


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def group(keys: Sequence[int], values: Sequence) -> dict[int, list]:
    groups: dict[int, list] = {}
    for k, v in zip(keys, values):
        groups.setdefault(k, []).append(v)
    return groups


def by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of indices with similar ``lengths`` (longest first), so padding is small.

    Every index appears once; the caller puts results back in the original order.

    Example:
        >>> by_length([3, 9, 4, 8], 2)
        [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
