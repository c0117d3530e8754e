"""Read whole answers before and after edits (issue 26/30 review): the demo facts through the
chat template; prints each edit prompt, paraphrase, same-relation control, a same-subject
question ("Where is X based?") and unrelated questions, before and after.

    python benchmarks/read_answers.py                      # horen-entity, question gate, 6 facts
    python benchmarks/read_answers.py --method horen --facts 10 --unrelated 5 --tokens 40
"""
import argparse
import json
import warnings

import torch

import horen
from horen.demo import FACTS, UNRELATED
from horen.subject import infer_subject

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--method", default="horen-entity")
ap.add_argument("--settings", default='{"question_tau": 0.8}',
                help="JSON settings (default: the question gate, for horen-entity)")
ap.add_argument("--facts", type=int, default=6)
ap.add_argument("--unrelated", type=int, default=3)
ap.add_argument("--tokens", type=int, default=32)
args = ap.parse_args()
torch.set_num_threads(2)
warnings.simplefilter("ignore")
settings = json.loads(args.settings) if args.method == "horen-entity" else {}
model, tok = horen.load_model()
facts = FACTS[: args.facts]
same_subj = [f"Where is {infer_subject(p)} based?" for p, *_ in facts]
prompts = [p for f in facts for p in (f[0], f[2], f[3])] + same_subj + UNRELATED[: args.unrelated]
ed = horen.get_method(args.method)(model, tok, chat=True, **settings)
before = ed.generate(prompts, max_new_tokens=args.tokens, stop_at_newline=True)
for p, t, *_ in facts:
    ed.edit(p, t)
after = ed.generate(prompts, max_new_tokens=args.tokens, stop_at_newline=True)
for p, b, a in zip(prompts, before, after):
    print(f"{p!r}\n   before: {b!r}\n   after:  {a!r}")
