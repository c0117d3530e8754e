"""Running one benchmark: :func:`run_bench`.

The loop: pick the records (file order, or shuffled with the seed), load the model, build
the editor, compute the base model's locality answers once (:func:`horen.metrics.base_reference`,
cached across runs by :mod:`.reference`),
then apply edits 1..N one at a time. Under ``sequential`` the edited model f_n is scored on
records 1..n at each checkpoint n; under ``immediate`` each record is scored right after its
own edit and checkpoint n reports the mean over records 1..n.

At every checkpoint the results file is rewritten (``"complete": false`` until the end) and,
beside it in ``<name>.resume/`` (or in ``state_dir``), the editor (``editor.save``) and the
loop's state are saved (with ``save_every=K`` also every K edits, unscored, so that a long
run with few checkpoints loses little when killed); ``resume=True`` loads them onto a fresh
model and continues after the last save (a checkpoint's edits are saved before it is
scored, and under ``sequential`` each scorer's rows as it ends, so a run killed while
scoring resumes with the scorers left), and keeps a finished file, unless its greedy
answers were cut by an older ``metrics.DECODING_VERSION``: that run starts again.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import metrics
from ..data.record import EditRecord
from ..editors import Editor, NotConvergedWarning, get_method
from . import results as res
from .config import BenchConfig, resolve_checkpoints
from .reference import cached_base_reference

# the fields a resumed run must share with the run it continues
_RESUME_KEYS = (
    "method",
    "dataset",
    "n",
    "offset",
    "model",
    "protocol",
    "shuffle",
    "seed",
    "chat",
    "overrides",
    "skip_bad",
    "unke_max_tokens",
    "free_max_tokens",
    "edit_batch",
)


def select_records(cfg: BenchConfig, records: Sequence[EditRecord] | None = None):
    """``(records, dataset info)``: the first N records, after a seeded shuffle if asked."""
    if records is None:
        from ..data import load_dataset

        loaded = load_dataset(
            cfg.dataset,
            n=None if cfg.shuffle or cfg.n is None else cfg.offset + cfg.n,
            skip_bad=cfg.skip_bad,
            data_root=cfg.data_root,
        )
        records = loaded.records
        info = {
            "name": loaded.name,
            "path": loaded.path,
            "format": loaded.format,
            "skipped": loaded.skipped,
        }
    else:
        info = {"name": cfg.dataset, "path": None, "format": "records", "skipped": 0}
    records = list(records)
    info["available"] = len(records)
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(records)
    records = records[cfg.offset :]
    if cfg.n is not None:
        if len(records) < cfg.n:
            warnings.warn(f"{cfg.dataset} has {len(records)} records, fewer than n={cfg.n}")
        records = records[: cfg.n]
    if not records:
        raise ValueError(f"no records to edit in {cfg.dataset}")
    return records, info


def resolve_scorers(cfg: BenchConfig, records: Sequence[EditRecord]) -> list[str]:
    """Short scorer names: as given, else tf + gen + free (+ probes where records carry extra
    probe sets, + unke where they have sub-questions; free is left out on long-form data, whose
    answers the UnKE scorer reads whole)."""
    if cfg.scorers:
        return list(dict.fromkeys(cfg.scorers))
    long_form = any("sub_question" in r.extra for r in records)
    probes = bool(metrics.probe_sets(records))
    free = [] if long_form else ["free"]
    return ["tf", "gen", *free] + (["probes"] if probes else []) + (["unke"] if long_form else [])


def _score(editor, records, reference, scorers, cfg, memo=None) -> dict[str, list[dict]]:
    """Per scorer label, one row of scores per record.

    The greedy answers the generation scorer decodes are kept in ``memo`` (a fresh one by
    default) for the UnKE scorer, which asks the same prompts for at most as many tokens
    (:class:`horen.metrics.AnswerMemo`).
    """
    out = {}
    memo = metrics.AnswerMemo() if memo is None else memo
    for short in scorers:
        label = metrics.SCORERS[short]
        if short == "gen":
            out[label] = metrics.score_generation(
                editor, records, reference, cfg.batch_size, memo=memo
            )
        elif short == "free":
            out[label] = metrics.score_free(
                editor, records, reference, cfg.batch_size, cfg.free_max_tokens
            )
        elif short == "unke":
            out[label] = metrics.score_unke(
                editor, records, reference, cfg.batch_size, cfg.unke_max_tokens, memo=memo
            )
        else:
            out[label] = metrics.SCORE_FUNCTIONS[label](editor, records, reference, cfg.batch_size)
    return out


def make_editor(cfg: BenchConfig, model, tokenizer) -> Editor:
    """The method's editor with ``cfg.overrides`` applied (unknown fields are an error)."""
    return get_method(cfg.method)(model, tokenizer, **_editor_overrides(cfg))


