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
import contextlib
import os
import time
from pathlib import Path

import torch

from . import metrics
from .bench.results import git_state, machine, peak_rss_mb, versions, write_json
from .data import load_dataset


def _sequences(records) -> int:
    """Sequences one scoring pass reads: edit prompt, rephrases and locality probe."""
    return sum(1 + len(r.rephrases) + (r.locality_prompt is not None) for r in records)


@contextlib.contextmanager
def head_everywhere(editor):
    """Inside this block ``editor.logits`` runs the LM head at every position, as the
    authors' scoring does, and slices the asked columns out afterwards."""
    full = editor.logits

    def every_position(batch, columns=None):
        logits = full(batch)
        return logits if columns is None else logits[:, columns.to(logits.device)]

    editor.logits = every_position
    try:
        yield editor
    finally:
        del editor.logits  # back to the class's method


def _phase(editor, records, reference, edit, batch_size):
    start = time.perf_counter()
    edit(editor, records)
    edit_s = time.perf_counter() - start
    label = "teacher_forced"
    scored = _timed_scores(metrics.score_teacher_forced, editor, records, reference, batch_size, label)
    return {
        "edit_seconds": round(edit_s, 3),
        "edits_per_second": round(len(records) / edit_s, 4),
        "eval_seconds": scored["seconds"],
        "eval_sequences_per_second": scored["sequences_per_second"],
        "peak_rss_mb_so_far": peak_rss_mb(),
        label: scored[label],
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
    with head_everywhere(reference_editor):
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
        **_provenance(f"horen bench-speed --n {n} --threads {threads} --batch-size {batch_size}",
                      fast_editor.device),
    }
    return _write(result, out, f"speed__zsre__n{n}.json")


def _provenance(command: str, device) -> dict:
    return {
        "command": command,
        "machine": {**machine(device), "loadavg_at_end": os.getloadavg()},
        "versions": versions(),
        "git": git_state(),
    }


def _write(result: dict, out: str | None, name: str) -> dict:
    if out:
        path = Path(out) / name
        write_json(path, result)
        result["path"] = str(path)
    return result


def _timed_scores(score, editor, records, reference, batch_size, label, **kwargs) -> dict:
    start = time.perf_counter()
    rows = score(editor, records, reference, batch_size, **kwargs)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 3),
        "sequences_per_second": round(_sequences(records) / seconds, 3),
        label: metrics.summarize(rows, label),
    }


def run_eval_speed(n: int = 200, threads: int = 2, batch_size: int = 32,
                   out: str | None = "results", model_name: str | None = None) -> dict:
    """Scoring only: the authors' one-prompt-at-a-time loops against horen's batched scorers,
    on one HoReN editor holding ``n`` ZsRE edits (horen defaults).

    Teacher-forced: one sequence at a time with the LM head at every position vs batches by
    length with the head at target positions. Generation: one prompt at a time WITHOUT the KV
    cache (how the authors' code scored HoReN and GRACE) vs batches with the cache. Both pairs
    must give the same scores.
    """
    import horen

    torch.set_num_threads(threads)
    model, tok = horen.load_model(model_name)
    records = load_dataset("zsre", n=n).records
    editor = horen.HoReN(model, tok)
    reference = metrics.base_reference(editor, records, ("tf", "gen"), batch_size)
    editor.apply_many(records)
    tf, gen = "teacher_forced", "generation"
    with head_everywhere(editor):
        tf_ref = _timed_scores(metrics.score_teacher_forced, editor, records, reference, 1, tf)
    tf_fast = _timed_scores(metrics.score_teacher_forced, editor, records, reference, batch_size, tf)
    gen_ref = _timed_scores(metrics.score_generation, editor, records, reference, 1, gen,
                            use_cache=False)
    gen_fast = _timed_scores(metrics.score_generation, editor, records, reference, batch_size, gen)
    editor.close()
    result = {
        "mode": "eval",
        "n": n,
        "model": getattr(model, "horen_name", model_name),
        "threads": threads,
        "batch_size": batch_size,
        "sequences": _sequences(records),
        "teacher_forced": {"reference": tf_ref, "fast": tf_fast},
        "generation": {"reference": gen_ref, "fast": gen_fast},
        "eval_speedup_teacher_forced": round(tf_ref["seconds"] / tf_fast["seconds"], 3),
        "eval_speedup_generation": round(gen_ref["seconds"] / gen_fast["seconds"], 3),
        "peak_rss_mb": peak_rss_mb(),
        **_provenance(f"horen bench-speed --eval-only --n {n} --threads {threads} "
                      f"--batch-size {batch_size}", editor.device),
    }
    return _write(result, out, f"speed_eval__zsre__n{n}.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=200, help="ZsRE edits")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (recorded)")
    parser.add_argument("--batch-size", type=int, default=32, help="fast-path scoring batch")
    parser.add_argument("--micro-batch", type=int, default=None, help="fast-path edit micro-batch")
    parser.add_argument("--max-steps", type=int, default=50, help="Adam steps per edit (both)")
    parser.add_argument("--model", help="default: the embedded SmolLM2")
    parser.add_argument("--out", default="results", help="where the JSON goes")
    parser.add_argument("--eval-only", action="store_true",
                        help="scoring loops only (teacher-forced and generation), no edit timing")


def run(args) -> int:
    if args.eval_only:
        r = run_eval_speed(args.n, args.threads, args.batch_size, args.out, args.model)
        for label in ("teacher_forced", "generation"):
            ref, fast = r[label]["reference"], r[label]["fast"]
            print(f"{label}: one at a time {ref['sequences_per_second']:.2f} seq/s, batched "
                  f"{fast['sequences_per_second']:.2f} seq/s, speedup "
                  f"{r['eval_speedup_' + label]:.2f}x; OP {ref[label]['op']:.4f} vs "
                  f"{fast[label]['op']:.4f}")
        print(f"{r['threads']} threads" + (f"; wrote {r['path']}" if "path" in r else ""))
        return 0
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
