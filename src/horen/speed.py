"""``horen bench-speed``: the reference loop against horen's fast path, in one run.

Both paths edit the embedded model with the same ZsRE edits and the same HoReN settings
(50 Adam steps per edit, no early stop: what the authors' code runs), so they compute the same
codebook and their scores must agree:

* reference: one edit at a time, every step through the FULL model at batch 1 (the reference
  algorithm's cost), then teacher-forced scoring one sequence at a time;
* fast: micro-batched value training through the layers from the edit site up only, on the
  last prompt token and the targets (``CodebookEditor.apply_many``), then batched, padded
  scoring with the LM head only where targets are predicted;
* default: the fast path with horen's default settings (early stopping), the way
  ``horen edit`` and ``horen bench`` run; it computes slightly different values, so its OP is
  reported beside the reference's.

It prints edits per second and evaluation sequences per second for each and the ratios to the
reference, peak memory, and the teacher-forced OP of each; the JSON (``--out``) holds the same
with ``edit_speedup``, ``eval_speedup``, ``op_reference``, ``op_fast``, ``n`` and, for the
default settings, ``edit_speedup_default`` and ``op_default``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from . import metrics
from .bench.results import git_state, machine, peak_rss_mb, versions, write_json
from .data import load_dataset


def _phase(editor, records, reference, edit, batch_size):
    start = time.perf_counter()
    edit(editor, records)
    edit_s = time.perf_counter() - start
    start = time.perf_counter()
    rows = metrics.score_teacher_forced(editor, records, reference, batch_size)
    eval_s = time.perf_counter() - start
    summary = metrics.summarize(rows, "teacher_forced")
    sequences = sum(1 + len(r.rephrases) + (r.locality_prompt is not None) for r in records)
    return {
        "edit_seconds": round(edit_s, 3),
        "edits_per_second": round(len(records) / edit_s, 4),
        "eval_seconds": round(eval_s, 3),
        "eval_sequences_per_second": round(sequences / eval_s, 3),
        "peak_rss_mb_so_far": peak_rss_mb(),
        "teacher_forced": summary,
    }


def run_speed(n: int = 200, threads: int = 2, batch_size: int = 32, micro_batch: int | None = None,
              max_steps: int = 50, out: str | None = "results", model_name: str | None = None) -> dict:
    import horen

    torch.set_num_threads(threads)
    model, tok = horen.load_model(model_name)
    records = load_dataset("zsre", n=n).records
    settings = {"early_stop": False, "max_steps": max_steps}

    reference_editor = horen.HoReN(model, tok, truncate=False, **settings)
    reference = metrics.base_reference(reference_editor, records, ("tf",), batch_size)

    def one_at_a_time(editor, recs):
        for r in recs:
            editor.apply(r)

    # the reference scores like the authors' code: the LM head at every position
    full = reference_editor.logits

    def every_position(batch, columns=None):
        logits = full(batch)
        return logits if columns is None else logits[:, columns.to(logits.device)]

    reference_editor.logits = every_position
    ref = _phase(reference_editor, records, reference, one_at_a_time, 1)
    reference_editor.close()
    fast_editor = horen.HoReN(model, tok, micro_batch=micro_batch, **settings)
    fast = _phase(fast_editor, records, reference, lambda e, r: e.apply_many(r), batch_size)
    fast_editor.close()
    default_editor = horen.HoReN(model, tok, micro_batch=micro_batch)
    default = _phase(default_editor, records, reference, lambda e, r: e.apply_many(r), batch_size)
    default_editor.close()
    same = [a["case"] == b["case"] and a["entry"] == b["entry"]
            for a, b in zip(reference_editor.edits, fast_editor.edits)]
    steps = [e["steps"] for e in default_editor.edits if "steps" in e]
    result = {
        "n": n,
        "model": getattr(model, "horen_name", model_name),
        "threads": threads,
        "batch_size": batch_size,
        "micro_batch": micro_batch or fast_editor.micro_batch_size,
        "settings": settings,
        "reference": ref,
        "fast": fast,
        "default": {**default, "settings": "horen defaults (early stop)",
                    "mean_steps": round(sum(steps) / max(1, len(steps)), 2)},
        "edit_speedup": round(fast["edits_per_second"] / ref["edits_per_second"], 3),
        "edit_speedup_default": round(default["edits_per_second"] / ref["edits_per_second"], 3),
        "eval_speedup": round(fast["eval_sequences_per_second"] / ref["eval_sequences_per_second"], 3),
        "op_reference": ref["teacher_forced"]["op"],
        "op_fast": fast["teacher_forced"]["op"],
        "op_default": default["teacher_forced"]["op"],
        "same_codebook_decisions": all(same),
        "peak_rss_mb": peak_rss_mb(),
        "command": f"horen bench-speed --n {n} --threads {threads} --batch-size {batch_size}",
        "machine": {**machine(fast_editor.device), "loadavg_at_end": os.getloadavg()},
        "versions": versions(),
        "git": git_state(),
    }
    if out:
        path = Path(out) / f"speed__zsre__n{n}.json"
        write_json(path, result)
        result["path"] = str(path)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=200, help="ZsRE edits")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (recorded)")
    parser.add_argument("--batch-size", type=int, default=32, help="fast-path scoring batch")
    parser.add_argument("--micro-batch", type=int, default=None, help="fast-path edit micro-batch")
    parser.add_argument("--max-steps", type=int, default=50, help="Adam steps per edit (both)")
    parser.add_argument("--model", help="default: the embedded SmolLM2")
    parser.add_argument("--out", default="results", help="where the JSON goes")


def run(args) -> int:
    r = run_speed(args.n, args.threads, args.batch_size, args.micro_batch, args.max_steps,
                  args.out, args.model)
    ref, fast = r["reference"], r["fast"]
    print(f"{'':<10}{'edits/s':>10}{'eval seq/s':>12}{'OP (tf)':>9}")
    print(f"{'reference':<10}{ref['edits_per_second']:>10.3f}{ref['eval_sequences_per_second']:>12.2f}"
          f"{r['op_reference']:>9.4f}")
    print(f"{'fast':<10}{fast['edits_per_second']:>10.3f}{fast['eval_sequences_per_second']:>12.2f}"
          f"{r['op_fast']:>9.4f}")
    d = r["default"]
    print(f"{'default':<10}{d['edits_per_second']:>10.3f}{d['eval_sequences_per_second']:>12.2f}"
          f"{r['op_default']:>9.4f}  (early stop, {d['mean_steps']} steps/edit on average)")
    print(f"edit speedup {r['edit_speedup']:.2f}x (defaults: {r['edit_speedup_default']:.2f}x), "
          f"eval speedup {r['eval_speedup']:.2f}x, "
          f"same codebook decisions: {r['same_codebook_decisions']}, peak RSS {r['peak_rss_mb']:.0f} MB, "
          f"{r['threads']} threads" + (f"; wrote {r['path']}" if "path" in r else ""))
    return 0
