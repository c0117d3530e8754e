"""WISE on the tiny Llama, Qwen2 and GPT-2 models of conftest.FAMILIES."""

from __future__ import annotations

import pytest
import torch
from conftest import build

from horen.data.record import EditRecord
from horen.editors.base import Editor
from horen.editors.memory.wise import WISE, WISEConfig, mean_pos, ties_merge
from horen.layer import PromptContext
from horen.text import make_batch

R1 = EditRecord("Who leads Zorblat Industries?", "Mira Quell")
R2 = EditRecord("What is the capital of Veltria?", "Osk")
R3 = EditRecord("Which river flows through Cairo?", "Paris")
FAST = {"templates": "bare", "n_iter": 8}


def logits(model, tok, prompts, targets=None):
    batch = make_batch(tok, model, prompts, targets)
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def test_mean_pos_and_ties_merge_by_hand():
    assert mean_pos(torch.tensor([-1.0, 2.0, 4.0])).item() == 3.0
    assert mean_pos(torch.tensor([-1.0, 0.0])).item() == 0.0
    base = torch.zeros(4)
    a, b = torch.tensor([3.0, -1.0, 0.1, 2.0]), torch.tensor([1.0, 2.0, -0.2, -4.0])
    merged = ties_merge(base, [a, b], density=0.5)  # keep 2 of 4 magnitudes each
    # kept: a -> 3, 2 (idx 0, 3); b -> 2, -4 (idx 1, 3); signs: +, +, 0, -; disjoint means
    assert torch.allclose(merged, torch.tensor([3.0, 2.0, 0.0, -4.0]))


def test_no_edit_and_unrouted_prompts_are_bit_identical(family):
    model, tok = build(family)
    base = logits(model, tok, [R1.prompt, "The sky is"])
    ed = WISE(model, tok, **FAST)
    assert torch.equal(logits(model, tok, [R1.prompt, "The sky is"]), base)
    ed.apply(R1)
    ctx = PromptContext.of(make_batch(tok, model, [R1.prompt, "The sky is"]))
    with ed.prompt_context(ctx):
        out = model(input_ids=make_batch(tok, model, [R1.prompt, "The sky is"]).input_ids).logits
    assert ctx.decision[0] == 0  # the edited prompt reaches the live side memory
    for row, choice in enumerate(ctx.decision.tolist()):
        assert torch.equal(out[row], base[row]) == (choice == -1)
    with ed.disabled():
        assert torch.equal(logits(model, tok, [R1.prompt, "The sky is"]), base)


def test_routing_follows_the_thresholds(family):
    """The live shard below act_ratio·threshold is skipped; a saved memory with the larger Δ wins."""
    model, tok = build(family)
    ed = WISE(model, tok, **FAST)
    d_out, d_in = ed.w0.shape
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(3, 5, d_in, generator=gen)
    mask = torch.ones(3, 5)
    base_out = ed.linear(acts, ed.w0)
    assert ed.route(acts, base_out, mask).tolist() == [-1, -1, -1]  # nothing stored
    strong = ed.w0 + torch.randn(d_out, d_in, generator=gen)
    weak = ed.w0 + 0.01 * torch.randn(d_out, d_in, generator=gen)
    ed.memories = [(weak, 0.0), (strong, 0.0)]
    assert ed.route(acts, base_out, mask).tolist() == [1, 1, 1]  # the larger activation
    ed.memories = [(strong, float("inf"))]
    assert ed.route(acts, base_out, mask).tolist() == [-1, -1, -1]  # above every score
    ed.memories = []
    ed.side, ed.shard_edits = strong, [(1, R1, 1e9)]  # a live shard that no prompt reaches
    assert ed.route(acts, base_out, mask).tolist() == [-1, -1, -1]
    ed.shard_edits = [(1, R1, 0.0)]
    assert ed.route(acts, base_out, mask).tolist() == [0, 0, 0]


