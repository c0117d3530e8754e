"""How much of an edit MEMIT's closed form writes, for a few values of lambda.

MEMIT's update for one edit at layer l is ΔW = r kᵀ(λC + k kᵀ)⁻¹ (BASELINES.md §3), so the
edited layer gives back ``ΔW k = r · a / (λ + a)`` of the residual r, with ``a = kᵀC⁻¹k``
the key's Mahalanobis norm under C = E[k kᵀ]. With λ = 15000 (the GPT-J and Llama-3 configs,
d_in 16384 and 14336) and a model whose keys have a of a few thousand, each layer writes a
small fraction of its share and the edit mostly does not take.

This script reads the keys of the first ``--n`` records of a dataset under the unedited model
(MEMIT's window layers and context templates, the keys the editor would write) and prints,
per layer, the distribution of a and the median fraction written for each ``--lams`` value.
No edit is made. Example:

    python benchmarks/memit_key_gain.py --n 100 --threads 2 --out results/calibration/memit_key_gain
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from horen import load_model
from horen.bench.results import git_state, machine
from horen.data import load_dataset
from horen.editors.weights.locate import make_request
from horen.editors.weights.memit import MEMIT


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="HF id or directory; default: the embedded model")
    ap.add_argument("--dataset", default="zsre")
    ap.add_argument("--n", type=int, default=100, help="records whose keys are read (the first n)")
    ap.add_argument("--lams", type=float, nargs="+", default=[500, 1500, 5000, 15000])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/calibration/memit_key_gain")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, tok = load_model(args.model)
    editor = MEMIT(model, tok)
    requests = [make_request(r, "memit") for r in load_dataset(args.dataset)[: args.n]]
    layers = editor.config.layers
    covs = editor.covariances(layers)
    keys = editor.template_keys_at(requests, layers, grouped=True)
    rows = []
    for layer in layers:
        k = keys[layer]
        a = (k * torch.linalg.solve(covs[layer], k)).sum(0)  # kᵀC⁻¹k per key
        rows.append({
            "layer": layer, "d_in": k.shape[0],
            "a_median": a.median().item(), "a_min": a.min().item(), "a_max": a.max().item(),
            "written": {str(lam): (a / (lam + a)).median().item() for lam in args.lams},
        })
    result = {"model": getattr(model, "horen_name", model.config._name_or_path),
              "dataset": args.dataset, "n": args.n, "templates": len(editor.context_templates()),
              "mom2_n_tokens": editor.config.mom2_n_tokens, "lams": args.lams, "layers": rows,
              "machine": machine(editor.device), "torch": torch.__version__, "git": git_state()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    head = (f"MEMIT key gain on {result['model']}, the first {args.n} {args.dataset} records "
            f"(unedited model, {result['templates']} templates, C from "
            f"{result['mom2_n_tokens']} tokens). a = kᵀC⁻¹k; written = median a / (λ + a).")
    lines = [head, "",
             "| layer | d_in | a median | a min | a max | "
             + " | ".join(f"written at λ={lam:g}" for lam in args.lams) + " |",
             "|---" * (5 + len(args.lams)) + "|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['d_in']} | {r['a_median']:.0f} | {r['a_min']:.0f} | "
                     f"{r['a_max']:.0f} | " + " | ".join(f"{v:.3f}" for v in r["written"].values()) + " |")
    lines.append("")
    model_arg = f" --model {args.model}" if args.model else ""
    lams = " ".join(f"{lam:g}" for lam in args.lams)
    lines.append(f"Command: `python benchmarks/memit_key_gain.py{model_arg} --n {args.n} --dataset "
                 f"{args.dataset} --lams {lams} --threads {args.threads} --out {args.out}`")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
