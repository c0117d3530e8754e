"""Which key tells a paraphrase from another relation of the same subject (issue 26)?

Routing-only probe, one entry per record, no value training: for each key design, the
cosine between the edit prompt's key and the key of (a) its paraphrase, (b) its locality
prompt, (c) synthesized prompts about the same subject with another relation
(``horen.calibrate.SAME_SUBJECT``), and the share of each on the right side of a threshold
(paraphrases above, the others below). Designs:

* ``pooled``: HoReN's key (mean of the last 60% of the edit site's input, one damped Hopfield
  step over all the records' keys), the relation gate of ``horen-entity``;
* ``pooled-minus-subject``: the same with the subject's own pooled key (the prompt
  "<subject>") projected out of both sides;
* ``pooled-negatives``: HoReN's key with a per-entry threshold, max(tau, the highest cosine
  of write-time negatives + margin), the negatives built from templates disjoint from
  SAME_SUBJECT (hard negatives synthesized at write time, issue 26 item 3);
* ``question``: the edit site's input at the last prompt token (``question_tau``).

    python benchmarks/relation_keys.py --dataset knowedit --n 300 --threads 2 \\
        --out results/relation_keys_knowedit_n300.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import horen
from horen.calibrate import SAME_SUBJECT, entity_queries
from horen.codebook import normalize, refine
from horen.data import load_dataset

# write-time negatives for ``pooled-negatives``: none of them is in SAME_SUBJECT
NEGATIVES = (
    "{s}", "{s} is", "Where was {s} born?", "What is the occupation of {s}?",
    "Who founded {s}?", "Where is {s} located?", "The country of {s} is", "What genre is {s}?",
)
THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)


def rates(para, loc, same, t) -> dict:
    """Share on the right side of threshold(s) ``t`` (a float or a per-record tensor)."""
    t = torch.as_tensor(t)
    tt = t[:, None] if t.dim() else t
    return {"gen": round(float((para > t).float().mean()), 3),
            "loc": round(float((loc <= t).float().mean()), 3),
            "same": round(float((same <= tt).float().mean()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="knowedit")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    records = load_dataset(args.dataset, n=args.offset + args.n).records[args.offset :]
    records = [r for r in records if r.subject and r.rephrases and r.locality_prompt]
    model, tok = horen.load_model()
    ed = horen.get_method("horen-entity")(model, tok)
    n, s, g = len(records), len(SAME_SUBJECT), len(NEGATIVES)
    prompts = ([r.prompt for r in records] + [r.rephrases[0] for r in records]
               + [r.locality_prompt for r in records]
               + [t.format(s=r.subject) for r in records for t in SAME_SUBJECT]
               + [t.format(s=r.subject) for r in records for t in NEGATIVES])
    pooled, _, question = entity_queries(ed, prompts)
    ed.close()
    pooled, question = normalize(pooled.float()), normalize(question.float())
    parts = torch.split(pooled, [n, n, n, n * s, n * g])
    keys, para, loc, same, neg = parts[0], parts[1], parts[2], parts[3].view(n, s, -1), parts[4]
    neg = neg.view(n, g, -1)
    hop = {"beta": ed.config.beta, "alpha": ed.config.alpha, "steps": 1, "eps": ed.config.hopfield_eps}

    def own(x):  # cosine of each record's query (refined over all keys) with its own key
        return (refine(x, keys, **hop) * keys).sum(-1)

    def own_same(x):
        return torch.stack([own(x[:, j]) for j in range(x.shape[1])], 1)

    out = {"dataset": args.dataset, "offset": args.offset, "records": n,
           "same_subject_templates": list(SAME_SUBJECT), "negative_templates": list(NEGATIVES),
           "designs": {}}
    pooled_scores = (own(para), own(loc), own_same(same))
    out["designs"]["pooled"] = {str(t): rates(*pooled_scores, t) for t in THRESHOLDS}

    subject = neg[:, 0]  # the prompt "<subject>" alone

    def strip(x):
        return normalize(x - (x * subject).sum(-1, keepdim=True) * subject)

    k = strip(keys)
    sc = tuple((strip(refine(x, keys, **hop)) * k).sum(-1) for x in (para, loc))
    sc += (torch.stack([(strip(refine(same[:, j], keys, **hop)) * k).sum(-1)
                        for j in range(s)], 1),)
    out["designs"]["pooled-minus-subject"] = {str(t): rates(*sc, t) for t in (0.3, 0.4, 0.5, 0.6, 0.7)}

    hardest = (neg * keys[:, None]).sum(-1).max(1).values
    out["designs"]["pooled-negatives"] = {
        f"margin {m}": rates(*pooled_scores, torch.clamp(hardest + m, min=0.7))
        for m in (-0.05, 0.0, 0.03)}

    q = torch.split(question, [n, n, n, n * s, n * g])
    qk = q[0]
    sc = ((q[1] * qk).sum(-1), (q[2] * qk).sum(-1), (q[3].view(n, s, -1) * qk[:, None]).sum(-1))
    out["designs"]["question"] = {str(t): rates(*sc, t) for t in THRESHOLDS}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    for name, rows in out["designs"].items():
        for t, r in rows.items():
            print(f"{name:22s} {t:>12s}  gen {r['gen']:.3f}  loc {r['loc']:.3f}  same {r['same']:.3f}")


if __name__ == "__main__":
    main()
