"""Tables and plots from results files (``horen report results/*.json``), never typed by hand.

:func:`load_results` reads the JSON files :mod:`horen.bench` writes; :func:`markdown_report`
makes a summary (one row per run at its last checkpoint, and every run of a dataset at the
largest N they share), one Markdown table per scorer (method x dataset x checkpoint ->
Rel/Gen/Loc/OP) and the command that reproduces each run, with the CPU it ran on (a time
measured on another CPU than most runs is marked: seconds compare only on one CPU);
:func:`plot_results` draws each metric against the number of edits (log x axis, one line per
method, one figure per dataset and scorer);
:func:`update_readme` puts one short table (:func:`readme_table`: method x dataset, the
teacher-forced and free-generation OP) and a link to the full report between
``<!-- results:start -->`` and ``<!-- results:end -->`` in a README.

Example:
    >>> results = load_results(["results/*.json"])  # doctest: +SKIP
    >>> print(markdown_report(results))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

from . import metrics
from .bench.results import changed_settings, slug
from .editors.base import get_method
from .editors.weights.editor import ROLLBACK_SETTINGS

START, END = "<!-- results:start -->", "<!-- results:end -->"

# scorer label -> (column title, key in the checkpoint entry), in table order
COLUMNS = {
    "teacher_forced": [("Rel", "rel"), ("Gen", "gen"), ("Loc", "loc"), ("OP", "op")],
    "generation": [
        ("Rel acc", "rel_acc"),
        ("Gen acc", "gen_acc"),
        ("Loc", "loc"),
        ("OP", "op"),
        ("Rel EM", "rel_em"),
        ("Gen EM", "gen_em"),
    ],
    "free_generation": [
        ("Rel hit", "rel_hit"),
        ("Gen hit", "gen_hit"),
        ("Loc", "loc"),
        ("OP", "op"),
        ("Rel degen", "rel_degenerate"),
        ("Gen degen", "gen_degenerate"),
        ("Rel mention", "rel_mention"),
        ("Loc true", "loc_true"),
        ("Base loc true", "base_loc_true"),
    ],
    "unke": [
        (f"{s[:4].title()} {m}", f"{s}_{m}")
        for s in ("original", "paraphrase", "sub_question")
        for m in ("bleu", "rougeL", "bertscore")
    ],
}
TITLES = {
    "teacher_forced": "Teacher-forced",
    "generation": "Generation (greedy, KV cache)",
    "free_generation": "Free generation (whole answers: hit = starts with the target)",
    "unke": "UnKE (long-form)",
    "probes": "Extra probes (teacher-forced answer accuracy)",
}
PLOTTED = {
    "teacher_forced": ["rel", "gen", "loc", "op"],
    "generation": ["rel_acc", "gen_acc", "loc", "op"],
    "free_generation": ["rel_hit", "gen_hit", "loc", "rel_degenerate"],
    "unke": [
        "original_bertscore",
        "paraphrase_bertscore",
        "sub_question_bertscore",
        "original_rougeL",
    ],
}


def load_results(paths) -> list[dict]:
    """Results dicts from files (globs expanded), sorted by method, dataset, model, protocol,
    N, then settings (numbers in them by value)."""
    files = []  # (path, named explicitly)
    for p in paths:
        if any(c in str(p) for c in "*?["):
            files += [(f, False) for f in sorted(glob.glob(str(p)))]
        else:
            files.append((str(p), True))
    results = []
    for f, named in files:
        data = json.loads(Path(f).read_text())
        if not _is_bench(data) and not _is_speed(data):
            if not named:  # a glob also matched another kind of JSON (codebook_scale.json)
                print(f"horen report: skipped {f}: not a bench or bench-speed result", file=sys.stderr)
                continue
            raise ValueError(f"{f} is neither a horen bench nor a bench-speed results file")
        data.setdefault("file", Path(f).name)
        results.append(data)
    key = ("method", "dataset", "model", "protocol")
    return sorted(results, key=lambda r: (*(str(r.get(k, "")) for k in key), *_n_then_label(r)))


def _n_then_label(r: dict) -> tuple:
    """Sort key within a method or dataset: N, then the run's label with its numbers by value."""
    return r.get("n") or 0, _natural(_run_label(r)) if _is_bench(r) else ()


