"""Slow tests on the embedded SmolLM2-135M-Instruct (run in CI; minutes on 2 cores)."""

from __future__ import annotations

import pytest
import torch
from conftest import require_shared

import horen
from horen.data import load_dataset
from horen.text import make_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    torch.set_num_threads(2)
    return horen.load_model()


def test_embedded_model_is_the_expected_llama(smollm):
    model, tok = smollm
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("llama", 30, 576)
    assert (cfg.intermediate_size, cfg.vocab_size) == (1536, 49152)
    ed = horen.HoReN(model, tok)
    try:
        assert ed.site.path == "model.layers.27.mlp.down_proj"
        assert (ed.tau, ed.pool_ratio) == (0.775, 0.6)  # calibrated defaults
    finally:
        ed.close()


def test_twenty_zsre_edits_reliability(smollm):
    model, tok = smollm
    require_shared("zsre")
    records = load_dataset("zsre", n=20).records
    ed = horen.HoReN(model, tok)
    try:
        for r in records:
            ed.apply(r)
        assert tf_reliability(ed, tok, model, records) >= 0.9
    finally:
        ed.close()


def tf_reliability(editor, tok, model, records) -> float:
    batch = make_batch(tok, model, [r.prompt for r in records], [r.target for r in records])
    logits = editor.logits(batch)
    rows, cols = batch.target_mask.nonzero(as_tuple=True)
    hit = (logits[rows, cols - 1].argmax(-1) == batch.input_ids[rows, cols]).float()
    per_record = torch.zeros(len(records)).index_add_(0, rows, hit)
    return (per_record / batch.target_mask.sum(1)).mean().item()


@pytest.mark.parametrize("method,settings", [("wise", {}), ("ultraedit", {"lr": 3e-5})])
def test_wise_and_ultraedit_edit_the_embedded_model(smollm, method, settings):
    model, tok = smollm
    require_shared("zsre")
    records = load_dataset("zsre", n=4).records
    ed = horen.get_method(method)(model, tok, **settings)
    try:
        with ed.disabled():
            before = tf_reliability(ed, tok, model, records)
        for r in records:
            ed.apply(r)
        after = tf_reliability(ed, tok, model, records)
        assert after >= before + 0.2, (before, after)
    finally:
        ed.close()


@pytest.mark.parametrize("chat", [True, False])
def test_edited_answers_stop_after_the_target(smollm, chat):
    """Free answers (until the model ends them) to the edit prompts (in chat mode their
    paraphrases too) are the target, whole and not repeated, and unrelated prompts answer as
    the base model does. (Plain prompts' paraphrases are weaker on these fictional facts:
    'Which city is Veltria's capital?' answered "Oskaran's answer is ...".)"""
    from horen.demo import FACTS, UNRELATED
    from horen.metrics import free_answers, is_degenerate, starts_with

    model, tok = smollm
    ed = horen.HoReN(model, tok, chat=chat)
    try:
        before = free_answers(ed, UNRELATED)
        for prompt, target, _, _ in FACTS[:3]:
            ed.edit(prompt, target)
        assert all(e["converged"] for e in ed.edits), ed.edits
        probes = (0, 2) if chat else (0,)
        prompts = [f[i] for f in FACTS[:3] for i in probes]
        answers = free_answers(ed, prompts)
        for answer, target in zip(answers, [f[1] for f in FACTS[:3] for _ in probes]):
            assert starts_with(answer, target) and not is_degenerate(answer), answers
        assert free_answers(ed, UNRELATED) == before
    finally:
        ed.close()


def test_demo_runs(smollm, capsys):
    from horen.cli import main

    assert main(["demo", "--n", "2", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("after:") == 8 and "time per edit" in out
    assert out.count("tally:") == 4 and out.count("verdict:") == 2


def test_a_local_gguf_file_or_its_folder_loads_like_the_embedded_model(tmp_path, monkeypatch):
    from horen.models import _EMBEDDED_GGUF, _embedded_dir

    monkeypatch.setenv("HOREN_CACHE", str(tmp_path / "cache"))
    gguf = _embedded_dir() / _EMBEDDED_GGUF
    model, _ = horen.load_model(str(gguf), device="cpu")
    assert model.config.num_hidden_layers == 30 and model.horen_name == gguf.stem
    again, _ = horen.load_model(str(_embedded_dir()), device="cpu")  # the folder: same cache
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 1
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
