"""Do answers still loop past the target after a paraphrase? (issue 30) A probe of value
training settings on the edits that did.

Takes a ``free_failures.py`` answers file, picks the records whose edit prompt or paraphrase
looped while routed to their own entry (the value said the target, not where it ends), adds
every 25th record of the same run for the hit rates, and edits them (one stream, micro-
batched, as the benchmark does) under each ``--setting NAME=JSON`` of HoReN settings. Per
setting: looping paraphrases among the picked records and among the others, hits on edit
prompts and paraphrases (free generation, 48 tokens), seconds per edit, mean steps.

    python benchmarks/free_failures.py --dataset zsre --n 1000 --set optimizer=lbfgs \\
        --set end_weight=1 --edits ~/.cache/horen/ff-zsre-lbfgs --out ff.json
    python benchmarks/end_weight.py --answers ff.json --threads 2 \\
        --setting end1='{"end_weight": 1}' --setting end3='{"end_weight": 3}' \\
        --setting end10='{}' --out results/convergence/end_weight_zsre.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

import horen
from horen.data import load_dataset
from horen.metrics.free import free_answers, is_degenerate, starts_with


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--answers", required=True, help="free_failures.py output (JSON)")
    ap.add_argument("--dataset", default="zsre")
    ap.add_argument("--setting", action="append", required=True, help="NAME=JSON settings")
    ap.add_argument("--every", type=int, default=25, help="also every k-th record")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    items = json.loads(Path(args.answers).read_text())
    items = items if isinstance(items, list) else items["answers"]
    n = max(x["record"] for x in items) + 1
    looped = sorted({x["record"] for x in items if x["degenerate"] and x["route"] == "own"})
    others = [i for i in range(0, n, args.every) if i not in looped]
    records = load_dataset(args.dataset, n=n).records
    picked = [records[i] for i in looped + others]
    model, tok = horen.load_model()
    out = {"command": "python " + shlex.join(sys.argv),
           "threads": args.threads, "machine": f"{platform.machine()}, "
           f"{torch.get_num_threads()} threads", "looped_records": looped,
           "other_records": others, "settings": {}}
    for pair in args.setting:
        name, _, blob = pair.partition("=")
        settings = json.loads(blob or "{}")
        ed = horen.HoReN(model, tok, **settings)
        try:
            began = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ed.apply_many(picked)
            seconds = (time.perf_counter() - began) / len(picked)
            prompts = [r.prompt for r in picked] + [r.rephrases[0] for r in picked]
            answers = free_answers(ed, prompts, 48)
            steps = sum(e["steps"] for e in ed.edits) / len(picked)
        finally:
            ed.close()
        k, m = len(looped), len(picked)
        loops = [is_degenerate(a) for a in answers]
        hits = [starts_with(a, r.target) for a, r in zip(answers, picked + picked)]
        row = {"settings": settings, "seconds_per_edit": round(seconds, 3),
               "mean_steps": round(steps, 1),
               "looped_paraphrases": f"{sum(loops[m:m + k])}/{k}",
               "other_paraphrases_looping": f"{sum(loops[m + k:])}/{m - k}",
               "edit_prompts_looping": f"{sum(loops[:m])}/{m}",
               "edit_prompt_hits": f"{sum(hits[:m])}/{m}",
               "paraphrase_hits": f"{sum(hits[m:])}/{m}"}
        out["settings"][name] = row
        print(name, json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
