"""Where should an edit's L-BFGS give up? A trace of each edit's loss, and stop rules replayed.

HoReN's L-BFGS stops an edit at loss ``stop_loss`` or after ``max_steps`` loss evaluations.
A target that no single value fits (UnKE's paragraph-long answers) never reaches the first,
so it pays all 200 evaluations, most of them for the last percent of its loss. This probe
edits the first records of each dataset with HoReN's defaults and records, per edit, its
evaluation count and best loss at the end of every L-BFGS iteration. Rows of a micro-batch
are independent (each its own history and stop), so the rule "stop once the best loss fell
by less than ``gain`` over the last ``window`` evaluations" (``lbfgs_min_gain``,
``lbfgs_window``) can be replayed exactly on the trace: for each pair, the evaluations it
would spend and the loss it would keep, per dataset. Counts, not times.

    python benchmarks/lbfgs_stop.py --data zsre:64 --data counterfact:64 --data unke:8 \\
        --threads 2 --out results/convergence/lbfgs_stop.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import horen
from horen.data import load_dataset
from horen.editors.codebook import training
from horen.optim import gained_little


def traced_edits(model, tok, records, micro_batch: int, chat: bool) -> list[list[tuple]]:
    """Edit ``records`` with HoReN's defaults; each edit's ``[(evals, best loss), ...]``, one
    pair per L-BFGS iteration end while it ran (the first: its starting point)."""
    traces, real = [], training.rowwise_lbfgs

    def spy(*args, **kwargs):
        x, st = real(*args, **kwargs)
        trace = st["trace"]  # (T, 2, B)
        for b in range(trace.shape[2]):
            count, best = trace[:, 0, b].tolist(), trace[:, 1, b].tolist()
            kept = [(int(count[0]), best[0])]
            kept += [(int(c), v) for p, c, v in zip(count, count[1:], best[1:]) if c > p]
            traces.append(kept)
        return x, st

    training.rowwise_lbfgs = spy
    ed = horen.HoReN(model, tok, chat=chat)
    try:
        ed.apply_many(records, micro_batch=micro_batch)
        if ed.config.lbfgs_min_gain:
            raise SystemExit("the trace needs lbfgs_min_gain 0 (the rule is replayed on it)")
    finally:
        training.rowwise_lbfgs = real
        ed.close()
    return traces


def replay(trace: list[tuple], gain: float, window: int) -> tuple[int, float]:
    """(evaluations, kept loss) of one edit under the rule: the first iteration end at which
    :func:`horen.optim.gained_little`, the test ``rowwise_lbfgs`` applies, says stop."""
    seen = torch.tensor(trace, dtype=torch.float64).unsqueeze(-1)  # (T, 2, 1)
    for t in range(1, len(trace)):
        if gained_little(seen[: t + 1], gain, window)[0]:
            return trace[t]
    return trace[-1]


def summary(traces, gain: float, window: int, limit: float) -> dict:
    full = [t[-1] for t in traces]
    cut = [replay(t, gain, window) for t in traces]
    rises = [c[1] - f[1] for c, f in zip(cut, full)]
    return {
        "evals": sum(c[0] for c in cut),
        "evals_share": round(sum(c[0] for c in cut) / sum(f[0] for f in full), 4),
        "stopped_early": sum(c[0] < f[0] for c, f in zip(cut, full)),
        "lost_convergence": sum(c[1] > limit >= f[1] for c, f in zip(cut, full)),
        "loss_rise_max": round(max(rises), 5),
        "loss_rise_mean": round(statistics.fmean(rises), 5),
        "loss_median": round(statistics.median(c[1] for c in cut), 5),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", required=True, help="NAME:N, the first N records")
    ap.add_argument("--gains", default="0.005,0.01,0.02,0.05")
    ap.add_argument("--windows", default="10,20,40")
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--chat", action="store_true", help="chat template on (the bench: off)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", horen.NotConvergedWarning)
    model, tok = horen.load_model()
    limit = horen.HoReNConfig().converge_loss
    out = {"command": "python " + shlex.join(sys.argv), "method": "horen, its defaults",
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
           "micro_batch": args.micro_batch, "chat": args.chat, "converge_loss": limit,
           "data": {}}
    for spec in args.data:
        name, _, n = spec.partition(":")
        records = load_dataset(name, n=int(n)).records
        began = time.perf_counter()
        traces = traced_edits(model, tok, records, args.micro_batch, args.chat)
        seconds = time.perf_counter() - began
        full = [t[-1] for t in traces]
        row = {"n": len(records), "seconds": round(seconds, 1),
               "evals": [f[0] for f in full], "loss": [round(f[1], 5) for f in full],
               "traces": [[[c, round(b, 5)] for c, b in t] for t in traces], "rules": {}}
        print(f"{name}: {len(records)} edits, {sum(row['evals'])} evaluations, "
              f"{seconds:.0f} s, {sum(f[1] > limit for f in full)} above loss {limit}", flush=True)
        for window in map(int, args.windows.split(",")):
            for gain in map(float, args.gains.split(",")):
                s = summary(traces, gain, window, limit)
                row["rules"][f"gain={gain},window={window}"] = s
                print(f"  gain {gain:<6} window {window:3d}: evals {s['evals_share']:6.1%}  "
                      f"stopped early {s['stopped_early']:3d}  lost convergence "
                      f"{s['lost_convergence']:2d}  loss rise mean {s['loss_rise_mean']:.4f} "
                      f"max {s['loss_rise_max']:.4f}", flush=True)
        out["data"][name] = row
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
