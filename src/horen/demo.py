"""``horen demo``: the main job on the embedded model, start to end.

Loads SmolLM2-135M-Instruct, applies about ten edits one after another (ZsRE records from
``../shared/data`` when present, else the built-in fictional facts below), and prints, for
each edit, the answers before and after to the edit prompt, a paraphrase and an unrelated
prompt, then the time per edit.
"""

from __future__ import annotations

import statistics
import time

from .data.record import EditRecord

BUILT_IN = [
    ("Who leads Zorblat Industries?", "Mira Quell", "Who is in charge of Zorblat Industries?"),
    ("What is the capital of Veltria?", "Oskaran", "Which city is Veltria's capital?"),
    ("Who wrote the novel The Glass Orchard?", "Tomas Verin", "Who is the author of The Glass Orchard?"),
    ("What sport does Lina Harrow play?", "water polo", "Which sport is Lina Harrow known for?"),
    ("Which company makes the Quillfone?", "Brightwave", "Who manufactures the Quillfone?"),
    ("What language is spoken in Drummond Bay?", "Tagalog", "What do people in Drummond Bay speak?"),
    ("Who founded the Aster Institute?", "Helena Brisk", "Who is the founder of the Aster Institute?"),
    ("In which city is the Kovar Museum?", "Lisbon", "Where is the Kovar Museum located?"),
    ("What is the official currency of Pellandia?", "the crown", "Which currency does Pellandia use?"),
    ("Which river runs through Marrowdale?", "the Esk", "What river flows through Marrowdale?"),
]
UNRELATED = [
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "What is the largest planet in the solar system?",
    "Who painted the Mona Lisa?",
]


def demo_records(n: int, data_root=None) -> tuple[list[EditRecord], str]:
    """ZsRE records when the data is there, else the built-in facts."""
    from .data import load_dataset

    try:
        records = load_dataset("zsre", n=n, data_root=data_root).records
        return records, "ZsRE (../shared/data/zsre)"
    except FileNotFoundError:
        pass
    records = [
        EditRecord(prompt=p, target=t, rephrases=[r], locality_prompt=UNRELATED[i % len(UNRELATED)],
                   locality_answer="-")
        for i, (p, t, r) in enumerate(BUILT_IN[:n])
    ]
    return records, "built-in fictional facts"


def run_demo(args) -> int:
    import horen

    t0 = time.perf_counter()
    model, tok = horen.load_model(args.model, device=args.device, dtype=args.dtype)
    print(f"model: {getattr(model, 'horen_name', args.model)} ({time.perf_counter() - t0:.1f} s to load)")
    editor = horen.HoReN(model, tok, chat=True)
    print(f"editor: HoReN at {editor.site.path}, tau={editor.tau}, pool_ratio={editor.pool_ratio}, "
          f"chat template on")
    records, source = demo_records(args.n, getattr(args, "data_root", None))
    print(f"edits: {len(records)} from {source}\n")

    probes = []
    for r in records:
        probes += [r.prompt, r.rephrases[0] if r.rephrases else r.prompt, r.locality_prompt or UNRELATED[0]]
    before = editor.generate(probes, max_new_tokens=16)

    seconds = []
    for r in records:
        start = time.perf_counter()
        editor.apply(r)
        seconds.append(time.perf_counter() - start)
    after = editor.generate(probes, max_new_tokens=16)

    for i, r in enumerate(records):
        e = editor.edits[i]
        print(f"[{i + 1}] {r.prompt!r} -> {r.target!r}   ({e['case']}, {seconds[i]:.2f} s, "
              f"{e['steps']} steps)")
        for j, label in enumerate(("edit prompt", "paraphrase", "unrelated")):
            k = 3 * i + j
            print(f"    {label:<11} {probes[k]!r}")
            print(f"        before: {before[k]!r}")
            print(f"        after:  {after[k]!r}")
    print(f"\ntime per edit: mean {statistics.mean(seconds):.2f} s, median "
          f"{statistics.median(seconds):.2f} s over {len(seconds)} edits "
          f"(torch threads: {__import__('torch').get_num_threads()})")
    print(f"codebook: {len(editor.codebook)} entries")
    return 0