def _editor_overrides(cfg: BenchConfig) -> dict:
    """The settings ``cfg`` gives its method's editor (checked where they are applied:
    :meth:`horen.editors.base.EditorConfig.replaced`)."""
    return {**cfg.overrides, "chat": cfg.chat or bool(cfg.overrides.get("chat", False))}


def run_bench(
    cfg: BenchConfig,
    records: Sequence[EditRecord] | None = None,
    model_and_tokenizer: tuple | None = None,
    on_checkpoint: Callable[[dict, Editor], None] | None = None,
) -> dict:
    """Run one benchmark and write its results file; returns the results (the JSON's content).

    Args:
        cfg: the settings.
        records: edit records to use instead of loading ``cfg.dataset`` (tests).
        model_and_tokenizer: an already loaded ``(model, tokenizer)`` instead of
            ``horen.load_model(cfg.model)``. The editor is closed (W unwrapped) at the end.
        on_checkpoint: called as ``on_checkpoint(entry, editor)`` after each checkpoint is
            scored and saved.

    Example:
        >>> cfg = BenchConfig(method="horen", dataset="zsre", n=10, threads=2)
        >>> result = run_bench(cfg)  # doctest: +SKIP
    """
    started_at = res.git_state()  # the code that runs: read before the model loads
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    records, data_info = select_records(cfg, records)
    n = len(records)
    checkpoints = resolve_checkpoints(cfg.checkpoints, n)
    scorers = resolve_scorers(cfg, records)
    if model_and_tokenizer is None:
        from ..models import load_model

        model_and_tokenizer = load_model(cfg.model)
    model, tokenizer = model_and_tokenizer
    model_name = (
        cfg.model or getattr(model, "horen_name", None) or model.config._name_or_path or "custom"
    )
    path = Path(cfg.out) / res.results_name(cfg, model_name, n)
    side = resume_dir(cfg, path)

    state = _load_resume(side, cfg, path) if cfg.resume else None
    if state is not None and state.get("complete"):
        return state["result"]
    if state is not None:
        editor = Editor.load(model, tokenizer, side / "editor")
    else:
        shutil.rmtree(side, ignore_errors=True)
        editor = make_editor(cfg, model, tokenizer)
    try:
        if cfg.edit_batch > 1 and not hasattr(editor, "apply_batch"):
            raise ValueError(f"{cfg.method} cannot write edits as one batch (--edit-batch)")
        start = time.perf_counter()
        if cfg.cache_reference:
            reference = cached_base_reference(
                editor, records, scorers, cfg.batch_size, free_max_tokens=cfg.free_max_tokens
            )
        else:
            reference = metrics.base_reference(
                editor, records, scorers, cfg.batch_size, cfg.free_max_tokens
            )
        base_seconds = time.perf_counter() - start
        if state is None:
            result = res.header(
                cfg, editor, data_info, model_name, checkpoints, scorers, git=started_at
            )
            result.update(file=path.name, base_reference_seconds=round(base_seconds, 3))
            state = {"done": 0, "edit_seconds": 0.0, "eval_seconds": 0.0, "rows": {}}
            state["result"] = result
        else:
            state["result"].setdefault("resumed_at", []).append(state["done"])
            state["result"].setdefault("resumed_git", []).append(started_at)  # the code from there on
            state["result"].setdefault("resumed_cpu", []).append(res.cpu_model())  # and the CPU
        _loop(
            cfg, editor, records, reference, scorers, checkpoints, state, path, side, on_checkpoint
        )
    finally:
        editor.close()
    result = state["result"]
    result.update(
        complete=True,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        edit_seconds_total=round(state["edit_seconds"], 4),
        time_per_edit=round(state["edit_seconds"] / n, 4),
    )
    res.write_json(path, result)
    shutil.rmtree(side, ignore_errors=True)
    return result


