"""UnKE (``horen.editors.weights.unke``) on the tiny Llama, Qwen2 and GPT-2 models of
conftest.FAMILIES: the checks of BASELINES-MORE.md §2 "How to test it", plus save/load and
rollback."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import build, require_shared

from horen.data.record import EditRecord
from horen.editors.base import Editor, get_method
from horen.editors.weights import unke as unke_module
from horen.editors.weights.locate import depth_layer
from horen.editors.weights.unke import UnKE, UnKEConfig, capture_block, masked_mse, replay
from horen.text import encode_pair, make_batch

R1 = EditRecord("Who leads Zorblat Industries?", "Mira Quell leads it.")
R2 = EditRecord("Which river flows through Cairo?", "The Nile flows through Cairo, Egypt.")
FAST = {"preserve_corpus": "random", "n_preserve": 4, "preserve_tokens": 16}
LANDS = {**FAST, "lr": 1e-2, "optim_num_step": 100}  # lr 2e-4 x 50 steps barely moves d=32


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(a: dict, b: dict) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


def answer_nll(ed: UnKE, record: EditRecord) -> float:
    """Teacher-forced mean NLL of the answer tokens (answer-end token included)."""
    batch = make_batch(ed.tokenizer, ed.model, [record.prompt], [record.target],
                       end_ids=ed.end_ids)
    with torch.no_grad():
        logits = ed.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    cols = batch.target_mask[0].nonzero()[:, 0]
    return F.cross_entropy(logits[0, cols - 1].float(), batch.input_ids[0, cols]).item()


def question_call(ed: UnKE, prompt: str):
    """Block l's captured call on the question alone, and p (its last token)."""
    q = make_batch(ed.tokenizer, ed.model, [prompt])
    return capture_block(ed.model, ed.block, q.input_ids, q.attention_mask), q.input_ids.shape[1] - 1


# ---- config and registry ------------------------------------------------------------------
def test_registered_config_round_trips_and_validates():
    assert get_method("unke") is UnKE
    cfg = UnKEConfig(lr=5e-4, weight_decay=0.01, restore_after_each=True)
    assert UnKEConfig.from_dict(cfg.to_dict()) == cfg
    assert all(f.metadata.get("help") for f in dataclasses.fields(UnKEConfig))
    assert UnKEConfig().rollback_window == 10 and UnKEConfig().weight_decay == 0.0
    for bad in ({"lr": 0}, {"v_num_grad_steps": 0}, {"n_preserve": -1},
                {"preserve_corpus": "alpaca"}, {"answer_end": ""}, {"rollback_window": 0}):
        with pytest.raises(ValueError):
            UnKEConfig(**bad)
    model, tok = build("llama")
    assert UnKE(model, tok).site.layer == 1  # round(7/32 * 4)
    assert depth_layer(30, unke_module.LAYER_DEPTH) == 7  # SmolLM2-135M


# ---- stage 1 --------------------------------------------------------------------------------
def test_stage1_loss_at_zero_delta_is_the_base_answer_nll(family):
    model, tok = build(family)
    ed = UnKE(model, tok, **FAST, v_num_grad_steps=1)  # one pass: the loss, no update
    assert make_batch(tok, model, [R1.prompt], [R1.target], end_ids=ed.end_ids).input_ids[
        0, -1] == tok.eos_token_id  # the answer ends with EOS
    z, info = ed.compute_z(R1)
    assert info["nll_start"] == pytest.approx(answer_nll(ed, R1), abs=1e-4)
    batch = make_batch(tok, model, [R1.prompt], [R1.target], end_ids=ed.end_ids)
    call = capture_block(model, ed.block, batch.input_ids, batch.attention_mask)
    p = len(encode_pair(tok, R1.prompt, R1.target)[0]) - 1
    assert torch.equal(z, call.output[0, p].float())  # delta = 0: z = h0


