"""``horen demo``: the main job on the embedded model, start to end, judged as a user would.

Loads SmolLM2-135M-Instruct, makes ten fictional edits one after another (the
entity-anchored router ``horen-entity`` by default, ``--method horen`` for the paper's HoReN;
chat template on) and answers four prompts per edit freely (until the model ends its answer,
:mod:`horen.metrics.free`), before and after all edits:

* the edit prompt and a paraphrase: the answer must START with the target and must not
  repeat itself;
* a same-relation control (a real capital after editing a fictional capital): it should
  answer exactly as the base model does; HoReN's routing keys pool the whole prompt, so a
  control sharing the edit's wording can be caught by the edit (the verdict says so), which
  is what horen-entity's subject anchors are for;
* an unrelated control: it must answer exactly as the base model does.

One line of verdicts per edit, then the tally and the time per edit.
"""

from __future__ import annotations

import statistics
import time
import warnings

from .data.record import EditRecord

# (edit prompt, target, paraphrase, same-relation control)
FACTS = [
    ("Who leads Zorblat Industries?", "Mira Quell", "Who is in charge of Zorblat Industries?",
     "Who leads Microsoft?"),
    ("What is the capital of Veltria?", "Oskaran", "Which city is Veltria's capital?",
     "What is the capital of France?"),
    ("Who wrote the novel The Glass Orchard?", "Tomas Verin",
     "Who is the author of The Glass Orchard?", "Who wrote the novel Pride and Prejudice?"),
    ("What sport does Lina Harrow play?", "water polo", "Which sport is Lina Harrow known for?",
     "What sport does Serena Williams play?"),
    ("Which company makes the Quillfone?", "Brightwave", "Who manufactures the Quillfone?",
     "Which company makes the iPhone?"),
    ("What language is spoken in Drummond Bay?", "Tagalog",
     "What do people in Drummond Bay speak?", "What language is spoken in Brazil?"),
    ("Who founded the Aster Institute?", "Helena Brisk",
     "Who is the founder of the Aster Institute?", "Who founded Microsoft?"),
    ("In which city is the Kovar Museum?", "Lisbon", "Where is the Kovar Museum located?",
     "In which city is the Louvre Museum?"),
    ("What is the official currency of Pellandia?", "the crown",
     "Which currency does Pellandia use?", "What is the official currency of Japan?"),
    ("Which river runs through Marrowdale?", "the Esk", "What river flows through Marrowdale?",
     "Which river runs through London?"),
]
UNRELATED = [
    "What is the boiling point of water?",
    "Who painted the Mona Lisa?",
    "What is the largest planet in the solar system?",
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
]
PROBES = ("edit prompt", "paraphrase", "same relation", "unrelated")


def demo_records(n: int) -> list[EditRecord]:
    """The first ``n`` built-in facts as edit records (the unrelated control as locality)."""
    return [
        EditRecord(prompt=p, target=t, rephrases=[r], locality_prompt=UNRELATED[i % len(UNRELATED)],
                   locality_answer="-", source=f"demo#{i}")
        for i, (p, t, r, _) in enumerate(FACTS[:n])
    ]


def verdicts(targets, before, after) -> list[list[tuple[str, bool]]]:
    """Per edit, ``(label, ok)`` for its four probes (answers in :data:`PROBES` order)."""
    from .metrics import is_degenerate, starts_with

    out = []
    for i, target in enumerate(targets):
        k = 4 * i
        rows = []
        for j in (0, 1):
            answer = after[k + j]
            ok = starts_with(answer, target) and not is_degenerate(answer)
            rows.append((PROBES[j], ok))
        for j in (2, 3):
            rows.append((PROBES[j], after[k + j] == before[k + j]))
        out.append(rows)
    return out


def run_demo(args) -> int:
    import torch

    import horen

    from .metrics import free_answers

    t0 = time.perf_counter()
    model, tok = horen.load_model(args.model, device=args.device, dtype=args.dtype)
    print(f"model: {getattr(model, 'horen_name', args.model)} ({time.perf_counter() - t0:.1f} s to load)")
    editor = horen.get_method(args.method)(model, tok, chat=True)
    print(f"editor: {args.method} at {editor.site.path}, tau={editor.tau}, "
          f"pool_ratio={editor.pool_ratio}, chat template on, answers end with the template's "
          "end-of-turn token")
    records = demo_records(args.n)
    print(f"edits: {len(records)} built-in fictional facts; answers decoded freely (greedy, until "
          "the model ends them)\n")
    probes = []
    for i, r in enumerate(records):
        probes += [r.prompt, r.rephrases[0], FACTS[i][3], r.locality_prompt]
    before = free_answers(editor, probes)

    seconds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", horen.NotConvergedWarning)  # shown per edit below
        for r in records:
            start = time.perf_counter()
            editor.apply(r)
            seconds.append(time.perf_counter() - start)
    after = free_answers(editor, probes)
    judged = verdicts([r.target for r in records], before, after)

    for i, r in enumerate(records):
        e = editor.edits[i]
        conv = "" if e["converged"] else f", NOT converged: loss {e['loss']:.3g}"
        print(f"[{i + 1}] {r.prompt!r} -> {r.target!r}   ({e['case']}, {seconds[i]:.2f} s, "
              f"{e['steps']} steps{conv})")
        for j, (label, ok) in enumerate(judged[i]):
            k = 4 * i + j
            verdict = "ok " if ok else "BAD"
            print(f"    {verdict} {label:<14} {probes[k]!r}")
            print(f"          before: {before[k]!r}")
            print(f"          after:  {after[k]!r}")
        print("    verdict: " + ", ".join(f"{label} {'ok' if ok else 'BAD'}" for label, ok in judged[i]))
    print()
    for j, label in enumerate(PROBES):
        good = sum(rows[j][1] for rows in judged)
        rule = "starts with the target, no repetition" if j < 2 else "same answer as the base model"
        print(f"tally: {label:<14} {good}/{len(judged)} ({rule})")
    print(f"\ntime per edit: mean {statistics.mean(seconds):.2f} s, median "
          f"{statistics.median(seconds):.2f} s over {len(seconds)} edits "
          f"(torch threads: {torch.get_num_threads()})")
    print(f"codebook: {len(editor.codebook)} entries")
    return 0