def _natural(text: str) -> tuple:
    """Sort key that orders the numbers inside ``text`` by value: lambda=500 before 1500."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:e-?\d+)?)", text)
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts) if p)


def _is_bench(data: dict) -> bool:
    return "checkpoints" in data and "method" in data


def _is_speed(data: dict) -> bool:
    return ("edit_speedup" in data and "reference" in data) or data.get("mode") == "eval"


def eval_speed_report(r: dict) -> list[str]:
    """Markdown lines for a ``horen bench-speed --eval-only`` result."""
    lines = [f"### Scoring speed: {r['n']} ZsRE edits on {r.get('model')}", ""]
    lines += ["| scorer | authors' loop, seq/s | horen, seq/s | speedup | OP (loop / horen) |"]
    lines += ["|---|---|---|---|---|"]
    loops = {"teacher_forced": "one sequence at a time, LM head everywhere",
             "generation": "one prompt at a time, no KV cache"}
    for label, loop in loops.items():
        ref, fast = r[label]["reference"], r[label]["fast"]
        ops = f"{_fmt(ref[label].get('op'))} / {_fmt(fast[label].get('op'))}"
        row = [f"{label} ({loop})", f"{ref['sequences_per_second']:.1f}",
               f"{fast['sequences_per_second']:.1f}", f"{r['eval_speedup_' + label]:.2f}x", ops]
        lines.append("| " + " | ".join(row) + " |")
    load = r.get("machine", {}).get("loadavg_at_end")
    lines += ["", f"{r.get('sequences')} sequences per pass, batches of {r.get('batch_size')}, "
              f"{r.get('threads')} threads" + (f", load average at the end {load[0]:.1f}" if load
                                               else "") + f". Command: `{r.get('command')}`", ""]
    return lines


def _probe_columns(runs: list[dict]) -> list[tuple[str, str]]:
    """``(title, key)`` per probe set found in the runs' ``probes`` entries."""
    keys = (k for r in runs for c in r["checkpoints"] for k in c.get("probes", {}))
    return [(k, k) for k in dict.fromkeys(keys) if not k.startswith("n_")]


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _run_label(r: dict) -> str:
    """The method, with what sets the run apart: chat, edit batches, overrides (not the
    rollback settings: the same edits give the same weights whatever is kept to undo them),
    and the defaults it ran with that are no longer the method's (:func:`_older_defaults`)."""
    cfg = r.get("config") or {}
    extra = ["chat"] if r.get("chat") else []
    if (cfg.get("edit_batch") or 1) > 1:
        extra.append(f"batch {cfg['edit_batch']}")
    extra += [f"{k}={v}" for k, v in sorted((cfg.get("overrides") or {}).items())
              if k not in ROLLBACK_SETTINGS]
    older = _older_defaults(r)
    if older:
        extra.append("defaults then: " + ", ".join(older))
    return r["method"] + (f" ({', '.join(extra)})" if extra else "")


def _older_defaults(r: dict) -> list[str]:
    """``key=value`` for each editor setting the run recorded that was not set by ``--set``
    and differs from the method's default today (a default changed since the run): such a
    run is not what the method name alone would run now. Defaults of None (resolved per
    model, as tau) and chat are not compared."""
    try:
        config_class = get_method(r["method"]).config_class
    except ValueError:
        return []
    had = (r.get("editor") or {}).get("config") or {}
    if not had:  # the run recorded no editor settings: nothing to compare
        return []
    overrides = (r.get("config") or {}).get("overrides") or {}
    now = {k: v for k, v in dataclasses.asdict(config_class()).items()
           if k not in overrides and k != "chat"}
    before = config_class.before_settings()  # settings newer than the run
    inert = config_class.inert_settings({**before, **had})  # e.g. L-BFGS ones of an Adam run
    return [f"{k}={had.get(k, before[k])}" for k in changed_settings(had, now, before)
            if k not in inert]


