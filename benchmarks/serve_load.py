"""Latency and throughput of ``horen serve`` on localhost (issue 28), bounded.

Starts the real server (a subprocess, a fresh edit set in a temporary folder), then measures
with a real HTTP client, one phase after another:
  1. chat completions one at a time, codebook empty: p50 / p95 latency;
  2. ``--edits`` edits one at a time through ``POST /edits`` (synthetic facts): p50 / p95;
  3. the same chat completions with those edits in the codebook;
  4. ``--clients`` concurrent clients each sending ``--per-client`` completions: throughput.
Nothing else may run meanwhile (2 cores): the numbers are wall-clock.

    python benchmarks/serve_load.py --threads 2 --out results/serve_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

QUESTIONS = [
    "What is the capital of France?",
    "Who wrote Pride and Prejudice?",
    "Which river flows through Cairo?",
    "What is the largest planet of the solar system?",
    "Who painted the Mona Lisa?",
    "In which country is Kyoto?",
]


def percentiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]
    return {"n": len(xs), "p50_s": round(statistics.median(xs), 3), "p95_s": round(p95, 3),
            "mean_s": round(statistics.fmean(xs), 3)}


def start(edits: Path, threads: int, token: str, model: str | None, settings=()) -> tuple:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "horen.cli", "serve", "--edits", str(edits), "--port", str(port),
           "--threads", str(threads), "--token", token, "--device", "cpu"]
    cmd += ["--model", model] if model else []
    for pair in settings:
        cmd += ["--set", pair]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
    for _ in range(1200):
        try:
            if client.get("/health").status_code == 200:
                return proc, client
        except httpx.TransportError:
            time.sleep(0.25)
    proc.kill()
    raise SystemExit("the server did not start within 5 minutes")


def chat(client: httpx.Client, question: str, max_tokens: int) -> float:
    began = time.perf_counter()
    r = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens})
    r.raise_for_status()
    return time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="default: the embedded SmolLM2")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=24, help="sequential completions per phase")
    ap.add_argument("--edits", type=int, default=16, help="edits made one at a time")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--per-client", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="setting of the served edit set (e.g. optimizer=lbfgs)")
    ap.add_argument("--out", default="results/serve_load.json")
    args = ap.parse_args()
    from horen.data import load_dataset

    records = load_dataset("synthetic", n=args.edits).records
    token = "bench"
    auth = {"Authorization": f"Bearer {token}"}
    result = {"command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]), "threads": args.threads,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
              "max_tokens": args.max_tokens, "settings": args.set}
    with tempfile.TemporaryDirectory() as tmp:
        proc, client = start(Path(tmp) / "edits", args.threads, token, args.model, args.set)
        try:
            chat(client, QUESTIONS[0], args.max_tokens)  # warm-up
            qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.requests)]
            result["chat_empty_codebook"] = percentiles([chat(client, q, args.max_tokens) for q in qs])
            times, not_converged = [], 0
            for r in records:
                began = time.perf_counter()
                resp = client.post("/edits", json={"prompt": r.prompt, "target": r.target}, headers=auth)
                resp.raise_for_status()
                times.append(time.perf_counter() - began)
                not_converged += not resp.json()["edits"][0].get("converged", True)
            result["edit_one_at_a_time"] = {**percentiles(times), "not_converged": not_converged}
            result["chat_with_edits"] = {**percentiles([chat(client, q, args.max_tokens) for q in qs]),
                                         "edits": len(records)}
            done, lock = [], threading.Lock()

            def worker(k: int) -> None:
                for j in range(args.per_client):
                    t = chat(client, QUESTIONS[(k + j) % len(QUESTIONS)], args.max_tokens)
                    with lock:
                        done.append(t)

            began = time.perf_counter()
            pool = [threading.Thread(target=worker, args=(k,)) for k in range(args.clients)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            wall = time.perf_counter() - began
            result["concurrent_chat"] = {**percentiles(done), "clients": args.clients,
                                         "requests_per_s": round(len(done) / wall, 3)}
            single = result["chat_with_edits"]["mean_s"]
            result["concurrent_chat"]["speedup_vs_one_at_a_time"] = round(
                single * len(done) / wall, 2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
