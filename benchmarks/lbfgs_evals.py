"""How many loss evaluations does one edit cost? (issue 28) A probe of HoReN's L-BFGS settings.

A single edit through ``horen serve`` or ``horen edit`` trains its value alone, and its time is
about (loss evaluations) x (one pass through layers L..end and the LM head, ~28 ms on the
embedded model with 2 threads) + three prompt forwards. The evaluations are the part a
setting changes, and they are counted, not timed: the same on a busy or a quiet machine.
Under each ``--setting NAME=JSON`` of HoReN settings, every record is edited alone, one after
another into one edit set (the serve path: ``apply_many([r], micro_batch=1)``), chat on.
Per setting: evaluations per edit (total, median, max), final losses, edits above
``converge_loss``, and the mean value norm (a larger step may leave larger values).

    python benchmarks/lbfgs_evals.py --n 24 --threads 2 --setting base='{}' \\
        --setting first4_expand3='{"lbfgs_first": 4, "lbfgs_expand": 3}' \\
        --out results/convergence/lbfgs_evals.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import warnings
from pathlib import Path

import torch

import horen
from horen.data import load_dataset
from horen.demo import demo_records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=24, help="synthetic records (plus the 10 demo facts)")
    ap.add_argument("--method", default="horen")
    ap.add_argument("--setting", action="append", required=True, help="NAME=JSON settings")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", horen.NotConvergedWarning)
    records = load_dataset("synthetic", n=args.n).records + demo_records(10)
    model, tok = horen.load_model()
    out = {"command": "python " + shlex.join(sys.argv), "method": args.method,
           "records": f"synthetic first {args.n} + 10 demo facts, chat, one edit at a time",
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
           "settings": {}}
    for pair in args.setting:
        name, _, blob = pair.partition("=")
        settings = json.loads(blob or "{}")
        ed = horen.get_method(args.method)(model, tok, chat=True, **settings)
        try:
            for r in records:
                ed.apply_many([r], micro_batch=1)
            evals = [e["steps"] for e in ed.edits]
            losses = [e["loss"] for e in ed.edits]
            norms = ed.codebook.values.flatten(1).norm(dim=1).tolist()
            limit = ed.config.converge_loss
        finally:
            ed.close()
        row = {"settings": settings, "evals": evals, "evals_total": sum(evals),
               "evals_median": statistics.median(evals), "evals_max": max(evals),
               "above_converge_loss": sum(x > limit for x in losses),
               "loss_median": statistics.median(losses),
               "value_norm_mean": round(statistics.fmean(norms), 3)}
        out["settings"][name] = row
        print(f"{name:>20}: evals total {row['evals_total']:5d}  median {row['evals_median']:5.1f}  "
              f"max {row['evals_max']:4d}  above {limit}: {row['above_converge_loss']}  "
              f"value norm {row['value_norm_mean']:.1f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
