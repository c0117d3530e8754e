"""How often horen.subject.infer_subject finds the dataset's own subject (issue 26).

For every record that names its subject, the inferred span is compared with it: exact
(case-insensitive), or overlapping (one contains the other). Pure text: no model.

    python benchmarks/subject_agreement.py --n 1000 --out results/subject_agreement.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from horen.data import load_dataset
from horen.subject import infer_subject

DATASETS = {
    "zsre": "zsre",
    "counterfact": "counterfact",
    "wikibigedit": "wikibigedit",
    "knowedit": "knowedit/knowedit_zsre_test_shared.json",
}


def agreement(records) -> dict:
    exact = overlap = total = 0
    misses = []
    for r in records:
        if not r.subject:
            continue
        total += 1
        guess, want = infer_subject(r.prompt).lower(), r.subject.lower()
        exact += guess == want
        hit = guess in want or want in guess
        overlap += hit
        if not hit and len(misses) < 5:
            misses.append({"prompt": r.prompt, "subject": r.subject, "inferred": guess})
    return {"records": total, "exact": round(exact / total, 4), "overlap": round(overlap / total, 4),
            "examples_missed": misses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="records per dataset (first N)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default="results/subject_agreement.json")
    args = ap.parse_args()
    out = {"command": f"python benchmarks/subject_agreement.py --n {args.n} --out {args.out}",
           "datasets": {}}
    for name, path in DATASETS.items():
        if "/" in path:
            root = Path(args.data_root or Path(__file__).resolve().parents[2] / "shared" / "data")
            path = str(root / path)
        records = load_dataset(path, n=args.n, data_root=args.data_root).records
        out["datasets"][name] = agreement(records)
        row = out["datasets"][name]
        print(f"{name:12s} {row['records']:5d} records: exact {row['exact']:.3f}, "
              f"overlap {row['overlap']:.3f}")
    Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
