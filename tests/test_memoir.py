"""MEMOIR on the tiny Llama, Qwen2 and GPT-2 models of conftest.FAMILIES.

The tiny models' final RMSNorm bounds their logits, so a landed edit shows as the greedy
answer, not as a small loss. The background mean comes from the 'random' corpus (no files).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build

from horen.data.record import EditRecord
from horen.editors.base import Editor
from horen.editors.memory.memoir import (
    BACKGROUND_SEQ_LEN,
    LAYER_RATIO,
    MEMOIR,
    MEMOIRConfig,
    add_residual,
    mask_overlaps,
    prompt_features,
    route_masks,
    tophash,
)
from horen.editors.memory.wise import WISE
from horen.editors.weights.locate import depth_layer
from horen.stats import Trace, packed_sequences
from horen.text import make_batch

R1 = EditRecord("Who leads Zorblat Industries?", "Mira Quell")
R2 = EditRecord("What is the capital of Veltria?", "Osk")
R3 = EditRecord("Which river flows through Cairo?", "Paris")
OTHER = ["The sky is", "Who runs the firm?", "The mother tongue of Danielle Darrieux is"]
FAST = {"templates": "bare", "background_corpus": "random", "background_tokens": 64}
LANDS = {**FAST, "edit_lr": 10.0}  # lr 1.0 with the norm-1 clip is too slow a walk on d=32


def logits(model, tok, prompts):
    batch = make_batch(tok, model, prompts)
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def edited_logits(ed, prompts):
    return ed.logits(make_batch(ed.tokenizer, ed.model, prompts))


def state_of(ed):
    """Everything that decides the edited model's outputs, cloned."""
    return (ed.residual.clone(), ed.stamp.clone(), ed.clock, ed.masks.clone(),
            list(ed.mask_ids), [list(e) for e in ed.mask_edits])


def assert_same_state(a, b):
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert torch.equal(a[3], b[3]) and a[4:] == b[4:]


def force_masks(ed, masks):
    """Make the next edits write through ``masks`` (one (d_ff,) bool each), in order."""
    todo = list(masks)
    real = ed.mask_of

    def mask_of(acts, mask):
        return todo.pop(0)[None].to(acts.device) if todo and len(acts) == 1 else real(acts, mask)

    ed.mask_of = mask_of


# ---- TopHash and the routing rule, by hand --------------------------------------------------
def test_tophash_and_overlap_by_hand():
    feats = torch.tensor([[0.1, -5.0, 3.0, 0.2, -0.3, 0.0]])
    ident = torch.arange(6)
    assert tophash(feats, 2, ident).nonzero()[:, 1].tolist() == [1, 2]  # |-5|, |3|
    perm = torch.tensor([5, 3, 0, 1, 4, 2])
    assert tophash(feats, 2, perm).nonzero()[:, 1].tolist() == [0, 3]  # perm[1], perm[2]
    other = torch.tensor([[4.0, 0.0, 2.0, 0.0, 0.0, 0.0]])  # top-2 {0, 2}: shares column 2
    for p in (ident, perm):  # π is a bijection: overlaps do not depend on it
        r = mask_overlaps(tophash(feats, 2, p), tophash(other, 2, p), 2)
        assert r.tolist() == [[0.5]]
    acts = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert prompt_features(acts, mask).tolist() == [[2.0, 3.0]]  # padding left out
    assert prompt_features(acts, mask, torch.tensor([1.0, -1.0])).tolist() == [[1.0, 4.0]]


def test_routing_table_by_hand():
    """d_ff 8, k 3, two stored masks; queries at r = 1, 2/3, 1/3 and tau 0.5."""
    def m(*cols):
        out = torch.zeros(8, dtype=torch.bool)
        out[list(cols)] = True
        return out

    stored = torch.stack([m(0, 1, 2), m(5, 6, 7)])
    queries = torch.stack([m(5, 6, 7), m(0, 1, 4), m(2, 3, 4), m(3, 4, 5)])
    choice, best = route_masks(queries, stored, 3, 0.5)
    assert choice.tolist() == [1, 0, -1, -1]
    assert best.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 1 / 3])
    choice, _ = route_masks(queries, stored, 3, 1 / 3)  # r == tau switches it on
    assert choice.tolist() == [1, 0, 0, 1]
    empty, _ = route_masks(queries, stored[:0], 3, 0.5)
    assert empty.tolist() == [-1] * 4


