"""Single edits, as a user or the server makes them: Adam against L-BFGS value training.

Each ``--setting NAME=JSON`` is a set of HoReN settings (default: Adam, and L-BFGS).

The demo's ten fictional facts (chat template on), each edited alone (`editor.edit`), under
each optimizer: seconds per edit (median, mean), where they go (value training against the
rest), training steps, final loss, the value's norm, and whether the edit prompt and its
paraphrase answer with the target and stop cleanly (free generation).

    python benchmarks/value_optimizers.py --threads 2 --out results/value_optimizers_demo.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import horen
from horen.demo import FACTS
from horen.metrics import is_degenerate


def clean(answer: str, target: str) -> bool:
    return answer.lower().startswith(target.lower()) and not is_degenerate(answer)


def run(model, tok, settings: dict) -> dict:
    ed = horen.HoReN(model, tok, chat=True, **settings)
    training = {"s": 0.0}
    train = ed.train_value

    def timed(*args, **kwargs):
        began = time.perf_counter()
        out = train(*args, **kwargs)
        training["s"] += time.perf_counter() - began
        return out

    ed.train_value = timed
    seconds = []
    try:
        for prompt, target, _, _ in FACTS:
            began = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ed.edit(prompt, target)
            seconds.append(time.perf_counter() - began)
        n = len(FACTS)
        answers = ed.generate([f[0] for f in FACTS] + [f[2] for f in FACTS], max_new_tokens=24,
                              stop_at_newline=True)
        norms = [float(v.norm()) for v in ed.codebook.values[:n]]
        return {
            "median_s": round(statistics.median(seconds), 3),
            "mean_s": round(statistics.fmean(seconds), 3),
            "training_share": round(training["s"] / sum(seconds), 3),
            "steps": [e["steps"] for e in ed.edits],
            "loss": [e["loss"] for e in ed.edits],
            "value_norm": [round(x, 1) for x in norms],
            "edit_prompt_clean": sum(clean(a, f[1]) for a, f in zip(answers[:n], FACTS)),
            "paraphrase_clean": sum(clean(a, f[1]) for a, f in zip(answers[n:], FACTS)),
            "answers": answers,
        }
    finally:
        ed.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--setting", action="append", metavar="NAME=JSON",
                    help="a named set of HoReN settings (default: adam={} and "
                    "lbfgs={\"optimizer\": \"lbfgs\"})")
    ap.add_argument("--out", default="results/value_optimizers_demo.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = horen.load_model()
    result = {"command": "python " + " ".join(sys.argv), "threads": args.threads,
              "machine": platform.processor() or platform.machine(), "edits": len(FACTS),
              "optimizers": {}}
    variants = dict(pair.split("=", 1) for pair in args.setting or
                    ['adam={}', 'lbfgs={"optimizer": "lbfgs"}'])
    for opt, text in variants.items():
        result["optimizers"][opt] = {"settings": json.loads(text), **run(model, tok, json.loads(text))}
        r = result["optimizers"][opt]
        print(f"{opt}: median {r['median_s']} s/edit, training {r['training_share']:.0%}, "
              f"steps {r['steps']}, clean {r['edit_prompt_clean']}/{r['paraphrase_clean']}",
              flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
