"""Why free answers fail (issue 30): for every edit prompt and rephrase of a run, the free
answer after the edits, the entry it is routed to (its own, another edit's, none), the base
model's own free answer, and whether the edit converged. Prints a tally of the misses and the
degenerate answers by cause, and writes every answer to a JSON file to read.

    python benchmarks/free_failures.py --dataset zsre --n 1000 --edits ~/.cache/horen/ff-zsre
    python benchmarks/free_failures.py ... --set optimizer=lbfgs --edits DIR2

The edit set is saved to ``--edits`` (and reused when it is there), so a second look at the
same edits does not retrain them.
"""
import argparse
import collections
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

import horen
from horen.data import load_dataset
from horen.editors.base import parse_settings, saved_dir
from horen.metrics.free import free_answers, is_degenerate, starts_with

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--method", default="horen")
ap.add_argument("--dataset", default="zsre")
ap.add_argument("--n", type=int, default=1000)
ap.add_argument("--edits", required=True, help="edit set folder (made if absent)")
ap.add_argument("--set", action="append", default=[], help="editor setting key=value")
ap.add_argument("--tokens", type=int, default=48)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--out", default=None, help="JSON of every answer (default: beside --edits)")
args = ap.parse_args()
torch.set_num_threads(args.threads)

model, tok = horen.load_model()
records = load_dataset(args.dataset, n=args.n).records
edits = Path(args.edits).expanduser()
if saved_dir(edits) is not None:
    editor = horen.Editor.load(model, tok, edits)
else:
    editor = horen.get_method(args.method)(model, tok, **parse_settings(args.set))
    start = time.perf_counter()
    size = editor.micro_batch_size  # micro-batched as `horen bench` edits (same decisions)
    for at in tqdm(range(0, len(records), size), desc="editing", unit="batch"):
        editor.apply_many(records[at : at + size])
    print(f"{len(records)} edits in {time.perf_counter() - start:.0f} s")
    editor.save(edits)
log = editor.edits  # per edit: its log entry (loss, converged, entry)

asked = [(i, "rel", r.prompt) for i, r in enumerate(records)]
asked += [(i, "gen", p) for i, r in enumerate(records) for p in r.rephrases]
prompts = [p for *_, p in asked]
after = free_answers(editor, prompts, args.tokens)
with editor.disabled():
    before = free_answers(editor, prompts, args.tokens)
labels = editor.codebook.labels
rows = [row for start in range(0, len(prompts), 64)
        for row in editor.routes(prompts[start : start + 64]).tolist()]

out, tally = [], collections.Counter()
for (i, kind, prompt), a, b, row in zip(asked, after, before, rows):
    target = records[i].target
    route = "none" if row < 0 else ("own" if labels[row] == target else "other")
    entry = log[i] if i < len(log) else {}
    item = {"record": i, "kind": kind, "prompt": prompt, "target": target, "route": route,
            "answer": a, "base": b, "hit": starts_with(a, target),
            "degenerate": is_degenerate(a), "base_degenerate": is_degenerate(b),
            "loss": entry.get("loss"), "converged": entry.get("converged")}
    out.append(item)
    tally[(kind, "all")] += 1
    tally[(kind, "miss", route)] += not item["hit"]
    if item["degenerate"]:
        cause = ("base loops too" if item["base_degenerate"] and a == b else
                 f"routed {route}" + ("" if entry.get("converged", True) else ", unconverged"))
        tally[(kind, "degenerate", cause)] += 1
for key in sorted(tally, key=str):
    print(" / ".join(key), tally[key])
path = Path(args.out) if args.out else edits.with_suffix(".answers.json")
path.write_text(json.dumps(out, indent=1))
print("answers:", path)