@pytest.mark.parametrize("clamp", [0.5, 4.0])
def test_delta_is_projected_onto_the_clamp(family, clamp):
    model, tok = build(family)
    ed = UnKE(model, tok, **FAST, clamp_norm_factor=clamp)
    _, info = ed.compute_z(R1)
    assert info["delta_norm"] <= clamp * info["h0_norm"] * (1 + 1e-4)
    if clamp == 0.5:  # the unprojected delta is longer: the projection is what holds it
        assert info["delta_norm"] >= 0.99 * clamp * info["h0_norm"]
    assert info["nll"] < info["nll_start"]


# ---- the harness ----------------------------------------------------------------------------
def test_replay_reproduces_the_captured_outputs_exactly(family):
    model, tok = build(family)
    ed = UnKE(model, tok, **FAST)
    batch = make_batch(tok, model, [R1.prompt, R2.prompt])  # right-padded: a real mask
    for ids, mask in [(batch.input_ids[:1, : batch.attention_mask[0].sum()], None),
                      (batch.input_ids, batch.attention_mask)]:
        mask = torch.ones_like(ids) if mask is None else mask
        call = capture_block(model, ed.block, ids, mask)
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        assert torch.equal(call.output, hidden.hidden_states[ed.site.layer + 1])
        assert torch.equal(replay(ed.block, call), call.output)
        with torch.enable_grad():  # as in training
            assert torch.equal(replay(ed.block, call), call.output)


def test_preservation_mse_leaves_padding_out():
    out, target = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    target[1, 2] = 100.0  # a padding position
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert masked_mse(out, target, mask).item() == 1.0


def test_noop_edit_leaves_the_block_unchanged(family, monkeypatch):
    """z = h(p) and weight decay 0: zero gradients, the block keeps its bits; with decay it
    does not (so this test can fail)."""
    for decay, same in ((0.0, True), (0.1, False)):
        model, tok = build(family)
        ed = UnKE(model, tok, **FAST, weight_decay=decay)
        call, p = question_call(ed, R1.prompt)
        monkeypatch.setattr(ed, "compute_z", lambda record, c=call, p=p: (c.output[0, p], {}))
        base = weights(model)
        ed.apply(R1)
        assert (changed(base, weights(model)) == set()) == same
        assert ed.edits[-1]["edit_mse_start"] == 0.0 and ed.edits[-1]["keep_mse_start"] == 0.0


# ---- what an edit changes ----------------------------------------------------------------
def test_only_block_l_parameters_change(family):
    model, tok = build(family)
    ed = UnKE(model, tok, **FAST)
    base = weights(model)
    ed.apply(R1)
    diff = changed(base, weights(model))
    block = f"{ed.block_path}."
    assert diff and all(k.startswith(block) for k in diff)
    assert {k for k in base if k.startswith(block) and "weight" in k and "norm" not in k
            and "ln_" not in k} <= diff  # every matrix of the block moved
    assert set(ed.edits[-1]["params"]) == {block + n for n, _ in ed.block.named_parameters()}


def test_edit_writes_z_at_p_and_keeps_the_rest(family, monkeypatch):
    model, tok = build(family)
    ed = UnKE(model, tok, **LANDS)
    seen = {}
    compute_z = ed.compute_z

    def spy(record):
        seen["z"], info = compute_z(record)
        return seen["z"], info

    monkeypatch.setattr(ed, "compute_z", spy)
    before, p = question_call(ed, R1.prompt)
    nll_before = answer_nll(ed, R1)
    keep_ids, keep_mask = ed.preservation_batch(1)
    keep_before = capture_block(model, ed.block, keep_ids, keep_mask).output
    ed.apply(R1)
    after = question_call(ed, R1.prompt)[0].output
    z, h = seen["z"], before.output[0, p].float()
    assert (after[0, p].float() - z).norm() < 0.05 * (z - h).norm()
    shift = (z - h).norm()  # the other positions move far less than p does
    assert (after[0, :p] - before.output[0, :p]).norm(dim=-1).mean() < 0.05 * shift
    keep_after = capture_block(model, ed.block, keep_ids, keep_mask).output
    assert (keep_after - keep_before).norm(dim=-1).mean() < 0.05 * shift
    log = ed.edits[-1]
    assert log["edit_mse"] < 0.01 * log["edit_mse_start"]
    assert answer_nll(ed, R1) < nll_before - 0.05