OLD_DECODING = "¹"
OLD_DECODING_NOTE = (
    f"{OLD_DECODING} generation-scored (and UnKE) numbers of a run made before `decoding_version` "
    "2: each greedy answer was decoded from its batch's longest budget, so it depended on the "
    "prompts batched with it, and generated locality at a checkpoint below N was compared with "
    "a base reference decoded in other batches (the unedited model scored 0.66-0.99 there, "
    "not 1). Teacher-forced numbers are unaffected. Run its command again to refresh it "
    "(`--resume` re-runs such a file instead of keeping it)."
)


OTHER_CPU = "²"
OTHER_CPU_NOTE = (
    f"{OTHER_CPU} time measured on another CPU ({{other}}) than most runs whose CPU is recorded "
    "({usual}): seconds per edit compare only between runs on one CPU (the Runs list names "
    "each run's; `horen bench-speed` gives ratios measured in one run)."
)


def cpu_name(cpu: str | None) -> str | None:
    """The model name of a recorded CPU: ``"AMD EPYC"`` from ``"AuthenticAMD cpu family 25
    model 17 stepping 1 (AMD EPYC)"`` (results files before the family was recorded hold the
    name alone)."""
    if not cpu:
        return None
    match = re.search(r"\((.*)\)$", cpu)
    name = match.group(1) if match else cpu
    return re.sub(r"\s+", " ", name.replace("(R)", "").replace("(TM)", "")).strip()


def run_cpus(r: dict) -> list[str]:
    """The CPUs a run's edits ran on, in order (a resumed run may have moved machine)."""
    cpus = [(r.get("machine") or {}).get("cpu")] + list(r.get("resumed_cpu", []))
    return list(dict.fromkeys(n for n in map(cpu_name, cpus) if n))


def usual_cpu(results: list[dict]) -> str | None:
    """The CPU most runs with a recorded one ran on."""
    counts = Counter(name for r in results for name in run_cpus(r))
    return counts.most_common(1)[0][0] if counts else None


def _other_cpus(r: dict, usual: str | None) -> list[str]:
    """The CPUs other than ``usual`` that a run's time per edit was measured on: what the
    summary marks."""
    if not usual or r.get("time_per_edit") is None:
        return []
    return [c for c in run_cpus(r) if c != usual]


SUMMARY_HEAD = ["Method", "Dataset", "N", "TF Rel", "TF Gen", "TF Loc", "TF OP",
                "Gen-scored OP", "Free OP", "Free degen", "s/edit (whole run)"]


def _status(r: dict) -> str:
    return "" if r.get("complete", True) else " (incomplete)"


def _run_size(r: dict) -> int:
    """N of the run (its last checkpoint's n in files that do not record it)."""
    return r.get("n") or r["checkpoints"][-1]["n"]


def _checkpoint_labels(runs: list[dict]) -> dict[int, str]:
    """Labels for the per-checkpoint tables, keyed by ``id(run)``: a method run at N = 100 and
    again at N = 1000 on the same data also names its N, else their n = 100 rows look alike."""
    def key(r):
        return _run_label(r), r["dataset"], r.get("model"), r.get("protocol")
    counts: dict = {}
    for r in runs:
        counts[key(r)] = counts.get(key(r), 0) + 1
    return {id(r): _run_label(r) + (f" (N = {_run_size(r)})" if counts[key(r)] > 1 else "")
            + _status(r) for r in runs}


def _summary_row(r: dict, point: dict, usual: str | None = None) -> str:
    tf, gen = point.get("teacher_forced", {}), point.get("generation", {})
    per_edit = r.get("time_per_edit")
    cells = [_run_label(r) + _status(r), r["dataset"], str(point.get("n", "–"))]
    mark = OLD_DECODING if metrics.old_decoding(r) and gen.get("op") is not None else ""
    cells += [_fmt(tf.get(k)) for k in ("rel", "gen", "loc", "op")] + [_fmt(gen.get("op")) + mark]
    free = point.get("free_generation", {})
    degen = metrics.mean([free.get("rel_degenerate"), free.get("gen_degenerate")])
    cells += [_fmt(free.get("op")), _fmt(degen)]
    other = OTHER_CPU if _other_cpus(r, usual) else ""
    cells.append("–" if per_edit is None else f"{per_edit:.2f}{other}")
    return "| " + " | ".join(cells) + " |"