def test_masked_residual_and_its_gradient_equal_the_dense_formula():
    """W_m (a ⊙ m) from the k columns only, and ∇W_m = Σ_t g_t (a_t ⊙ m)ᵀ, zero outside m."""
    gen = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 5, 12, generator=gen), torch.randn(2, 5, 4, generator=gen)
    mask = torch.zeros(12, dtype=torch.bool)
    mask[[1, 4, 9]] = True
    dense = torch.randn(4, 12, generator=gen).requires_grad_(True)
    cols = mask.nonzero(as_tuple=True)[0]
    part = dense.detach()[:, cols].clone().requires_grad_(True)
    g = torch.randn(2, 5, 4, generator=gen)
    want = out + F.linear(x * mask, dense)
    got = add_residual(out, x, cols, part)
    assert torch.allclose(got, want, atol=1e-6)
    (want * g).sum().backward()
    (got * g).sum().backward()
    formula = torch.einsum("bto,bti->oi", g, x * mask)
    assert torch.allclose(dense.grad, formula, atol=1e-5)
    assert torch.all(dense.grad[:, ~mask] == 0)
    assert torch.allclose(part.grad, formula[:, cols], atol=1e-5)


def test_the_layer_applies_the_stored_mask_to_every_token():
    """A query with tau <= r < 1 (a rephrase) gets W_m through the STORED mask, at every
    token; below tau the layer returns W's output itself."""
    from horen.layer import PromptContext

    model, tok = build("llama")
    ed = MEMOIR(model, tok, **{**FAST, "background_tokens": 0}, top_k=8, tau=0.5)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, ed.site.d_in, generator=gen)
    ones = torch.ones(1, 4)
    query = ed.mask_of(x, ones)[0]
    stored = query.clone()
    on, off = query.nonzero()[:, 0], (~query).nonzero()[:, 0]
    stored[on[:2]], stored[off[:2]] = False, True  # r = 6/8
    ed.masks, ed.mask_ids, ed.mask_edits = stored[None], [1], [[1]]
    ed.residual = torch.randn(ed.site.d_out, ed.site.d_in, generator=gen)
    ed._weight = None
    base = ed.layer.base_layer(x)
    with torch.no_grad(), ed.layer.prompt(PromptContext(ones)) as ctx:
        got = ed.layer(x)
    assert ctx.decision.tolist() == [0]
    want = base + F.linear(x * stored, ed.residual)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, base + F.linear(x * query, ed.residual), atol=1e-3)
    ed.config.tau = 0.8  # r = 0.75 < tau: off, bit for bit
    with torch.no_grad(), ed.layer.prompt(PromptContext(ones)) as ctx:
        assert torch.equal(ed.layer(x), base) and ctx.decision.tolist() == [-1]


# ---- on the tiny models ----------------------------------------------------------------------
def test_an_edit_lands_and_routes_to_itself(family):
    model, tok = build(family)
    ed = MEMOIR(model, tok, **LANDS)
    with ed.disabled():
        assert not ed.generate(R1.prompt, 4).startswith(R1.target)
    ed.apply(R1)
    choice, best = ed.routes([R1.prompt])
    assert choice.tolist() == [0] and best.tolist() == [1.0]
    assert ed.generate(R1.prompt, 4).startswith(R1.target)
    assert ed.edits[-1]["case"] == "new" and ed.edits[-1]["loss"] < ed.edits[-1]["loss_start"]


def test_no_edit_and_unrouted_prompts_are_bit_identical(family):
    model, tok = build(family)
    prompts = [R1.prompt, *OTHER]
    base = logits(model, tok, prompts)
    ed = MEMOIR(model, tok, **LANDS, tau=0.9)
    assert torch.equal(logits(model, tok, prompts), base)  # empty memory
    ed.apply(R1)
    choice, best = ed.routes(prompts)
    assert choice[0] == 0 and (choice[1:] == -1).all(), best  # the rule decides, at tau 0.9
    assert [int(ed.routes([p])[0]) for p in prompts] == choice.tolist()  # batching: the same
    out = edited_logits(ed, prompts)
    for row, c in enumerate(choice.tolist()):
        assert torch.equal(out[row], base[row]) == (c == -1)
    with ed.disabled():
        assert torch.equal(edited_logits(ed, prompts), base)
    ed.close()
    assert torch.equal(logits(model, tok, prompts), base)


