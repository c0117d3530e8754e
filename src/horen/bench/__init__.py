"""Benchmarks: apply N edits in sequence, score the model at checkpoints, write results JSON.

Pieces: :mod:`.config` (the settings and the ``horen bench`` flags), :mod:`.runner` (the
edit/score loop, protocols ``sequential`` and ``immediate``, resuming) and :mod:`.results`
(file names, versions, git state, machine, atomic writes). The scorers live in
:mod:`horen.metrics`; tables and plots from results files in :mod:`horen.report`.

Example:
    >>> from horen.bench import BenchConfig, run_bench
    >>> result = run_bench(BenchConfig(method="horen", dataset="zsre", n=10,
    ...                                checkpoints=[1, 10], threads=2))  # doctest: +SKIP
    >>> result["checkpoints"][-1]["teacher_forced"]["op"]  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json

from .config import PROTOCOLS, BenchConfig, add_arguments, config_from_args, default_checkpoints
from .runner import run_bench, select_records

__all__ = [
    "PROTOCOLS",
    "BenchConfig",
    "add_arguments",
    "config_from_args",
    "default_checkpoints",
    "run",
    "run_bench",
    "select_records",
]


def run(args: argparse.Namespace) -> int:
    """``horen bench``: run, then print the last checkpoint's scores and the results file."""
    cfg = config_from_args(args)
    result = run_bench(cfg)
    last = result["checkpoints"][-1]
    for label in result["scorers"]:
        scores = {k: round(v, 4) for k, v in last[label].items() if isinstance(v, float)}
        print(f"{label} @ n={last['n']}: {json.dumps(scores)}")
    print(f"{result['time_per_edit']:.3f} s/edit; results: {cfg.out}/{result['file']}")
    return 0