def _one_run_per_label(runs: list[dict]) -> list[dict]:
    """A method run at N = 100 and again at N = 1000 gets one row: from the shorter run, the
    one made for that N (its time per edit is that of those edits)."""
    chosen: dict[str, dict] = {}
    for r in runs:
        label = _run_label(r)
        if label not in chosen or r["checkpoints"][-1]["n"] < chosen[label]["checkpoints"][-1]["n"]:
            chosen[label] = r
    return [r for r in runs if chosen[_run_label(r)] is r]


def summary_table(results: list[dict]) -> list[str]:
    """One row per run at its last checkpoint: both scorers side by side, time per edit;
    then, per dataset whose runs stop at different N, every method at the largest N they share."""
    head = ["| " + " | ".join(SUMMARY_HEAD) + " |", "|" + "---|" * len(SUMMARY_HEAD)]
    order = sorted(results, key=lambda r: (r["dataset"], *_n_then_label(r)))
    usual = usual_cpu(results)
    lines = ["### At the last checkpoint", "", *head]
    lines += [_summary_row(r, r["checkpoints"][-1], usual) for r in order if r["checkpoints"]]
    lines.append("")
    for dataset in sorted({r["dataset"] for r in results}):
        runs = [r for r in order if r["dataset"] == dataset and r["checkpoints"]]
        shared = set.intersection(*({c["n"] for c in r["checkpoints"]} for r in runs)) if runs else set()
        if len(runs) < 2 or not shared or len({r["checkpoints"][-1]["n"] for r in runs}) == 1:
            continue
        n = max(shared)
        lines += [f"### {dataset} at N = {n}, every method (the same first {n} edits)", "", *head]
        lines += [_summary_row(r, next(c for c in r["checkpoints"] if c["n"] == n), usual)
                  for r in _one_run_per_label(runs)]
        lines.append("")
    others = sorted({c for r in results if r["checkpoints"] for c in _other_cpus(r, usual)})
    if others:
        lines += [OTHER_CPU_NOTE.format(other=", ".join(others), usual=usual), ""]
    return lines


def speed_report(speeds: list[dict]) -> list[str]:
    """Markdown lines for ``horen bench-speed`` results: one table per run."""
    lines = []
    names = {
        "reference": "reference (full model, batch 1)",
        "fast": "fast path, same settings",
        "default": "fast path, horen defaults (early stop)",
    }
    for r in speeds:
        if r.get("mode") == "eval":
            lines += eval_speed_report(r)
            continue
        lines += [f"### Speed: {r['n']} ZsRE edits on {r.get('model')}", ""]
        lines += ["| path | edits/s | s/edit | eval sequences/s | teacher-forced OP |"]
        lines += ["|---|---|---|---|---|"]
        for phase, name in names.items():
            if phase not in r:
                continue
            p = r[phase]
            op = p["teacher_forced"]["op"]
            row = [name, f"{p['edits_per_second']:.3f}", f"{1 / p['edits_per_second']:.3f}"]
            row += [f"{p['eval_sequences_per_second']:.1f}", _fmt(op)]
            lines.append("| " + " | ".join(row) + " |")
        default = r.get("edit_speedup_default")
        also = f" ({default:.2f}x with the defaults)" if default is not None else ""
        machine = r.get("machine", {})
        load = machine.get("loadavg_at_end")
        lines += [
            "",
            f"Edit speedup {r['edit_speedup']:.2f}x{also}, evaluation speedup "
            f"{r['eval_speedup']:.2f}x; same codebook decisions: {r.get('same_codebook_decisions')}; "
            f"peak RSS {r.get('peak_rss_mb', 0):.0f} MB; {r.get('threads')} threads"
            + (f", load average at the end {load[0]:.1f}" if load else "")
            + f". Settings of the first two paths: {r.get('settings')}; micro-batch "
            f"{r.get('micro_batch')}. Command: `{r.get('command')}`",
            "",
        ]
    return lines


