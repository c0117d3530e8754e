"""The base model's locality answers, cached across benchmark runs.

Every run scores locality against what the UNEDITED model says on the locality probes
(:func:`horen.metrics.base_reference`). Three methods benchmarked on the same model and data
need the same answers, and on a CPU the generation scorer's answers cost minutes, so they are
kept under ``$HOREN_CACHE/reference/``, one file per scorer, named by a hash of everything they
depend on: the model (a digest of all its weights), the scorer, the chat flag, the batch size
(padding changes float rounding) and the locality prompts and answers themselves.

Example:
    >>> ref = cached_base_reference(editor, records, ["tf", "gen"], 16)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import metrics
from ..data.record import EditRecord
from ..models import cache_dir

FORMAT = 2  # bump when the scorers change what the reference holds (2: per-answer budgets)


@torch.no_grad()
def model_digest(model: torch.nn.Module) -> str:
    """A short hash of every parameter's name, shape, dtype and value sums (one pass, no copy)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        total = flat.double().sum().item()
        sample = flat[:: max(1, flat.numel() // 4096)].double().abs().sum().item()
        h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|{total!r}|{sample!r}\n".encode())
    return h.hexdigest()[:16]


def default_root() -> Path:
    """``cache_dir() / "reference"`` (``$HOREN_CACHE/reference``)."""
    return cache_dir() / "reference"


def reference_key(
    editor,
    records: Sequence[EditRecord],
    scorer: str,
    batch_size: int,
    digest: str | None = None,
    free_max_tokens: int = metrics.FREE_BUDGET,
) -> str:
    """The cache key of one scorer's reference (see the module docstring).

    ``digest`` is the base model's :func:`model_digest`, computed here when not given.
    """
    if digest is None:
        with editor.disabled():
            digest = model_digest(editor.model)
    probes = [(r.locality_prompt, r.locality_answer) for r in records]
    payload = {
        "format": FORMAT,
        "model": digest,
        "scorer": scorer,
        "chat": bool(getattr(editor.config, "chat", False)),
        "batch_size": batch_size,
        "probes": probes,
    }
    if scorer == "free":
        payload["free_max_tokens"] = free_max_tokens
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def cached_base_reference(
    editor,
    records: Sequence[EditRecord],
    scorers: Sequence[str],
    batch_size: int = 16,
    root: str | os.PathLike | None = None,
    free_max_tokens: int = metrics.FREE_BUDGET,
) -> metrics.BaseReference:
    """:func:`horen.metrics.base_reference`, read from the cache where a run already made it.

    Args:
        editor, records, scorers, batch_size: as for :func:`~horen.metrics.base_reference`.
        root: the cache folder (default :func:`default_root`).
        free_max_tokens: the free-generation budget (part of that scorer's key).
    """
    root = Path(root) if root is not None else default_root()
    ref = metrics.BaseReference(*([None] * len(records) for _ in range(3)))
    with editor.disabled():
        digest = model_digest(editor.model)
    for scorer, attr in (("tf", "tf_loc"), ("gen", "gen_loc"), ("free", "free_loc")):
        if scorer not in scorers:
            continue
        key = reference_key(editor, records, scorer, batch_size, digest, free_max_tokens)
        path = root / f"{scorer}-{key}.pt"
        values = _read(path)
        if values is None:
            fresh = metrics.base_reference(editor, records, [scorer], batch_size, free_max_tokens)
            values = getattr(fresh, attr)
            root.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            torch.save(values, tmp)
            os.replace(tmp, path)
        setattr(ref, attr, values)
    return ref


def _read(path: Path) -> list | None:
    """A cached reference, or None if absent or unreadable (then it is recomputed)."""
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        return None
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        # a truncated or foreign file: recompute, do not fail the run
        warnings.warn(f"ignoring unreadable reference cache {path}: {err}", stacklevel=3)
        return None
