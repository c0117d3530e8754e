"""Every codebook editor on tiny Llama, Qwen2 and GPT-2 models (see conftest.FAMILIES)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build
from safetensors.torch import load_file

import horen
from horen.editors import GRACE, HoReN
from horen.editors.codebook.editor import CodebookEditor
from horen.text import make_batch

P1, T1 = "Who leads Zorblat Industries?", "Mira Quell"
P2, T2 = "What is the capital of Veltria?", "Osk"
OTHER = "Which river flows through Cairo?"


def tf_accuracy(ed, prompt, target):
    """Teacher-forced target-token accuracy (argmax), the paper's Rel."""
    batch = make_batch(ed.tokenizer, ed.model, [prompt], [target], chat=ed.config.chat)
    logits = ed.logits(batch)
    rows, cols = batch.target_mask.nonzero(as_tuple=True)
    pred = logits[rows, cols - 1].argmax(-1)
    return (pred == batch.input_ids[rows, cols]).float().mean().item()


def test_edit_site_table(tiny, family):
    model, tok = tiny
    ed = HoReN(model, tok)
    expect = {"llama": "model.layers.3.mlp.down_proj", "qwen2": "model.layers.2.mlp.down_proj",
              "gpt2": "transformer.h.3.mlp.c_proj"}[family]
    assert ed.site.path == expect and ed.site.conv1d == (family == "gpt2")
    assert (ed.site.d_in, ed.site.d_out) == {"llama": (64, 32), "qwen2": (48, 32), "gpt2": (96, 24)}[family]
    assert "CodebookLayer" in repr(model)
    ed.close()
    assert "CodebookLayer" not in repr(model)


def test_edit_is_learned_and_three_update_cases(tiny):
    model, tok = tiny
    ed = HoReN(model, tok, tau=-1.0)  # every prompt matches any entry
    e1 = ed.edit(P1, "Paris")  # one token in the tiny vocabulary
    assert ed.edits[-1]["case"] == "new" and len(ed.codebook) == 1
    assert tf_accuracy(ed, P1, "Paris") == 1.0
    e2 = ed.edit(P2, "Paris")  # match, same label: keep training entry 0
    assert ed.edits[-1]["case"] == "extend" and ed.edits[-1]["entry"] == 0
    assert len(ed.codebook) == 1
    ed.edit(P2, T2)  # match, different label: a new entry
    assert ed.edits[-1]["case"] == "conflict" and len(ed.codebook) == 2
    assert [e["id"] for e in ed.list_edits()] == [e1, e2, 3]
    # stored keys are the pre-refinement queries
    batch = make_batch(tok, model, [P2], [T2])
    acts = ed.read_acts(ed.suffix.capture(batch.input_ids, batch.attention_mask), batch)
    q = ed.query(acts, horen.layer.PromptContext(batch.prompt_mask))
    assert torch.allclose(ed.codebook.keys[1], q[0])


def test_unmatched_prompts_are_bit_identical(tiny):
    model, tok = tiny
    batch = make_batch(tok, model, [OTHER, P2], [T2, T1])
    with torch.no_grad():
        base = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    ed = HoReN(model, tok, tau=0.999999)
    ed.edit(P1, T1)
    assert (ed.routes([OTHER, P2]) == -1).all()
    assert torch.equal(ed.logits(batch), base)
    with ed.disabled():
        ed_batch = make_batch(tok, model, [P1], [T1])
        with torch.no_grad():
            raw = model(input_ids=ed_batch.input_ids, attention_mask=ed_batch.attention_mask).logits
    assert not torch.equal(ed.logits(ed_batch), raw)  # the edit prompt does change