PROGRESS_CHUNK = 32  # edits between progress-bar updates, at least (the editor micro-batches inside)


def _loop(cfg, editor, records, reference, scorers, checkpoints, state, path, side, on_checkpoint):
    """Apply edits ``state["done"]+1 .. N``; score and save at each checkpoint."""
    rows = state["rows"]
    bar = tqdm(
        total=len(records),
        initial=state["done"],
        unit="edit",
        dynamic_ncols=True,
        desc=f"{cfg.method}/{state['result']['dataset']}",
        disable=not cfg.progress,
    )
    try:
        t = state["done"]
        if "scoring" in state:  # killed while checkpoint t was scored: its edits are saved
            _checkpoint(cfg, editor, records, reference, scorers, state, path, side, bar,
                        on_checkpoint)
        while t < len(records):
            # sequential: edits go in micro-batches up to the next checkpoint (same decisions
            # as one at a time, see CodebookEditor.apply_many); immediate: one at a time
            # --edit-batch: batches of that many (cut at checkpoints) go to apply_batch
            # --save-every K: micro-batches end at multiples of K; a batch (--edit-batch) is
            # never cut for it and saves once it has crossed one
            stop = t + 1
            if cfg.protocol == "sequential":
                chunk = max(PROGRESS_CHUNK, getattr(editor, "micro_batch_size", 1))
                chunk = cfg.edit_batch if cfg.edit_batch > 1 else chunk
                ends = [c for c in checkpoints if c > t] + [t + chunk, len(records)]
                if cfg.save_every and cfg.edit_batch == 1:
                    ends.append((t // cfg.save_every + 1) * cfg.save_every)
                stop = min(ends)
            start = time.perf_counter()
            with warnings.catch_warnings():  # counted in the checkpoint entry instead
                warnings.simplefilter("ignore", NotConvergedWarning)
                if cfg.edit_batch > 1:
                    editor.apply_batch(records[t:stop])
                else:
                    editor.apply_many(records[t:stop])
            state["edit_seconds"] += time.perf_counter() - start
            bar.update(stop - t)
            start = time.perf_counter()
            if cfg.protocol == "immediate":
                for label, new in _score(
                    editor, records[t : t + 1], reference[t : t + 1], scorers, cfg
                ).items():
                    rows.setdefault(label, []).extend(new)
            save = cfg.save_every > 0 and stop // cfg.save_every > t // cfg.save_every
            t = n = stop
            state["eval_seconds"] += time.perf_counter() - start
            if n not in checkpoints:
                if save:  # unscored: --resume continues from here
                    state["done"] = n
                    _save_resume(side, editor, state, path, cfg)
                continue
            state["done"] = n
            state["scoring"] = {}  # checkpoint n is pending: its edits are saved first
            _save_resume(side, editor, state, path, cfg)
            _checkpoint(cfg, editor, records, reference, scorers, state, path, side, bar,
                        on_checkpoint)
    finally:
        bar.close()


def _checkpoint(cfg, editor, records, reference, scorers, state, path, side, bar, on_checkpoint):
    """Score checkpoint ``n = state["done"]``, append its entry and save.

    Under ``sequential`` the model f_n is scored on records 1..n one scorer at a time, and
    each scorer's rows are saved in ``state["scoring"]`` as it ends: a run killed while
    scoring resumes with the scorers left (on the same saved editor, so the numbers are
    those of an unbroken run). Under ``immediate`` the rows were scored edit by edit."""
    n = state["done"]
    if cfg.protocol == "sequential":
        scored, memo = state["scoring"], metrics.AnswerMemo()
        for short in scorers:
            if metrics.SCORERS[short] in scored:
                continue
            start = time.perf_counter()
            scored.update(_score(editor, records[:n], reference[:n], [short], cfg, memo))
            state["eval_seconds"] += time.perf_counter() - start
            _save_state(side, state, path, cfg)
        scored = {metrics.SCORERS[short]: scored[metrics.SCORERS[short]] for short in scorers}
    else:
        scored = {label: r[:n] for label, r in state["rows"].items()}
    del state["scoring"]
    entry = {"n": n, **{label: metrics.summarize(r, label) for label, r in scored.items()}}
    entry.update(
        edit_seconds_total=round(state["edit_seconds"], 4),
        eval_seconds=round(state["eval_seconds"], 4),
    )
    if hasattr(editor, "codebook"):
        entry["codebook_size"] = len(editor.codebook)
    if any("converged" in e for e in editor.edits):
        entry["not_converged"] = sum(e.get("converged") is False for e in editor.edits)
    entry["peak_rss_mb"] = res.peak_rss_mb()
    state["eval_seconds"] = 0.0
    state["result"]["checkpoints"].append(entry)
    _save_state(side, state, path, cfg)  # the editor was saved as the checkpoint began
    bar.set_postfix(_postfix(entry), refresh=False)
    bar.write(f"[{cfg.method}] n={n}: " + json.dumps(_postfix(entry)))
    if on_checkpoint is not None:
        on_checkpoint(entry, editor)


def _postfix(entry: dict) -> dict:
    out = {}
    for label, key, name in (
        ("teacher_forced", "op", "tf_op"),
        ("generation", "op", "greedy_op"),
        ("generation", "rel_em", "greedy_rel_em"),
        ("free_generation", "op", "free_op"),
        ("free_generation", "rel_degenerate", "free_rel_degenerate"),
    ):
        value = entry.get(label, {}).get(key)
        if value is not None:
            out[name] = round(value, 3)
    return out


def resume_dir(cfg: BenchConfig, path: Path) -> Path:
    """Where the run's resume state lives: ``<results name>.resume/`` beside the results file,
    or in ``cfg.state_dir`` (a folder outside the checkout survives a fresh clone)."""
    side = path.with_suffix(".resume")
    return Path(cfg.state_dir).expanduser() / side.name if cfg.state_dir else side


def _save_resume(side: Path, editor, state: dict, path: Path, cfg: BenchConfig) -> None:
    """The editor, the loop's state and the partial results file."""
    editor.save(side / "editor")
    _save_state(side, state, path, cfg)


def _save_state(side: Path, state: dict, path: Path, cfg: BenchConfig) -> None:
    """The loop's state and the partial results file (the editor unchanged since saved)."""
    res.write_json(side / "state.json", {**state, "config": dataclasses.asdict(cfg)})
    res.write_json(path, state["result"])


def _load_resume(side: Path, cfg: BenchConfig, path: Path) -> dict | None:
    """The saved state of a killed run (None: start afresh), checked against ``cfg``."""
    if not (side / "state.json").exists():
        if path.exists():
            done = json.loads(path.read_text())
            if done.get("complete") and not _stale(done, path) and _same_editor(done, cfg, path):
                return {"complete": True, "result": done}
        return None
    state = json.loads((side / "state.json").read_text())
    if _stale(state["result"], path):
        return None
    saved = state.pop("config")
    fields = {f.name: f.default for f in dataclasses.fields(BenchConfig)}
    diff = [k for k in _RESUME_KEYS if saved.get(k, fields[k]) != getattr(cfg, k)]
    if saved.get("scorers") != cfg.scorers or saved.get("checkpoints") != cfg.checkpoints:
        diff.append("scorers/checkpoints")
    if diff:
        raise ValueError(f"cannot resume {side}: the settings differ ({', '.join(diff)})")
    return state


def _same_editor(result: dict, cfg: BenchConfig, path: Path) -> bool:
    """False (with a warning) for a finished run whose editor settings are not the ones this
    run would use (a default changed since): it is run again rather than reported as done."""
    config_class = get_method(cfg.method).config_class
    want = dataclasses.asdict(config_class().replaced(_editor_overrides(cfg), cfg.method))
    had = result.get("editor", {}).get("config", {})
    diff = res.changed_settings(had, want, config_class.before_settings())
    if diff:
        warnings.warn(f"{path} was made with other editor settings ({', '.join(diff)}): "
                      "running it again from the start")
    return not diff


def _stale(result: dict, path: Path) -> bool:
    """True (with a warning) for a run scored with an older decoding: it is run again from the
    start, since continuing or keeping it would mix two ways of cutting greedy answers."""
    if not metrics.old_decoding(result):
        return False
    warnings.warn(
        f"{path} was scored with decoding_version {result.get('decoding_version', 1)} "
        f"(now {metrics.DECODING_VERSION}): running it again from the start"
    )
    return True