def test_tophash_masks_are_deterministic_sample_dependent_and_of_size_k(family):
    model, tok = build(family)
    ed = MEMOIR(model, tok, **FAST, top_k=7)
    prompts = [R1.prompt, R2.prompt, R3.prompt, *OTHER]
    masks = ed.prompt_masks(prompts)
    assert masks.shape == (len(prompts), ed.site.d_in) and masks.sum(1).tolist() == [7] * len(prompts)
    assert torch.equal(ed.prompt_masks(prompts), masks)  # same prompts, same masks
    assert torch.equal(ed.prompt_masks([R2.prompt]), masks[1:2])  # batching does not change them
    assert len({tuple(m.nonzero()[:, 0].tolist()) for m in masks}) > 1  # prompts differ
    # π is drawn from the seed and moves the columns, not the overlaps
    other = MEMOIR(build(family)[0], tok, **FAST, top_k=7, seed=1)
    moved = other.prompt_masks(prompts)
    assert not torch.equal(moved, masks)
    assert torch.equal(mask_overlaps(moved, moved, 7), mask_overlaps(masks, masks, 7))
    assert torch.equal(MEMOIR(build(family)[0], tok, **FAST, top_k=7).perm, ed.perm)


def test_the_edit_mask_is_the_bare_prompts_and_only_its_columns_learn():
    model, tok = build("llama")
    ed = MEMOIR(model, tok, **{**FAST, "templates": "generated"})
    ed.apply(R1)
    assert len(ed.templates) == 11
    mask = ed.prompt_masks([R1.prompt])[0]
    assert torch.equal(ed.masks[0], mask)
    assert (ed.residual[:, ~mask] == 0).all() and (ed.residual[:, mask] != 0).any()


def test_background_mean_is_read_once_and_decentres_the_features():
    model, tok = build("llama")
    ed = MEMOIR(model, tok, **{**FAST, "background_tokens": 96})
    mu = ed.background()
    assert ed.background() is mu and mu.shape == (ed.site.d_in,) and mu.abs().sum() > 0
    seqs = list(packed_sequences(tok, "random", 96, BACKGROUND_SEQ_LEN))  # by hand
    means = []
    for seq in seqs:
        with Trace(model, [ed.site.path]) as tr:
            model(input_ids=torch.tensor([seq]))
        means.append(tr.inputs[ed.site.path][0].mean(0))
    assert torch.allclose(mu, torch.stack(means).mean(0), atol=1e-6)
    prompts = [R1.prompt, *OTHER]
    batch = make_batch(tok, model, prompts)
    acts = ed.read_acts(ed.suffix.capture(batch.input_ids, batch.attention_mask))
    raw = prompt_features(acts, batch.pool_mask)
    assert torch.equal(ed.features(acts, batch.pool_mask), raw - mu)
    assert torch.equal(ed.prompt_masks(prompts), tophash(raw - mu, ed.k, ed.perm))
    plain = MEMOIR(build("llama")[0], tok, **{**FAST, "background_tokens": 0})
    assert plain.background() is None
    assert torch.equal(plain.prompt_masks(prompts), tophash(raw, ed.k, ed.perm))
    assert not torch.equal(plain.prompt_masks(prompts), ed.prompt_masks(prompts))


def test_a_missing_background_corpus_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HOREN_DATA", str(tmp_path))  # no wiki_corpus there
    model, tok = build("llama")
    ed = MEMOIR(model, tok, templates="bare", background_corpus="wiki_corpus")
    with pytest.raises(FileNotFoundError, match="background_tokens=0"):
        ed.apply(R1)
    assert ed.edits == [] and not ed.mask_ids and not ed.undo
    ed.config.background_tokens = 0  # no decentring: nothing to read
    ed.apply(R1)
    assert len(ed.mask_ids) == 1