@pytest.mark.parametrize("method", ["horen", "grace"])
def test_rows_that_miss_are_bit_identical_beside_rows_that_match(tiny, method):
    """In a batch where one row matches and the other does not, the other row's output is the
    base model's bit for bit, even when the matched value is not finite (a missing row used
    to get ``out + 0 * delta``: NaN for an infinite delta)."""
    model, tok = tiny
    batch = make_batch(tok, model, [P1, OTHER], [T1, T2])
    with torch.no_grad():
        base = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    tight = {"tau": 0.999999} if method == "horen" else {"eps_init": 1e-3}
    ed = horen.get_method(method)(model, tok, max_steps=3, **tight)
    ed.edit(P1, T1)
    assert ed.routes([P1, OTHER]).tolist() == [0, -1]
    ed.codebook.set_value(0, torch.full_like(ed.codebook.values[0], float("inf")))
    mixed = ed.logits(batch)
    assert torch.equal(mixed[1], base[1])
    assert not torch.isfinite(mixed[0]).all()


def test_truncated_training_equals_full_forward(tiny):
    model, tok = tiny
    ed = HoReN(model, tok, early_stop=False, max_steps=8)
    # prompts and targets of different lengths: the tail aligns the last prompt tokens
    batch = make_batch(tok, model, [P1, "Paris", OTHER], [T1, "the long river Nile", "Osk"])
    init = torch.zeros(3, ed.site.d_out)
    fast, s1 = ed.train_value(init, batch, truncated=True)
    slow, s2 = ed.train_value(init, batch, truncated=False)
    # float32 sums differ in order between the two paths and 8 L-BFGS steps carry that
    # (3e-4 on an AMD EPYC, values ~1-6); a misaligned tail differs by whole units
    assert torch.allclose(fast, slow, atol=1e-3, rtol=1e-3)
    for a, b in zip(s1, s2):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)