def test_training_separates_in_scope_from_the_irrelevant_row():
    model, tok = build("gpt2")
    ed = WISE(model, tok, templates="bare", n_iter=30)
    ed.apply(R1)
    info = ed.edits[-1]
    assert info["act_in"] > info["act_out"] and info["steps"] > 1
    assert ed.threshold() == pytest.approx(info["act_in"], rel=1e-3)
    moved = (ed.side - ed.w0).abs()
    assert moved.max() <= ed.config.norm_constraint + 1e-6 and moved.max() > 0


def test_shards_are_saved_and_ties_merged():
    model, tok = build("llama")
    ed = WISE(model, tok, save_freq=1, merge_freq=2, **FAST)
    ed.apply(R1)
    assert ed.memories == [] and len(ed.shard_edits) == 1
    ed.apply(R2)  # shard 0 (R1) saved before R2 trains
    assert len(ed.memories) == 1 and ed.shard == 1 and ed.saved_ids == [1]
    first_mask = ed._mask(0)
    assert not torch.equal(ed.mask, first_mask)  # a new shard, a new mask
    ed.apply(R3)  # shard 1 saved: 2 edits -> the two memories merge into one
    assert len(ed.memories) == 1 and ed.saved_ids == [1, 2] and ed.shard == 2
    with pytest.raises(ValueError, match="saved WISE memory"):
        ed.remove(1)


def test_rollback_retrains_the_shard_exactly(family):
    model, tok = build(family)
    ed = WISE(model, tok, **FAST)
    ed.apply(R1)
    after_one = ed.side.clone()
    e2 = ed.apply(R2)
    assert not torch.equal(ed.side, after_one)
    ed.remove(e2)
    assert torch.equal(ed.side, after_one) and len(ed.shard_edits) == 1
    e3 = ed.apply(R3)
    ed.remove(1)  # the older edit: the shard is retrained on R3 alone
    alone = WISE(build(family)[0], tok, **FAST)
    alone.train(R3, e3)
    assert torch.allclose(ed.side, alone.side) and [e["id"] for e in ed.edits] == [e3]


def test_save_load_round_trip_and_cache_equality(tmp_path):
    model, tok = build("qwen2")
    ed = WISE(model, tok, save_freq=1, merge_freq=1, **FAST)
    ed.apply(R1)
    ed.apply(R2)
    prompts = [R1.prompt, R2.prompt, "The sky is"]
    edited = ed.logits(make_batch(tok, model, prompts))
    path = ed.save(tmp_path / "w")
    fresh, tok2 = build("qwen2")
    loaded = Editor.load(fresh, tok2, path)
    assert isinstance(loaded, WISE) and len(loaded.memories) == 1
    assert torch.equal(loaded.logits(make_batch(tok2, fresh, prompts)), edited)
    assert loaded.generate(prompts, 6) == loaded.generate(prompts, 6, use_cache=False)


def test_config_round_trips_and_validates():
    cfg = WISEConfig()
    assert WISEConfig.from_dict(cfg.to_dict()) == cfg
    # a setting with a default factory (act_margin) that a saved config lacks: its default,
    # in before_settings too (it read MISSING there, a spurious "changed" for older files)
    assert WISEConfig.before_settings()["act_margin"] == cfg.act_margin
    assert WISEConfig.from_dict({}) == cfg
    for f in WISEConfig.__dataclass_fields__.values():
        assert f.metadata.get("help"), f.name
    for bad in ({"templates": "x"}, {"act_margin": [1.0]}, {"save_freq": 3, "merge_freq": 4}):
        with pytest.raises(ValueError):
            WISEConfig(**bad)


def test_every_registered_method_is_covered_by_a_shared_tester():
    from test_editors import CODEBOOK_METHODS
    from test_weight_editors import METHODS

    import horen

    own_files = {"wise", "memoir", "repair", "unke", "unedited"}  # tests/test_<method>.py
    assert set(horen.METHODS) == set(CODEBOOK_METHODS) | set(METHODS) | own_files