def test_the_edit_lands_on_the_tiny_model(family):
    """Greedy decoding gives the target (one token: on a random tiny model a single edited
    position moves the first answer token; later ones depend on attention it lacks)."""
    model, tok = build(family)
    ed = UnKE(model, tok, **LANDS)
    prompt = "Who is in charge of the company?"
    targets = [t for t in ("Paris", "Nile", "French", "Osk", "Cairo")
               if len(encode_pair(tok, prompt, t)[1]) == 1]
    with ed.disabled():
        target = next(t for t in targets if ed.generate(prompt, 1) != t)
    ed.edit(prompt, target)
    assert ed.generate(prompt, 1) == target
    with ed.disabled():
        assert ed.generate(prompt, 1) != target


# ---- save, load, rollback -----------------------------------------------------------------
def test_save_load_round_trip(family, tmp_path):
    model, tok = build(family)
    ed = UnKE(model, tok, **FAST)
    ed.apply(R1)
    ed.apply(R2)
    edited = weights(model)
    ed.save(tmp_path / "edits")
    fresh, tok2 = build(family)
    loaded = Editor.load(fresh, tok2, tmp_path / "edits")
    assert isinstance(loaded, UnKE) and loaded.config == ed.config
    assert changed(edited, weights(fresh)) == set()
    assert [e["id"] for e in loaded.list_edits()] == [1, 2]
    loaded.remove(2)
    ed.remove(2)
    assert changed(weights(model), weights(fresh)) == set()


def test_rollback_is_bit_exact_and_the_window_folds(family):
    model, tok = build(family)
    ed = UnKE(model, tok, **FAST)
    base = weights(model)
    ed.apply(R1)
    one = weights(model)
    ed.apply(R2)
    assert ed.remove(2) == [2] and changed(one, weights(model)) == set()
    assert ed.remove(1) == [1] and changed(base, weights(model)) == set()
    ed = UnKE(model, tok, **FAST, rollback_window=1)
    ed.apply(R1)
    assert changed(one, weights(model)) == set()  # deterministic: the same edit, the same bits
    ed.apply(R2)  # folds edit 1 into the base weights
    with pytest.raises(ValueError, match="folded"):
        ed.remove(1)
    ed.remove(2)
    assert changed(one, weights(model)) == set()


def test_restore_after_each_starts_every_edit_from_the_base(family):
    model, tok = build(family)
    ed = UnKE(model, tok, **FAST, restore_after_each=True)
    ed.apply(R1)
    ed.apply(R2)
    assert [e["target"] for e in ed.list_edits()] == [R2.target]
    alone, tok2 = build(family)
    fresh = UnKE(alone, tok2, **FAST)
    fresh.next_edit_id = 2  # the same preservation texts (seeded by the edit id)
    fresh.apply(R2)  # R2 alone on the unedited model
    assert changed(weights(alone), weights(model)) == set()
    with ed.disabled():
        assert changed(weights(build(family)[0]), weights(model)) == set()


def test_preservation_texts_from_the_wikipedia_corpus():
    require_shared("wiki_corpus")
    model, tok = build("llama")
    ed = UnKE(model, tok, n_preserve=5, preserve_tokens=24)
    ids, mask = ed.preservation_batch(1)
    assert ids.shape[0] == 5 and ids.shape[1] <= 24 and (mask[:, 0] == 1).all()
    assert torch.equal(ed.preservation_batch(1)[0], ids)  # seeded by the edit id
    assert not torch.equal(ed.preservation_batch(2)[0], ids)