def test_tail_logits_equal_full_model_logits(tiny):
    model, tok = tiny
    ed = HoReN(model, tok)
    batch = make_batch(tok, model, [P1, "Paris", OTHER], [T1, "the long river Nile", "Osk"])
    values = torch.randn(3, ed.site.d_out)
    rows, tail_logits, labels = ed._tail_forward(batch)(values)
    rows2, full_logits, labels2 = ed._full_forward(batch)(values)
    assert torch.equal(rows, rows2) and torch.equal(labels, labels2)
    assert torch.allclose(tail_logits, full_logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(tail_logits, ed._tail_forward(batch)(values * 0)[1], atol=1e-3)


def test_cache_and_no_cache_generation_agree(tiny):
    model, tok = tiny
    ed = HoReN(model, tok, tau=-1.0)
    ed.edit(P1, T1)
    prompts = [P1, OTHER, "Paris"]  # different lengths: left padding
    with_cache = ed.generate(prompts, max_new_tokens=6, use_cache=True)
    without = ed.generate(prompts, max_new_tokens=6, use_cache=False)
    assert with_cache == without
    assert ed.generate(P1, max_new_tokens=6) == with_cache[0]


def test_batched_padded_routing_matches_single(tiny):
    model, tok = tiny
    ed = HoReN(model, tok, tau=0.5)
    ed.edit(P1, T1)
    ed.edit(P2, T2)
    prompts = [P1, "Osk", OTHER, P2]
    together = ed.routes(prompts)
    alone = torch.cat([ed.routes([p]) for p in prompts])
    assert torch.equal(together, alone)


def test_save_load_round_trip(tiny, family, tmp_path):
    model, tok = tiny
    ed = HoReN(model, tok, tau=0.5, max_steps=5)
    ed.edit(P1, T1)
    ed.edit(P2, T2)
    batch = make_batch(tok, model, [P1, P2, OTHER], [T1, T2, T1])
    before = ed.logits(batch)
    ed.save(tmp_path / "edits")
    tensors = load_file(tmp_path / "edits" / "edits.safetensors")
    assert set(tensors) <= {"keys", "values", "radii"} | {k for k in tensors if k.startswith("undo.")}
    meta = json.loads((tmp_path / "edits" / "edit_config.json").read_text())
    assert meta["method"] == "horen" and len(meta["edits"]) == 2
    fresh, tok2 = build(family)  # a freshly built base model, same weights
    loaded = horen.Editor.load(fresh, tok2, tmp_path / "edits")
    assert isinstance(loaded, HoReN) and loaded.config.tau == 0.5
    assert torch.equal(loaded.logits(batch), before)
    assert loaded.list_edits() == ed.list_edits()


def test_save_is_atomic(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    ed = HoReN(model, tok, max_steps=2)
    ed.edit(P1, T1)
    ed.save(tmp_path / "e")
    ed.edit(P2, T2)

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("horen.editors.base.save_file", crash)
    with pytest.raises(OSError):
        ed.save(tmp_path / "e")
    meta = json.loads((tmp_path / "e" / "edit_config.json").read_text())
    assert len(meta["edits"]) == 1  # the previous save is intact
    assert [p.name for p in tmp_path.iterdir()] == ["e"]


def test_load_onto_another_model_fails(tiny, family, tmp_path):
    model, tok = tiny
    ed = HoReN(model, tok, max_steps=2)
    ed.edit(P1, T1)
    ed.save(tmp_path / "e")
    other, tok2 = build(family, seed=1)  # same shapes, other weights
    with pytest.raises(ValueError, match="fingerprint"):
        HoReN.load(other, tok2, tmp_path / "e")
    assert "CodebookLayer" not in repr(other)  # nothing left behind
    wrong_family = "gpt2" if family != "gpt2" else "llama"
    other, tok3 = build(wrong_family)
    with pytest.raises(ValueError, match="another model"):
        HoReN.load(other, tok3, tmp_path / "e")


def test_rollback_restores_previous_answers(tiny):
    model, tok = tiny
    # short first steps: on a tiny random model the first edit's value ends at a plateau from
    # which the default first step finds no decrease, and the extending edit must move it
    ed = HoReN(model, tok, tau=-1.0, max_steps=10, lr=0.01)
    batch = make_batch(tok, model, [P1, P2], [T1, T2])
    e1 = ed.edit(P1, T1)
    after_first = ed.logits(batch)
    e2 = ed.edit(P2, T1)  # extends entry 0
    assert not torch.equal(ed.logits(batch), after_first)
    with pytest.raises(ValueError, match="built on"):
        ed.remove(e1)
    assert ed.remove(e2) == [e2]
    assert torch.equal(ed.logits(batch), after_first)
    e3 = ed.edit(P2, T2)  # conflict: new entry
    assert ed.edits[-1]["touches"] == [ed.edits[-1]["entry"]]  # e3 touches only its own entry
    assert ed.remove(e1) == [e1]
    assert [e["id"] for e in ed.edits] == [e3]
    with pytest.raises(KeyError):
        ed.remove(e1)


def test_rollback_of_everything_gives_the_base_model(tiny):
    model, tok = tiny
    batch = make_batch(tok, model, [P1, P2], [T1, T2])
    with torch.no_grad():
        base = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    ed = HoReN(model, tok, tau=-1.0, max_steps=3)
    ids = [ed.edit(P1, T1), ed.edit(P2, T2)]
    for eid in reversed(ids):
        ed.remove(eid)
    assert len(ed.codebook) == 0 and torch.equal(ed.logits(batch), base)


@pytest.mark.parametrize("target", ["", "   "])
def test_empty_target_rejected_nothing_changes(tiny, target):
    model, tok = tiny
    ed = HoReN(model, tok, max_steps=2)
    ed.edit(P1, T1)
    with pytest.raises(ValueError, match="target"):
        ed.edit(P2, target)
    assert len(ed.codebook) == 1 and len(ed.edits) == 1


def test_prompt_longer_than_context_rejected(tiny):
    model, tok = tiny
    ed = HoReN(model, tok, max_steps=2)
    with pytest.raises(ValueError, match="context"):
        ed.edit("Paris " * 200, T1)
    assert len(ed.codebook) == 0 and ed.edits == []


def test_unknown_architecture_error_says_how_to_pass_a_path(tiny):
    model, tok = tiny
    model.config.model_type = "mystery"
    with pytest.raises(ValueError, match="dotted path"):
        HoReN(model, tok)


def test_dotted_path_overrides_the_table(tiny, family):
    model, tok = tiny
    path = {"gpt2": "transformer.h.1.mlp.c_proj"}.get(family, "model.layers.1.mlp.down_proj")
    ed = HoReN(model, tok, layer=path, max_steps=3)
    assert ed.site.layer == 1 and ed.site.path == path
    ed.edit(P1, T1)
    assert len(ed.codebook) == 1


def test_grace_split_and_expand(tiny):
    model, tok = tiny
    ed = GRACE(model, tok, eps_init=1e6, max_steps=3)  # huge radius: everything overlaps
    ed.edit(P1, T1)
    d = torch.cdist(ed.queries([P2]), ed.codebook.keys)[0, 0].item()
    ed.edit(P2, T1)  # same label inside the radius: no new entry
    assert ed.edits[-1]["case"] == "extend" and len(ed.codebook) == 1
    ed.edit(P2, T2)  # different label: split
    assert ed.edits[-1]["case"] == "conflict" and len(ed.codebook) == 2
    assert ed.codebook.radii[0].item() == pytest.approx(d / 2 - 1e-5, rel=1e-4)
    assert ed.codebook.radii[1].item() == pytest.approx(d / 2, rel=1e-4)
    ed.remove(3)
    assert ed.codebook.radii[0].item() == pytest.approx(1e6)


def test_grace_replaces_output_at_last_token(tiny):
    model, tok = tiny
    ed = GRACE(model, tok, max_steps=30)
    ed.edit(P1, "Paris")
    assert tf_accuracy(ed, P1, "Paris") == 1.0
    assert ed.routes([P1]).tolist() == [0]


CODEBOOK_METHODS = sorted(m for m, c in horen.METHODS.items() if issubclass(c, CodebookEditor))


@pytest.mark.parametrize("method", CODEBOOK_METHODS)
def test_every_codebook_method_edits_saves_and_loads(tiny, method, tmp_path):
    model, tok = tiny
    cls = horen.get_method(method)
    ed = cls(model, tok, max_steps=3)
    ed.edit(P1, T1)
    ed.save(tmp_path / method)
    ed.close()
    again = horen.Editor.load(model, tok, tmp_path / method)
    assert type(again) is cls and len(again.codebook) == 1
    assert cls.config_class.from_dict(again.config.to_dict()) == again.config


def test_lora_values(tiny):
    model, tok = tiny
    ed = HoReN(model, tok, value="lora", lr=0.5, max_steps=40, answer_end="none")
    ed.edit(P1, "Paris")
    r = ed.config.lora_rank
    assert ed.codebook.values.shape == (1, r * (ed.site.d_in + ed.site.d_out))
    assert ed.edits[-1]["loss"] < ed.edits[-1]["loss_start"] - 0.2  # tiny activations: slow


def test_easyedit_batch_call(tiny):
    model, tok = tiny
    ed = HoReN(model, tok, max_steps=2)
    ids = ed.batch_edit(prompts=[P1, P2], target_new=[T1, T2], rephrase_prompts=[OTHER, OTHER],
                        locality_inputs={"nq": {"prompt": ["a", "b"], "ground_truth": ["x", "y"]}})
    assert ids == [1, 2] and len(ed.codebook) == 2


STREAM = [(P1, "Paris"), (P2, "Cairo"), ("Who runs Zorblat Industries?", "Paris"), (OTHER, "Nile"),
          (P2, "Paris"), ("Osk is a city in", "Veltria"), (P1, "Paris"), (OTHER, "Cairo")]


@pytest.mark.parametrize("method,tau", [("horen", -1.0), ("horen", 0.9), ("grace", None)])
def test_micro_batched_editing_equals_one_at_a_time(family, method, tau):
    from horen.data.record import EditRecord

    records = [EditRecord(prompt=p, target=t) for p, t in STREAM]
    kwargs = {"max_steps": 12} | ({"tau": tau} if tau is not None else {"eps_init": 50.0})
    runs = []
    for micro_batch in (1, 3, 8):
        model, tok = build(family)
        ed = horen.get_method(method)(model, tok, **kwargs)
        ed.apply_many(records, micro_batch=micro_batch)
        runs.append(ed)
    one, *batched = runs
    decisions = [(e["case"], e["entry"], e["touches"]) for e in one.edits]
    assert len({c for c, _, _ in decisions}) >= 2  # the stream exercises several cases
    for ed in batched:
        assert [(e["case"], e["entry"], e["touches"]) for e in ed.edits] == decisions
        assert torch.allclose(ed.codebook.keys, one.codebook.keys, atol=1e-5)  # padding: fp noise
        # batched and one-at-a-time float32 sums differ in order; L-BFGS carries it (1.6e-3
        # on an AMD EPYC, values ~1-8); the decisions above are compared exactly
        assert torch.allclose(ed.codebook.values, one.codebook.values, atol=5e-3)
        assert torch.allclose(ed.codebook.radii, one.codebook.radii, atol=1e-6)
        assert set(ed.undo) == set(one.undo)


CHAT = ("{% for m in messages %}<s>user: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def test_chat_prompts_pool_over_the_message_only(tiny):
    from horen.text import encode_prompt, pool_positions

    model, tok = tiny
    tok.chat_template = CHAT
    ids = encode_prompt(tok, P1, chat=True)
    mask = pool_positions(tok, P1, chat=True)
    assert len(mask) == len(ids) and 0 < sum(mask) < len(ids)
    content = tok.decode([i for i, m in zip(ids, mask) if m])
    assert content.strip() == P1
    assert mask[-1] == 0  # the last token (where the value goes) is the template's
    ed = HoReN(model, tok, chat=True, tau=-1.0, max_steps=20)
    ed.edit(P1, "Which")  # one token without a leading space (chat answers start bare)
    assert tf_accuracy(ed, P1, "Which") == 1.0
    assert ed.generate([P1, OTHER], 4) == ed.generate([P1, OTHER], 4, use_cache=False)


def test_big_codebooks_route_through_the_exact_router_with_the_same_decisions(tiny):
    from horen.codebook import normalize, refine, route_cosine
    from horen.editors.codebook.horen import EXACT_ROUTER_MIN

    model, tok = tiny
    ed = HoReN(model, tok, tau=0.3)
    gen = torch.Generator().manual_seed(0)
    keys = normalize(torch.randn(EXACT_ROUTER_MIN + 10, ed.site.d_in, generator=gen))
    for k in keys:
        ed.codebook.add(k, torch.zeros(ed.site.d_out), "x")
    q = normalize(keys[:40] + 0.5 * torch.randn(40, ed.site.d_in, generator=gen))
    plain = route_cosine(refine(q, ed.codebook.keys), ed.codebook.keys, 0.3)[0]
    assert torch.equal(ed.match(q), plain)
    pytest.importorskip("faiss")
    ed.close()
    approx = HoReN(model, tok, tau=0.3, index="faiss")
    for k in keys:
        approx.codebook.add(k, torch.zeros(ed.site.d_out), "x")
    assert (approx.match(keys[:5]) == torch.arange(5)).all()  # stored keys find themselves


def test_a_model_whose_layers_do_not_replay_trains_through_the_full_model(tiny, monkeypatch):
    model, tok = tiny
    ed = HoReN(model, tok, early_stop=False, max_steps=3)
    real = ed.suffix.logits
    monkeypatch.setattr(ed.suffix, "logits", lambda *a: real(*a) + 1.0)  # a broken replay
    batch = make_batch(tok, model, [P1], [T1])
    with pytest.warns(UserWarning, match="full model"):
        broken, _ = ed.train_value(torch.zeros(1, ed.site.d_out), batch)
    assert ed._tail_ok is False
    full, _ = ed.train_value(torch.zeros(1, ed.site.d_out), batch, truncated=False)
    assert torch.equal(broken, full)


def test_logits_at_chosen_columns_equal_the_full_logits_there(tiny):
    model, tok = tiny
    ed = HoReN(model, tok, tau=-1.0)
    ed.edit(P1, T1)
    batch = make_batch(tok, model, [P1, OTHER], [T1, "Osk"])
    columns = torch.tensor([1, 3, batch.input_ids.shape[1] - 1])
    with torch.no_grad():
        assert torch.allclose(ed.logits(batch, columns), ed.logits(batch)[:, columns], atol=1e-5)
