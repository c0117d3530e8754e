"""Read whole answers before and after edits (issue 26/30 review): horen-entity with the
question gate on the first six demo facts, through the chat template; prints each edit
prompt, paraphrase, same-relation control, a same-subject question ("Where is X based?")
and three unrelated questions, before and after.

    python benchmarks/read_answers.py
"""
import warnings

import torch

torch.set_num_threads(2); warnings.simplefilter("ignore")
import horen
from horen.demo import FACTS, UNRELATED
from horen.subject import infer_subject

model, tok = horen.load_model()
facts = FACTS[:6]
same_subj = [f"Where is {infer_subject(p)} based?" for p, *_ in facts]
prompts = [p for f in facts for p in (f[0], f[2], f[3])] + same_subj + UNRELATED[:3]
ed = horen.get_method("horen-entity")(model, tok, chat=True, question_tau=0.8)
before = ed.generate(prompts, max_new_tokens=32, stop_at_newline=True)
for p, t, *_ in facts:
    ed.edit(p, t)
after = ed.generate(prompts, max_new_tokens=32, stop_at_newline=True)
for p, b, a in zip(prompts, before, after):
    print(f"{p!r}\n   before: {b!r}\n   after:  {a!r}")