def reference_edit(family, prompts, target, mask, cfg):
    """One edit the plain way: a dense W_m hooked on the whole model, torch's SGD with weight
    decay, the gradient norm clipped, each row's mean target cross-entropy averaged."""
    model, tok = build(family)
    site = MEMOIR(model, tok, **FAST).site
    model, tok = build(family)
    batch = make_batch(tok, model, prompts, [target] * len(prompts))
    dense = torch.zeros(site.d_out, site.d_in, requires_grad=True)
    opt = torch.optim.SGD([dense], lr=cfg.edit_lr, weight_decay=cfg.weight_decay)
    hook = model.get_submodule(site.path).register_forward_hook(
        lambda _m, args, out: out + F.linear(args[0] * mask, dense))
    rows, cols = batch.target_mask.nonzero(as_tuple=True)
    prev = None
    try:
        for it in range(cfg.n_iter + 1):
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            ce = F.cross_entropy(out[rows, cols - 1], batch.input_ids[rows, cols], reduction="none")
            loss = torch.stack([ce[rows == r].mean() for r in range(len(prompts))]).mean()
            if it == cfg.n_iter or (prev is not None and abs(loss.item() - prev) <= 1e-4
                                    and loss.item() <= 0.02):
                break
            prev = loss.item()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([dense], cfg.max_grad_norm)
            opt.step()
    finally:
        hook.remove()
    return dense.detach()


@pytest.mark.parametrize("family,settings", [
    ("llama", {"weight_decay": 1e-2}), ("gpt2", {"weight_decay": 1e-2}),
    ("qwen2", {"weight_decay": 0.0, "max_grad_norm": 1e-3})])
def test_training_equals_plain_sgd_on_a_dense_masked_residual(family, settings):
    """Same W_m up to float rounding (10 steps: at lr 10 GPT-2's rounding grows by step 30)."""
    model, tok = build(family)
    ed = MEMOIR(model, tok, **{**LANDS, "templates": "generated"}, n_iter=10, **settings)
    ed.apply(R1)
    prompts = [t.replace("{}", R1.prompt) for t in ed.templates]
    want = reference_edit(family, prompts, R1.target, ed.masks[0], ed.config)
    assert ed.edits[-1]["steps"] == ed.config.n_iter
    assert torch.allclose(ed.weight(), want, atol=1e-5, rtol=1e-4)
    if ed.config.max_grad_norm < 1:  # every step moved W_m by lr * max_grad_norm at most
        assert ed.weight().norm() <= 10 * ed.config.edit_lr * ed.config.max_grad_norm + 1e-6


def test_training_stops_once_the_loss_is_low_and_flat():
    model, tok = build("llama")
    with torch.no_grad():  # sharper logits: this tiny model can now reach a loss near 0
        model.get_output_embeddings().weight.mul_(30)
    ed = MEMOIR(model, tok, **LANDS, n_iter=100)
    ed.apply(R1)
    assert 1 < ed.edits[-1]["steps"] < 100 and ed.edits[-1]["loss"] <= 0.02


def test_weight_decay_shrinks_earlier_edits_columns(family):
    """Disjoint masks: the first edit's columns are scaled by (1 - lr wd)^steps of the second
    (the authors' decay on all of W_m); untouched with decay_active_only or no decay."""
    for settings in ({"weight_decay": 1e-2}, {"weight_decay": 1e-2, "decay_active_only": True},
                     {"weight_decay": 0.0}):
        model, tok = build(family)
        ed = MEMOIR(model, tok, **LANDS, top_k=6, **settings)
        first, second = (torch.zeros(ed.site.d_in, dtype=torch.bool) for _ in range(2))
        first[:6], second[6:12] = True, True
        force_masks(ed, [first, second])
        ed.apply(R1)
        after_one = ed.weight().clone()
        assert (after_one[:, ~first] == 0).all() and (after_one[:, first] != 0).any()
        ed.apply(R2)
        steps = ed.edits[-1]["steps"]
        assert steps > 0 and (ed.weight()[:, second] != 0).any()
        old = ed.weight()[:, first]
        if ed.decay_all:
            shrink = (1 - ed.config.edit_lr * ed.config.weight_decay) ** steps
            assert torch.allclose(old, after_one[:, first] * shrink, rtol=1e-5, atol=0)
            assert not torch.allclose(old, after_one[:, first], rtol=1e-3, atol=0)
        else:
            assert torch.equal(old, after_one[:, first])


