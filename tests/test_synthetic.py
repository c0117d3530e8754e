"""The synthetic fact stream: reproducible, distinct, with paraphrases and locality probes."""

from __future__ import annotations

import time

from horen.data.synthetic import RELATIONS, load_synthetic, synthetic_stream


def test_deterministic():
    a, b = synthetic_stream(200, seed=3), synthetic_stream(200, seed=3)
    assert a == b
    assert [r.prompt for r in synthetic_stream(200, seed=4)] != [r.prompt for r in a]


def test_records_are_well_formed():
    recs = synthetic_stream(500, seed=0)
    assert len({r.prompt for r in recs}) == 500
    for r in recs:
        assert r.rephrases and r.rephrases[0] != r.prompt
        assert r.subject in r.prompt and r.subject in r.rephrases[0]
        assert r.locality_prompt and r.locality_answer
        assert r.source.split(":")[-1] in RELATIONS


def test_fallback_locality_without_zsre(tmp_path):
    recs = synthetic_stream(20, seed=0, data_root=tmp_path)  # no zsre/ there
    assert all(r.locality_prompt.startswith("nq question:") for r in recs)


def test_fifty_thousand_is_fast_and_distinct():
    start = time.perf_counter()
    recs = synthetic_stream(50_000, seed=0)
    assert time.perf_counter() - start < 15
    assert len({r.prompt for r in recs}) == 50_000


def test_load_synthetic_name():
    loaded = load_synthetic("synthetic:300:1", n=100)
    assert len(loaded) == 100 and loaded.format == "synthetic"
    assert loaded.records == synthetic_stream(100, seed=1)