def markdown_report(results: list[dict]) -> str:
    """One Markdown table per scorer, the speed runs, then the command behind each run."""
    speeds = [r for r in results if _is_speed(r)]
    results = [r for r in results if _is_bench(r)]
    lines = summary_table(results) if results else []
    for scorer in [*COLUMNS, "probes"]:
        runs = [r for r in results if any(scorer in c for c in r["checkpoints"])]
        if not runs:
            continue
        columns = COLUMNS.get(scorer) or _probe_columns(runs)
        lines += [f"### {TITLES[scorer]}", ""]
        head = ["Method", "Dataset", "Model", "Protocol", "N"] + [c for c, _ in columns]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        labels = _checkpoint_labels(runs)
        for r in runs:
            for c in r["checkpoints"]:
                if scorer not in c:
                    continue
                mark = OLD_DECODING if scorer in metrics.DECODED and metrics.old_decoding(r) else ""
                cells = [labels[id(r)] + mark, r["dataset"], r["model"], r["protocol"], str(c["n"])]
                cells += [_fmt(c[scorer].get(key)) for _, key in columns]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if any(metrics.old_decoding(r) for r in results):
        lines += [OLD_DECODING_NOTE, ""]
    lines += ["### Runs", ""] if results else []
    for r in results:
        per_edit = r.get("time_per_edit")
        timing = f", {per_edit:.3f} s/edit" if per_edit is not None else ""
        git = r.get("git") or {}
        cpus = " then ".join(run_cpus(r)) or "CPU not recorded"
        lines.append(f"- `{r['file']}`{_status(r)}{timing} on {cpus}, commit {_commit(git)}"
                     f"{_resumes(r)}: `{r.get('command', '?')}`")
    if speeds:
        lines += [""] + speed_report(speeds)
    return "\n".join(lines) + "\n"


def _commit(git: dict) -> str:
    return (git.get("commit") or "?")[:10] + ("+dirty" if git.get("dirty") else "")


def _resumes(r: dict) -> str:
    """``", resumed after edit 450 on commit 1888001232"``: the code that ran from there on."""
    ats = r.get("resumed_at", [])
    gits = r.get("resumed_git", [])
    gits = [{}] * (len(ats) - len(gits)) + gits  # resumes made before commits were recorded
    return "".join(f", resumed after edit {at}" + (f" on commit {_commit(g)}" if g else "")
                   for at, g in zip(ats, gits))


