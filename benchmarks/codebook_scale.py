"""How HoReN routing scales with the codebook: time per query and memory per entry.

For each key width d_ff (``--dims``) and codebook size (``--sizes``) it draws random unit keys
(skipped, with the reason recorded, when free memory is short), then times routing for
batches of ``--batch`` queries (noisy copies of stored keys; median of ``--repeats``):

* ``plain``: ``route_cosine(refine(q, K), K, tau)`` as in ``horen.codebook``;
* ``exact``: :class:`horen.index.ExactRouter` (must agree with plain on every query);
* ``faiss``: :class:`horen.index.FaissRouter` (when faiss-cpu is importable), with its
  build time and its agreement with exact on noisy copies and on random queries (at tau, and
  top-1 with no threshold).

Memory per entry comes from a real :class:`horen.codebook.Codebook` grown by ``add`` with
synthetic labels (tensor bytes used and allocated, plus Python objects via tracemalloc),
compared with the goal ``4 * (d_ff + d_model)`` bytes + a small constant.

Writes the JSON (machine, torch, threads, load average, git commit) and a Markdown table made
from it. Example:

    python benchmarks/codebook_scale.py --threads 2 --out results/codebook_scale.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import torch

from horen.codebook import Codebook, normalize, refine, route_cosine
from horen.data.synthetic import synthetic_stream
from horen.index import ExactRouter, FaissRouter, agreement

D_MODEL = {1536: 576, 14336: 4096}  # the embedded model; Llama-3-8B
TAU, BETA, ALPHA = 0.8, 20.0, 0.1


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else a large number."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def unit_keys(n: int, d: int, gen: torch.Generator, chunk: int = 65536) -> torch.Tensor:
    keys = torch.empty(n, d)
    for s in range(0, n, chunk):
        block = torch.randn(min(chunk, n - s), d, generator=gen)
        keys[s : s + chunk] = normalize(block)
    return keys


def noisy_copies(keys, b, gen, noise=0.5):
    """Queries at cosine ~0.9 from random stored keys."""
    pick = torch.randint(keys.shape[0], (b,), generator=gen)
    d = keys.shape[1]
    return normalize(keys[pick] + noise * torch.randn(b, d, generator=gen) / math.sqrt(d))


def timed(fn, repeats):
    """(median seconds, last result); one warm-up call, fewer repeats when a call is slow."""
    start = time.perf_counter()
    out = fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats if first < 2 else min(repeats, 2)):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def plain(q, keys):
    return route_cosine(refine(q, keys, beta=BETA, alpha=ALPHA), keys, TAU)


def bench_size(n, d, args, gen):
    """One (size, d_ff) cell: timings per batch size and faiss agreement."""
    row = {"entries": n, "d_ff": d}
    need = 2.2 * n * d * 4  # keys + plain's normalized copy of them
    if need > 0.85 * available_bytes():
        row["skipped"] = (
            f"needs ~{need / 2**30:.1f} GiB (keys + plain's normalized copy), "
            f"{available_bytes() / 2**30:.1f} GiB available"
        )
        print(f"  skip {n} x {d}: {row['skipped']}", flush=True)
        return row
    keys = unit_keys(n, d, gen)
    exact = ExactRouter()
    row["timings"] = []
    for b in args.batch:
        q = noisy_copies(keys, b, gen)
        t_plain, ref = timed(lambda q=q: plain(q, keys), args.repeats)
        t_exact, got = timed(lambda q=q: exact.route(q, keys, TAU), args.repeats)
        cell = {
            "batch": b,
            "plain_ms_per_query": 1e3 * t_plain / b,
            "exact_ms_per_query": 1e3 * t_exact / b,
            "exact_equals_plain": bool(torch.equal(ref[0], got[0])),
            "exact_fallback_rows": exact.last_fallback,
        }
        row["timings"].append(cell)
        print(f"  {n:>8} x {d:<5} B={b:<3} plain {cell['plain_ms_per_query']:8.2f} ms/q  "
              f"exact {cell['exact_ms_per_query']:8.2f} ms/q  equal={cell['exact_equals_plain']}",
              flush=True)
    if args.faiss and 1.2 * n * d * 4 < 0.85 * available_bytes():  # faiss copies the keys
        row["faiss"] = bench_faiss(keys, args, gen)
    return row


def bench_faiss(keys, args, gen):
    d = keys.shape[1]
    router = FaissRouter(d, k=args.k, nprobe=args.nprobe, threads=args.threads)
    start = time.perf_counter()
    router.add(keys)
    out = {"index": type(router.index).__name__, "k": args.k, "nprobe": args.nprobe,
           "build_s": time.perf_counter() - start}
    if hasattr(router.index, "nlist"):
        out["nlist"] = router.index.nlist
    for b in args.batch:
        q = noisy_copies(keys, b, gen)
        t, _ = timed(lambda q=q: router.route(q, keys, TAU), args.repeats)
        out[f"ms_per_query_b{b}"] = 1e3 * t / b
    exact = ExactRouter()
    for kind in ("copies", "random"):
        q = noisy_copies(keys, 256, gen) if kind == "copies" else normalize(torch.randn(256, d))
        out[f"agree_{kind}"] = agreement(
            exact.route(q, keys, TAU)[0], router.route(q, keys, TAU)[0]
        )
        out[f"top1_agree_{kind}"] = agreement(
            exact.route(q, keys, -2.0)[0], router.route(q, keys, -2.0)[0]
        )
    shown = [f"{k} {v:.3g}" for k, v in out.items() if k.startswith(("ms_", "agree", "top1"))]
    print(f"  faiss {out['index']}: build {out['build_s']:.1f} s, " + ", ".join(shown), flush=True)
    return out


def memory_per_entry(d, d_model, n, labels):
    """Bytes per entry of a Codebook grown by ``add`` (tensors used/allocated + Python)."""
    tracemalloc.start()
    cb = Codebook(d, (d_model,))
    key, value = normalize(torch.randn(d)), torch.zeros(d_model)
    for i in range(n):
        cb.add(key, value, labels[i % len(labels)].encode().decode())  # a fresh str
    py_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    allocated = sum(t.untyped_storage().nbytes() for t in (cb._keys, cb._values, cb._radii))
    cb.shrink()
    shrunk = sum(t.untyped_storage().nbytes() for t in (cb._keys, cb._values, cb._radii))
    used = n * 4 * (d + d_model + 1)
    # tracemalloc sees Python objects only (labels, ids), not torch storage
    return {
        "d_ff": d, "d_model": d_model, "entries": n,
        "goal_bytes": 4 * (d + d_model),
        "tensor_bytes_used": used / n,
        "tensor_bytes_allocated": allocated / n,
        "tensor_bytes_after_shrink": shrunk / n,
        "python_bytes": py_bytes / n,
        "total_allocated": (allocated + py_bytes) / n,
    }


def machine():
    def git(*a):
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""

    cpu = ""
    if Path("/proc/cpuinfo").is_file():
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                    .splitlines() if ln.startswith("model name")), "")
    info = {
        "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
        "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": sys.version.split()[0], "torch": torch.__version__,
        "git_commit": git("rev-parse", "HEAD").strip(),
        "git_dirty": bool(git("status", "--porcelain")),
    }
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        info["faiss"] = None
    return info


def to_markdown(res) -> str:
    """The Markdown summary, from the JSON only."""
    cfg = res["config"]
    lines = [
        "# Codebook scale: routing time and memory per entry",
        "",
        (f"Machine: {res['machine']['cpu']} ({res['machine']['cpu_count']} cores), torch "
         f"{res['machine']['torch']}, threads {cfg['threads']}, load average before/after "
         f"{res['loadavg_before']} / {res['loadavg_after']}. tau {TAU}, beta {BETA}, alpha "
         f"{ALPHA}, one step; queries are noisy copies of stored keys. "
         f"Command: `{res['command']}`"),
        "",
        ("| entries | d_ff | batch | plain ms/query | exact ms/query | speed-up | exact == plain |"
         " faiss ms/query | faiss agree (copies / random) | faiss top-1 (copies / random) |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in res["rows"]:
        if "skipped" in row:
            skip = f"| {row['entries']} | {row['d_ff']} | - | skipped: {row['skipped']} |"
            lines.append(skip + " | | | | | |")
            continue
        fa = row.get("faiss")
        for t in row["timings"]:
            f_ms = f"{fa['ms_per_query_b' + str(t['batch'])]:.2f}" if fa else "-"
            agree = f"{fa['agree_copies']:.3f} / {fa['agree_random']:.3f}" if fa else "-"
            top1 = f"{fa['top1_agree_copies']:.3f} / {fa['top1_agree_random']:.3f}" if fa else "-"
            lines.append(
                f"| {row['entries']} | {row['d_ff']} | {t['batch']} | {t['plain_ms_per_query']:.2f}"
                f" | {t['exact_ms_per_query']:.2f} | "
                f"{t['plain_ms_per_query'] / t['exact_ms_per_query']:.1f}x | "
                f"{t['exact_equals_plain']} | {f_ms} | {agree} | {top1} |"
            )
    faiss_rows = [r for r in res["rows"] if r.get("faiss")]
    if faiss_rows:
        lines += ["", "faiss indexes: " + "; ".join(
            f"{r['entries']} x {r['d_ff']}: {r['faiss']['index']}"
            + (f" nlist {r['faiss']['nlist']}" if "nlist" in r["faiss"] else "")
            + f", k {r['faiss']['k']}, nprobe {r['faiss']['nprobe']}"
            + f", build {r['faiss']['build_s']:.1f} s"
            for r in faiss_rows)]
    lines += ["", f"Goal: at most 5 ms per query at 100K entries, d_ff 1536: {res['goal_5ms']}", "",
              ("| d_ff | d_model | goal 4(d_ff+d_model) B | tensors used B | tensors allocated B |"
               " after shrink() B | Python objects B | total allocated B |"),
              "|---|---|---|---|---|---|---|---|"]
    for m in res["memory"]:
        lines.append(f"| {m['d_ff']} | {m['d_model']} | {m['goal_bytes']} | "
                     f"{m['tensor_bytes_used']:.0f} | {m['tensor_bytes_allocated']:.0f} | "
                     f"{m.get('tensor_bytes_after_shrink', float('nan')):.0f} | "
                     f"{m['python_bytes']:.0f} | {m['total_allocated']:.0f} |")
    lines += ["", f"Memory measured on a Codebook of {res['memory'][0]['entries']} entries grown "
              "by add() (capacity doubles; labels are synthetic targets)." if res["memory"] else ""]
    return "\n".join(lines) + "\n"


def goal_verdict(rows) -> str:
    for row in rows:
        if row["entries"] == 100_000 and row["d_ff"] == 1536 and "timings" in row:
            best = {t["batch"]: t["exact_ms_per_query"] for t in row["timings"]}
            fa = row.get("faiss") or {}
            parts = [f"exact {v:.2f} ms at B={b}" for b, v in best.items()]
            parts += [f"faiss {v:.2f} ms at B={k[14:]}" for k, v in fa.items()
                      if k.startswith("ms_per_query_b")]
            ok = any(v <= 5 for v in best.values())
            return ("met by exact" if ok else "not met by exact") + " (" + ", ".join(parts) + ")"
    return "not measured"


def main(argv=None):
    def ints(s):
        return [int(x) for x in s.split(",")]

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch (and faiss) threads")
    p.add_argument("--sizes", type=ints, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dims", type=ints, default=[1536, 14336], help="d_ff values")
    p.add_argument("--batch", type=ints, default=[1, 64], help="queries per routing call")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per cell (median)")
    p.add_argument("--mem-entries", type=int, default=20_000, help="Codebook size for memory")
    p.add_argument("--k", type=int, default=64, help="faiss neighbours per query")
    p.add_argument("--nprobe", type=int, default=16, help="faiss IVF lists probed")
    p.add_argument("--no-faiss", dest="faiss", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/codebook_scale.json")
    args = p.parse_args(argv)
    if args.faiss:
        try:
            import faiss  # noqa: F401
        except ImportError:
            print("faiss-cpu not installed: faiss rows skipped", flush=True)
            args.faiss = False
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    res = {"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
           "config": {**vars(args), "tau": TAU, "beta": BETA, "alpha": ALPHA, "steps": 1},
           "machine": machine(), "loadavg_before": [round(x, 2) for x in os.getloadavg()],
           "rows": [], "memory": []}
    with torch.no_grad():
        for d in args.dims:
            for n in args.sizes:
                res["rows"].append(bench_size(n, d, args, gen))
        labels = [r.target for r in synthetic_stream(min(args.mem_entries, 50_000), args.seed)]
        for d in args.dims:
            d_model = D_MODEL.get(d, d // 4)
            res["memory"].append(memory_per_entry(d, d_model, args.mem_entries, labels))
            print("  memory", res["memory"][-1], flush=True)
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    res["goal_5ms"] = goal_verdict(res["rows"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    md = to_markdown(res)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
