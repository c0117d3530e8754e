"""Which codebook edits end above a small loss, and why (issue 30): by target length, by how
new the target is to the model, plain vs chat.

Applies the first N records of a dataset one stream at a time (HoReN, micro-batched as the
benchmark does) under each setting given, and writes per setting: the share of edits whose
final loss is above 0.1 and above 1, mean steps, and those shares per target length (in
tokens) and per quartile of the unedited model's loss on the target ("novelty").

    python benchmarks/convergence.py --dataset zsre --n 300 --threads 2 \
        --setting paper='{"answer_end": "none", "max_steps": 50, "stop_loss": 0.01}' \
        --setting default='{}' --setting chat='{"chat": true}' \
        --out results/convergence/zsre_n300.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

import horen
from horen.data import load_dataset
from horen.editors import NotConvergedWarning
from horen.text import encode_pair


def _share(rows, key, limit):
    return round(sum(r[key] > limit for r in rows) / len(rows), 4) if rows else None


def summarize(rows: list[dict]) -> dict:
    return {
        "edits": len(rows),
        "above_0.1": _share(rows, "loss", 0.1),
        "above_1": _share(rows, "loss", 1.0),
        "mean_steps": round(statistics.mean(r["steps"] for r in rows), 2),
    }


def run(model, tok, records, settings: dict) -> dict:
    ed = horen.HoReN(model, tok, **settings)
    try:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotConvergedWarning)
            ed.apply_many(records)
        seconds = (time.perf_counter() - start) / len(records)
        rows = [{"loss": e["loss"], "steps": e["steps"], "loss_start": e["loss_start"],
                 "length": len(encode_pair(tok, r.prompt, r.target, ed.config.chat)[1])}
                for e, r in zip(ed.edits, records)]
    finally:
        ed.close()
    out = {"settings": settings, "seconds_per_edit": round(seconds, 3), **summarize(rows)}
    out["by_length"] = {}
    for length in sorted({min(r["length"], 6) for r in rows}):
        part = [r for r in rows if min(r["length"], 6) == length]
        out["by_length"]["6+" if length == 6 else str(length)] = summarize(part)
    starts = sorted(r["loss_start"] for r in rows)
    cuts = [starts[len(starts) * q // 4] for q in (1, 2, 3)]
    out["by_novelty_quartile"] = {}
    for q in range(4):
        lo = cuts[q - 1] if q else -1.0
        hi = cuts[q] if q < 3 else float("inf")
        part = [r for r in rows if lo < r["loss_start"] <= hi]
        out["by_novelty_quartile"][f"q{q + 1} (start loss <= {hi:.2f})" if q < 3 else "q4"] = \
            summarize(part) if part else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="zsre")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--setting", action="append", required=True, metavar="NAME=JSON")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = horen.load_model()
    records = load_dataset(args.dataset, n=args.n).records
    result = {"dataset": args.dataset, "n": len(records), "threads": args.threads,
              "command": "python benchmarks/convergence.py " + " ".join(
                  f"--{k} {v}" for k, v in (("dataset", args.dataset), ("n", args.n),
                                            ("threads", args.threads))) + " " + " ".join(
                  f"--setting '{s}'" for s in args.setting) + f" --out {args.out}",
              "settings": {}}
    for spec in args.setting:
        name, _, settings = spec.partition("=")
        result["settings"][name] = run(model, tok, records, json.loads(settings or "{}"))
        row = result["settings"][name]
        print(f"{name}: above 0.1 {row['above_0.1']}, above 1 {row['above_1']}, "
              f"mean steps {row['mean_steps']}, {row['seconds_per_edit']} s/edit")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
