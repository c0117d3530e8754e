"""bench-speed's paths compute the same thing (tiny model; timing is not asserted)."""

import pytest
from conftest import build

import horen
from horen import speed
from horen.data.record import EditRecord

FACTS = [
    ("Who leads Zorblat Industries?", "Paris", "Who runs Zorblat Industries?"),
    ("Which river flows through Cairo?", "Nile", "What river is in Cairo?"),
    ("What is the capital of France?", "Osk", "France's capital is?"),
]


@pytest.fixture
def tiny_zsre(monkeypatch):
    """bench-speed on the tiny Llama, with ``n`` of FACTS standing in for ZsRE."""
    monkeypatch.setattr(horen, "load_model", lambda name=None: build("llama"))
    records = [
        EditRecord(prompt=p, target=t, rephrases=[r], locality_prompt="Paris is", locality_answer="the")
        for p, t, r in FACTS
    ]
    monkeypatch.setattr(
        speed, "load_dataset", lambda name, n: type("D", (), {"records": records[:n]})
    )


def test_reference_and_fast_paths_agree(tiny_zsre, tmp_path):
    r = speed.run_speed(n=3, threads=1, batch_size=4, max_steps=5, out=str(tmp_path))
    assert r["same_codebook_decisions"]
    assert abs(r["op_reference"] - r["op_fast"]) < 0.01
    assert {"edit_speedup", "eval_speedup", "op_reference", "op_fast", "n"} <= set(r)
    assert {"edit_speedup_default", "op_default"} <= set(r) and r["default"]["mean_steps"] >= 1
    assert (tmp_path / "speed__zsre__n3.json").exists()


def test_eval_only_loops_give_the_same_scores(tiny_zsre, tmp_path):
    r = speed.run_eval_speed(n=2, threads=1, batch_size=4, out=str(tmp_path))
    for label in ("teacher_forced", "generation"):
        assert r[label]["reference"][label] == r[label]["fast"][label]
    assert {"eval_speedup_teacher_forced", "eval_speedup_generation", "sequences"} <= set(r)
    assert (tmp_path / "speed_eval__zsre__n2.json").exists()