def test_rollback_is_exact_and_cascades_under_decay(family):
    model, tok = build(family)
    prompts = [R1.prompt, R2.prompt, R3.prompt, *OTHER]
    base = logits(model, tok, prompts)
    ed = MEMOIR(model, tok, **LANDS, weight_decay=1e-2)
    ed.apply(R1)
    ed.apply(R2)
    after_two, out_two = state_of(ed), edited_logits(ed, prompts)
    e3 = ed.apply(R3)
    assert ed.clock > 0 and not torch.equal(ed.residual, after_two[0])
    ed.remove(e3)
    assert_same_state(state_of(ed), after_two)
    assert torch.equal(edited_logits(ed, prompts), out_two)
    with pytest.raises(ValueError, match="cascade"):
        ed.remove(1)  # decay on every column: edit 2 trained on what edit 1 decayed
    assert ed.remove(1, cascade=True) == [2, 1]
    assert ed.edits == [] and ed.clock == 0 and not ed.mask_ids and not ed.undo
    assert (ed.residual == 0).all() and (ed.stamp == 0).all()
    assert torch.equal(edited_logits(ed, prompts), base)


def test_rollback_without_decay_keeps_later_edits_on_other_columns():
    """No decay: an older edit goes alone when later masks do not overlap its own, and the
    result is the editor that never saw it."""
    model, tok = build("llama")
    d_ff = model.config.intermediate_size
    masks = [torch.zeros(d_ff, dtype=torch.bool) for _ in range(3)]
    masks[0][:6], masks[1][6:12], masks[2][3:9] = True, True, True
    ed = MEMOIR(model, tok, **LANDS, top_k=6, weight_decay=0.0)
    force_masks(ed, masks)
    ed.apply(R1)
    ed.apply(R2)
    e3 = ed.apply(R3)  # overlaps both
    assert ed._conflicts(ed.edits[0]) == [e3]
    ed.remove(e3)
    ed.remove(1)  # edit 2 did not touch edit 1's columns
    alone = MEMOIR(build("llama")[0], tok, **LANDS, top_k=6, weight_decay=0.0)
    force_masks(alone, [masks[1]])
    alone.apply(R2)
    assert torch.equal(ed.residual, alone.residual) and torch.equal(ed.masks, alone.masks)
    assert [e["id"] for e in ed.edits] == [2]


def test_identical_masks_share_an_entry_until_their_last_edit_goes():
    model, tok = build("llama")
    ed = MEMOIR(model, tok, **LANDS)
    ed.apply(R1)
    e2 = ed.apply(EditRecord(R1.prompt, "Osk"))  # same prompt: same mask
    assert ed.edits[-1]["case"] == "same-mask" and ed.edits[-1]["overlap"] == 1.0
    assert len(ed.mask_ids) == 1 and ed.mask_edits == [[1, e2]]
    ed.remove(e2)
    assert ed.mask_edits == [[1]]
    ed.remove(1)
    assert ed.mask_ids == [] and len(ed.masks) == 0


def test_rollback_window_folds_the_oldest_edits():
    model, tok = build("llama")
    ed = MEMOIR(model, tok, **FAST, rollback_window=1)
    ed.apply(R1)
    e2 = ed.apply(R2)
    assert list(ed.undo) == [e2] and ed.edits[0]["folded"] is True
    with pytest.raises(ValueError, match="rollback_window"):
        ed.remove(1)
    ed.remove(e2)
    assert [e["id"] for e in ed.edits] == [1]


