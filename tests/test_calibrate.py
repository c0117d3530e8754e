"""tau calibration by routing simulation (tiny model)."""

import math

import torch
from conftest import build

from horen import HoReN
from horen.calibrate import format_table, pooled, simulate, sweep
from horen.codebook import normalize
from horen.data.record import EditRecord


def test_simulation_by_hand():
    """The simulation writes and matches with the editor's own rules (beta 20, alpha 0.1, one
    step), and leaves the editor's codebook and tau as they were."""
    ed = HoReN(*build("llama"), tau=0.3)
    keys = normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05]]))
    probes = normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0]]))
    loc = normalize(torch.tensor([[-1.0, -1.0]]))
    row = simulate(ed, keys, ["a", "b", "a"], probes, ["a", "b"], loc, 0.9)
    assert row.entries == 2  # the third edit matches entry "a": same label, no new entry
    assert (row.rel, row.gen, row.loc) == (1.0, 1.0, 1.0)
    strict = simulate(ed, keys, ["a", "b", "c"], probes, ["a", "b"], loc, 0.9)
    assert strict.entries == 3  # a conflicting label adds an entry
    assert ed.tau == 0.3 and len(ed.codebook) == 0 and ed.codebook.d_key == ed.site.d_in


def test_sweep_on_a_tiny_model_picks_the_best_op():
    model, tok = build("llama")
    ed = HoReN(model, tok)
    records = [
        EditRecord(prompt=p, target=t, rephrases=[r], locality_prompt=l, locality_answer="x")
        for p, t, r, l in [
            ("Who leads Zorblat Industries?", "Mira", "Who runs Zorblat Industries?", "Paris is"),
            ("Which river flows through Cairo?", "Nile", "What river is in Cairo?", "The Nile"),
            ("What is the capital of France?", "Paris", "France's capital is?", "Osk is a"),
        ]
    ]
    rows, best = sweep(ed, records, taus=[-1.0, 0.5, 0.99], pool_ratios=(0.5, 1.0))
    assert len(rows) == 6 and best.op == max(r.op for r in rows if not math.isnan(r.op))
    assert next(r for r in rows if r.tau == -1.0).loc == 0.0  # everything matches
    assert "<- chosen" in format_table(rows, best)
    assert pooled([torch.ones(3, 4)], 0.5).shape == (1, 4)
