"""What makes a results file self-describing: its name, the environment, atomic writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

from .. import metrics

FORMAT = "horen-bench/1"


def slug(text: str) -> str:
    """A file-name-safe version of a name or path (``"org/Model-1B"`` -> ``"org-Model-1B"``)."""
    text = Path(text).stem if os.sep in text and Path(text).suffix else text
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "x"


def results_name(cfg, model_name: str, n: int) -> str:
    """Deterministic file name from method, dataset, model, N and protocol.

    Runs that differ in chat formatting or method overrides get a suffix, so they never
    overwrite each other.
    """
    parts = [slug(cfg.method), slug(cfg.dataset), slug(model_name), f"n{n}", cfg.protocol]
    if getattr(cfg, "edit_batch", 1) > 1:
        parts.append(f"batch{cfg.edit_batch}")
    if getattr(cfg, "offset", 0):
        parts.append(f"from{cfg.offset}")
    if cfg.chat:
        parts.append("chat")
    if cfg.overrides:
        digest = hashlib.sha1(json.dumps(cfg.overrides, sort_keys=True).encode()).hexdigest()
        parts.append("set-" + digest[:8])
    return "__".join(parts) + ".json"


def header(
    cfg, editor, data_info: dict, model_name: str, checkpoints, scorers, git: dict | None = None
) -> dict:
    """The self-describing head of a results file (``checkpoints`` is filled as it runs);
    ``git``: the checkout's state when the run started (default: now)."""
    labels = [metrics.SCORERS[s] for s in scorers]
    return {
        "format": FORMAT,
        "method": cfg.method,
        "dataset": data_info["name"],
        "model": model_name,
        "protocol": cfg.protocol,
        "n": checkpoints[-1],
        "chat": editor.config.chat,
        "scorers": labels,
        "scorer_notes": {label: metrics.NOTES[label] for label in labels},
        "decoding_version": metrics.DECODING_VERSION,
        "seed": cfg.seed,
        "command": cfg.command(),
        "config": {**dataclasses.asdict(cfg), "checkpoints": checkpoints},
        "dataset_info": data_info,
        "editor": editor_info(editor),
        "versions": versions(),
        "git": git or git_state(),
        "machine": machine(editor.device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "complete": False,
        "checkpoints": [],
    }


def editor_info(editor) -> dict:
    """The editor's method, full config, edit site and the defaults it resolved from the model."""
    info = {"method": editor.method, "config": editor.config.to_dict(), "site": editor.site.path}
    for name in ("tau", "pool_ratio"):
        if hasattr(editor, name):
            info[name] = getattr(editor, name)
    return info


def versions() -> dict:
    """Versions of the packages that decide the numbers."""
    out = {}
    for name in ("horen", "torch", "transformers", "tokenizers", "sacrebleu", "rouge-score"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["torch"] = torch.__version__
    return out


def changes_code(porcelain: str) -> bool:
    """True if ``git status --porcelain`` lists a tracked change outside ``results/``
    (results files written or moved aside by earlier runs do not change what runs)."""
    paths = [line[2:].strip().split(" -> ")[-1].strip('"') for line in porcelain.splitlines()]
    return any(not p.startswith("results/") for p in paths)


def git_state() -> dict:
    """``{"commit", "dirty"}`` of the checkout holding this package (None outside git);
    ``dirty``: a tracked file outside ``results/`` differs from the commit."""
    where = Path(__file__).resolve().parent

    def git(*args):  # stdout as is: a status line starts with a space (" M path")
        return subprocess.run(
            ["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = changes_code(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def cpu_model() -> str | None:
    """The CPU as ``/proc/cpuinfo`` names it: vendor, family, model, stepping and model name
    (a virtual machine's model name alone, "AMD EPYC", does not tell two generations apart;
    runs on different CPUs may differ in float rounding). None off Linux."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    parts = [fields.get("vendor_id")] + [
        f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
    ident, name = " ".join(p for p in parts if p), fields.get("model name")
    return f"{ident} ({name})" if name else (ident or None)


def machine(device) -> dict:
    """Platform, CPU, CPU count, torch threads and the device the model ran on."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MiB (None where unknown)."""
    try:
        import resource
    except ImportError:
        return None
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024, 1)  # Linux reports KiB


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (a killed run never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def changed_settings(had: dict, want: dict, missing: dict | None = None) -> list[str]:
    """Sorted names of the settings in ``want`` whose value in a run's recorded editor config
    ``had`` differs. A setting the file does not record counts as ``missing[k]`` (default:
    ``want[k]``, i.e. unchanged); ``None`` in ``want`` (resolved per model, as tau: the file
    records the value in use) is not compared."""
    missing = want if missing is None else missing
    return sorted(k for k, v in want.items() if v is not None and had.get(k, missing[k]) != v)
