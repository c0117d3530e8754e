"""Routing time per query of horen-entity beside plain HoReN, at 10K and 100K entries (issue 26).

Random unit keys (d_ff wide) and anchors, queries that are noisy copies of stored keys with
tokens holding a noisy copy of the entry's anchor among random ones; both routers are timed
in this one process on the same data (median of ``--repeats``), so their ratio is what to
read. ``plain`` is HoReN's router at this size (:class:`horen.index.ExactRouter`, the same
decisions as ``route_cosine(refine(q, K), K, tau)``); ``entity`` is ``route_anchored`` (the
refine and scores, then the anchor check over the candidates);
``entity_question`` adds the question gate as horen-entity's defaults have it (a question key
per entry, threshold 0.8 on half the entries and none on the others).

    python benchmarks/entity_routing_scale.py --threads 2 --out results/entity_routing_scale.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from horen.codebook import normalize, refine, route_anchored, route_cosine
from horen.index import ExactRouter

HOP = {"beta": 20.0, "alpha": 0.1, "steps": 1, "eps": 1e-5}


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--d", type=int, default=1536, help="key and anchor width (d_ff)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=16, help="tokens per query")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/entity_routing_scale.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        keys = normalize(torch.randn(n, args.d, generator=gen))
        anchors = normalize(torch.randn(n, args.d, generator=gen))
        pick = torch.randint(0, n, (args.batch,), generator=gen)
        q = normalize(keys[pick] + 0.3 * torch.randn(args.batch, args.d, generator=gen) / args.d**0.5)
        tokens = []
        for b in range(args.batch):
            t = normalize(torch.randn(args.tokens, args.d, generator=gen))
            t[args.tokens // 2] = normalize(anchors[pick[b]] + 0.01 * torch.randn(args.d, generator=gen))
            tokens.append(t)

        router = ExactRouter()

        def plain(q=q, keys=keys, router=router):
            return router.route(q, keys, 0.7, **HOP)[0]

        naive = route_cosine(refine(q, keys, **HOP), keys, 0.7)[0]

        def entity(q=q, keys=keys, anchors=anchors, tokens=tokens):
            return route_anchored(q, tokens, keys, anchors, 0.7, 0.8, **HOP)

        questions = normalize(torch.randn(n, args.d, generator=gen))
        asked = normalize(questions[pick] + 0.01 * torch.randn(args.batch, args.d, generator=gen))
        limits = torch.where(torch.arange(n) % 2 == 0, 0.8, float("-inf"))

        def entity_question(q=q, keys=keys, anchors=anchors, tokens=tokens, questions=questions,
                            asked=asked, limits=limits):
            return route_anchored(q, tokens, keys, anchors, 0.7, 0.8, questions=asked,
                                  question_keys=questions, question_tau=limits, **HOP)

        same = all(torch.equal(naive, r) for r in (plain(), entity(), entity_question()))
        t_plain, t_entity = timed(plain, args.repeats), timed(entity, args.repeats)
        t_question = timed(entity_question, args.repeats)
        rows.append({"entries": n, "plain_ms_per_query": round(1e3 * t_plain / args.batch, 3),
                     "entity_ms_per_query": round(1e3 * t_entity / args.batch, 3),
                     "entity_question_ms_per_query": round(1e3 * t_question / args.batch, 3),
                     "ratio": round(t_entity / t_plain, 3),
                     "ratio_question": round(t_question / t_plain, 3), "same_rows": same})
        print(json.dumps(rows[-1]))
    out = {"command": "python benchmarks/entity_routing_scale.py --threads "
           f"{args.threads} --out {args.out}", "threads": args.threads, "d": args.d,
           "batch": args.batch, "tokens": args.tokens, "rows": rows,
           "torch": torch.__version__}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