def _color_index(k: int, n_colors: int) -> int:
    """tab20 pairs a dark and a light shade: the first ten methods take the dark ones."""
    return (2 * k + k // (n_colors // 2)) % n_colors


def _line_styles(runs: list[dict], colors) -> list[dict]:
    """One colour per method; a method's runs (N, settings) differ by line and marker."""
    methods = sorted({r["method"] for r in runs})
    seen: dict[str, int] = {}
    styles = []
    for r in runs:
        i = seen[r["method"]] = seen.get(r["method"], -1) + 1
        styles.append({
            "color": colors[_color_index(methods.index(r["method"]), len(colors))],
            "linestyle": ("-", "--", ":", "-.")[i % 4],
            "marker": "osD^v"[i % 5],
            "markersize": 4,
        })
    return styles


def plot_results(results: list[dict], out_dir: str | os.PathLike) -> list[Path]:
    """PNG per (dataset, scorer): each metric vs number of edits, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [r for r in results if _is_bench(r)]
    written = []
    for dataset in sorted({r["dataset"] for r in results}):
        for scorer, keys in PLOTTED.items():
            runs = [
                r
                for r in results
                if r["dataset"] == dataset and any(scorer in c for c in r["checkpoints"])
            ]
            if not runs:
                continue
            several = len({(r["model"], r["protocol"]) for r in runs}) > 1
            labels = [_run_label(r) + (f" [{r['model']}, {r['protocol']}]" if several else "")
                      for r in runs]
            labels = [lab + (f" N={r['n']}" if labels.count(lab) > 1 else "")
                      for lab, r in zip(labels, runs)]
            styles = _line_styles(runs, plt.get_cmap("tab20").colors)
            # tall enough that the legend, one line per run, fits beside the plots
            height = max(3.4, 0.2 * len(runs) + 0.9)
            fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), height), squeeze=False)
            for ax, key in zip(axes[0], keys):
                for r, label, style in zip(runs, labels, styles):
                    pts = [(c["n"], c[scorer].get(key)) for c in r["checkpoints"] if scorer in c]
                    pts = [(n, v) for n, v in pts if v is not None]
                    if not pts:
                        continue
                    ax.plot(*zip(*pts), label=label, **style)
                ax.set_xscale("log")
                ax.set_xlabel("number of edits")
                ax.set_title(key)
                ax.set_ylim(-0.02, 1.02)
                ax.grid(alpha=0.3)
            handles, names = axes[0][0].get_legend_handles_labels()
            fig.suptitle(f"{dataset}: {TITLES[scorer]}")
            fig.tight_layout()
            # the legend goes to the right of the plots; the saved canvas grows to hold it
            fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
            path = out_dir / f"{slug(dataset)}__{scorer}.png"
            fig.savefig(path, dpi=100, bbox_inches="tight")  # never clip the legend
            plt.close(fig)
            written.append(path)
    return written


def readme_table(results: list[dict]) -> list[str]:
    """The README's one table: method x dataset, each cell ``TF OP / free OP`` at the last
    checkpoint of the method's run on that dataset with the most scorers, then the largest N
    (``–``: not scored that way)."""
    runs = [r for r in results if _is_bench(r) and r["checkpoints"] and r.get("protocol",
            "sequential") == "sequential" and r["dataset"] != "unke"]
    datasets = sorted({r["dataset"] for r in runs}, key=lambda d: (d.startswith("synthetic"), d))
    best: dict[tuple[str, str], dict] = {}
    for r in runs:
        key = (_run_label(r), r["dataset"])
        if key not in best or _readme_rank(r) > _readme_rank(best[key]):
            best[key] = r
    labels = sorted({label for label, _ in best})
    lines = ["| method | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
    for label in labels:
        cells = []
        for d in datasets:
            r = best.get((label, d))
            if r is None:
                cells.append("")
                continue
            point = r["checkpoints"][-1]
            tf = point.get("teacher_forced", {}).get("op")
            free = point.get("free_generation", {}).get("op")
            cells.append(f"{_fmt(tf)} / {_fmt(free)} (N {point['n']}){_status(r)}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _readme_rank(r: dict) -> tuple:
    point = r["checkpoints"][-1]
    scorers = sum(bool(point.get(k)) for k in ("teacher_forced", "generation", "free_generation"))
    return r.get("complete", True), scorers, _run_size(r)


def update_readme(readme: str | os.PathLike, results: list[dict], report: str | None = None) -> str:
    """Replace the README section between the results markers (appended if absent) by the
    short table of :func:`readme_table` and a link to the full ``report``.

    Returns the new README text (also written to the file).
    """
    readme = Path(readme)
    text = readme.read_text() if readme.exists() else ""
    body = "\n".join(readme_table(results)) + "\n"
    if report:
        rel = os.path.relpath(Path(report).resolve(), readme.parent.resolve())
        body += f"\nEvery checkpoint, scorer, probe, time and machine: [{rel}]({rel}).\n"
    note = "<!-- generated by `horen report --readme`; do not edit by hand -->"
    section = f"{START}\n{note}\n\n{body}{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + "## Results\n\n" + section + "\n"
    readme.write_text(text)
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``horen report`` flags."""
    parser.add_argument("results", nargs="+", help="results JSON files (globs allowed)")
    parser.add_argument(
        "--out", default="reports", metavar="DIR", help="where report.md and the PNG plots go"
    )
    parser.add_argument("--readme", default=None, help="also rewrite this README's results section")
    parser.add_argument("--no-plots", action="store_true", help="tables only")


def run(args: argparse.Namespace) -> int:
    """``horen report``: write ``report.md`` and plots to ``--out``; optionally the README."""
    results = load_results(args.results)
    if not results:
        raise FileNotFoundError(f"no results files match {' '.join(args.results)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plots = [] if args.no_plots else plot_results(results, out)
    table = markdown_report(results)
    (out / "report.md").write_text(table + "".join(f"\n![{p.stem}]({p.name})\n" for p in plots))
    print(table)
    print(f"wrote {out / 'report.md'} and {len(plots)} plot(s)")
    if args.readme:
        update_readme(args.readme, results, str(out / "report.md"))
        print(f"updated {args.readme}")
    return 0