def test_save_load_round_trip(tmp_path, family):
    model, tok = build(family)
    ed = MEMOIR(model, tok, **LANDS)
    ed.apply(R1)
    ed.apply(R2)
    prompts = [R1.prompt, R2.prompt, *OTHER]
    edited = edited_logits(ed, prompts)
    path = ed.save(tmp_path / "m")
    fresh, tok2 = build(family)
    loaded = Editor.load(fresh, tok2, path)
    assert isinstance(loaded, MEMOIR) and loaded.list_edits() == ed.list_edits()
    loaded._read_background = lambda: pytest.fail("the background mean was read again")
    assert torch.equal(loaded.background(), ed.background())  # from the file
    assert_same_state(state_of(loaded), state_of(ed))
    assert torch.equal(edited_logits(loaded, prompts), edited)
    assert loaded.generate(prompts, 5) == loaded.generate(prompts, 5, use_cache=False)
    w0 = build(family)[0].get_parameter(f"{ed.site.path}.weight")
    assert torch.equal(fresh.get_parameter(f"{ed.site.path}.base_layer.weight"), w0)  # unwritten
    ed.apply(R3)  # going on from the file equals going on without it
    loaded.apply(R3)
    assert_same_state(state_of(loaded), state_of(ed))
    loaded.remove(3)
    loaded.remove(1, cascade=True)  # the rollback data came back too
    assert torch.equal(edited_logits(loaded, prompts), logits(build(family)[0], tok2, prompts))


def test_empty_editor_saves_and_loads(tmp_path):
    model, tok = build("qwen2")
    path = MEMOIR(model, tok, **FAST).save(tmp_path / "empty")
    loaded = Editor.load(build("qwen2")[0], tok, path)
    assert loaded.mask_ids == [] and loaded._background is None


def test_config_round_trips_and_validates():
    cfg = MEMOIRConfig()
    assert MEMOIRConfig.from_dict(cfg.to_dict()) == cfg
    for f in MEMOIRConfig.__dataclass_fields__.values():
        assert f.metadata.get("help"), f.name
    bad = ({"tau": 0.0}, {"tau": 1.5}, {"top_k": 0}, {"edit_lr": 0}, {"n_iter": 0},
           {"max_grad_norm": 0}, {"weight_decay": -1e-5}, {"weight_decay": 1.0},
           {"background_tokens": -1}, {"background_corpus": "nope"}, {"templates": "x"},
           {"rollback_window": 0})
    for settings in bad:
        with pytest.raises(ValueError):
            MEMOIRConfig(**settings)
    model, tok = build("llama")
    with pytest.raises(ValueError, match="top_k=65 is larger than d_ff=64"):
        MEMOIR(model, tok, top_k=65)
    with pytest.raises(ValueError, match="unknown setting"):
        MEMOIR(model, tok, irr_threshold=0.4)


def test_defaults_scale_the_authors_layer_and_k():
    assert depth_layer(32, LAYER_RATIO) == 27  # Llama-3-8B: the authors' layer
    assert depth_layer(30, LAYER_RATIO) == 25  # SmolLM2-135M
    model, tok = build("llama")  # 4 layers, d_ff 64
    ed = MEMOIR(model, tok, **FAST)
    assert ed.site.layer == 3 and ed.k == round(64 * 2 / 7) == 18
    assert "method=memoir" in repr(model)


def test_horen_bench_runs_memoir(tmp_path):
    from horen import bench
    from horen.bench import runner

    records = [EditRecord(R1.prompt, R1.target, ["Who runs Zorblat Industries?"],
                          "What is the capital of France?", "Paris"),
               EditRecord(R2.prompt, R2.target, [], "Who runs the firm?", "The chief")]
    cfg = bench.BenchConfig(method="memoir", dataset="toy", n=2, checkpoints=[1], out=str(tmp_path),
                            batch_size=2, overrides=LANDS, progress=False, scorers=["tf"])
    result = runner.run_bench(cfg, records, build("llama"))
    assert result["method"] == "memoir" and len(result["checkpoints"]) == 2
    assert "--method memoir" in result["command"]


@pytest.mark.parametrize("method", [MEMOIR, WISE])
def test_answer_end_auto_trains_the_answer_to_stop(method):
    model, tok = build("llama")
    settings = LANDS if method is MEMOIR else {"templates": "bare", "edit_lr": 10.0}
    ed = method(model, tok, **settings, answer_end="auto")
    assert ed.end_ids == [tok.eos_token_id]
    ed.apply(R1)
    batch = make_batch(tok, model, [R1.prompt], [R1.target])
    after = edited_logits(ed, [R1.prompt + " " + R1.target])[0, batch.input_ids.shape[1] - 1]
    assert int(after.argmax()) == tok.eos_token_id
    assert method(*build("llama"), **settings).end_ids == []  # the authors': the answer only
    with pytest.raises(ValueError, match="answer_end"):
        method.config_class(answer_end="")
