"""horen-entity: HoReN whose entries also need their subject in the query (tiny models)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import build

import horen
from horen.editors import EntityHoReN, NotConvergedWarning
from horen.subject import infer_subject, subject_last_token, subject_span
from horen.text import format_prompt, make_batch

P1, S1, T1 = "Who leads Zorblat Industries?", "Zorblat Industries", "Paris"
P2, S2 = "Who leads Veltria?", "Veltria"  # the same relation, another subject
P3 = "Which river flows through Zorblat Industries?"  # the same subject, another relation

pytestmark = pytest.mark.filterwarnings("ignore::horen.NotConvergedWarning")


@pytest.mark.parametrize("prompt,subject", [
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"),
    ("When was the inception of IAAF Combined Events Challenge?", "IAAF Combined Events Challenge"),
    ("Which family does Ramalinaceae belong to?", "Ramalinaceae"),
    ("The official religion of Edwin of Northumbria is", "Edwin of Northumbria"),
    ("What is the family name of Thomas A. Szlezák?", "Thomas A. Szlezák"),
    ("iCloud is created by", "iCloud"),
    ("home counties is within", "home counties"),
    ("who is the river in the north", "river"),  # a tie in length: the earlier run
])
def test_infer_subject_rule(prompt, subject):
    assert infer_subject(prompt) == subject


def test_a_subject_not_in_the_prompt_is_an_error():
    with pytest.raises(ValueError, match="does not occur"):
        subject_span(P1, "Veltria")
    model, tok = build("llama")
    ed = EntityHoReN(model, tok)
    with pytest.raises(ValueError, match="does not occur"):
        ed.edit(P1, T1, subject="Veltria")
    assert len(ed.codebook) == 0 and ed.edits == []


def test_subject_token_is_found_in_plain_and_chat_prompts(family):
    model, tok = build(family)
    for chat in (False, True):
        if chat:
            tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}"
                                 "<|endoftext|>{% endfor %}{% if add_generation_prompt %}<s>"
                                 "assistant: {% endif %}")
        ed = EntityHoReN(model, tok, chat=chat)
        record = horen.EditRecord(P1, T1, subject=S1)
        [(_, pos)] = ed.subject_positions([record])
        ids = make_batch(tok, model, [P1], chat=chat).input_ids[0]
        text = format_prompt(tok, P1, chat)
        assert tok.decode(ids[pos]).strip() in S1
        assert tok.decode(ids[: pos + 1]).endswith(text[: text.rfind(S1) + len(S1)][-3:])
        assert subject_last_token(tok, text, P1, S1) <= pos
        ed.close()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_entity_gate_keeps_same_relation_neighbours_out(family):
    """With the relation gate wide open (tau = -1), only the subject decides: the edit prompt
    and a paraphrase naming the subject match; another subject with the same relation does not.
    (Not the tiny GPT-2: its random learned positions blur a token's identity by layer 1.)"""
    model, tok = build(family)
    ed = EntityHoReN(model, tok, tau=-1.0, anchor_tau=0.7, max_steps=5, question_tau=None)
    ed.edit(P1, T1, subject=S1)
    rows = ed.routes([P1, "Who is in charge of Zorblat Industries?", P2]).tolist()
    assert rows == [0, 0, -1]


def test_the_relation_gate_keeps_other_relations_of_the_subject_out(family):
    model, tok = build(family)
    ed = EntityHoReN(model, tok, tau=0.999, anchor_tau=-1.0, max_steps=5, question_tau=None)
    ed.edit(P1, T1, subject=S1)
    assert ed.routes([P1, P3]).tolist() == [0, -1]


def test_the_question_gate_keeps_other_forms_of_the_subject_out(family):
    """Relation and entity gates wide open: only the last prompt token decides. The edit
    prompt matches; a statement about the same subject does not, unless the gate is off."""
    statement = "Zorblat Industries is led by"
    for question_tau, want in ((0.999, [0, -1]), (None, [0, 0])):
        model, tok = build(family)
        ed = EntityHoReN(model, tok, tau=-1.0, anchor_tau=-1.0, question_tau=question_tau,
                         max_steps=1)
        ed.edit(P1, T1, subject=S1)
        assert ed.routes([P1, statement]).tolist() == want, question_tau
        ed.close()


def test_unmatched_prompts_are_bit_identical_and_edits_learn(family):
    model, tok = build(family)
    batch = make_batch(tok, model, [P2, P1], [T1, T1])
    with torch.no_grad():
        base = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    ed = EntityHoReN(model, tok, tau=-1.0, anchor_tau=0.99, max_steps=100, patience=20,
                     answer_end="none")
    ed.edit(P1, T1, subject=S1)
    logits = ed.logits(batch)
    assert torch.equal(logits[0], base[0])  # a mixed batch: the row that misses is untouched
    last = int(batch.prompt_mask[1].sum()) - 1
    assert int(logits[1, last].argmax()) == tok(" " + T1, add_special_tokens=False).input_ids[0]


def test_save_load_and_rollback_keep_the_anchors(family, tmp_path):
    model, tok = build(family)
    ed = EntityHoReN(model, tok, tau=-1.0, anchor_tau=0.99, max_steps=3)
    ed.edit(P1, T1, subject=S1)
    e2 = ed.edit(P2, "Osk", subject=S2)
    prompts = [P1, P2, P3]
    before = ed.routes(prompts).tolist()
    thresholds = ed.anchor_thresholds()
    ed.save(tmp_path / "e")
    ed.close()
    again = horen.Editor.load(model, tok, tmp_path / "e")
    assert isinstance(again, EntityHoReN)
    assert again.routes(prompts).tolist() == before
    assert torch.equal(again.anchor_thresholds(), thresholds)
    again.remove(e2)
    assert again.routes([P2]).tolist() == [-1] and set(again.anchors) == {0}
    again.close()


def test_only_question_prompts_get_the_question_gate_by_default(family, tmp_path):
    """Relation and entity gates wide open (no background). question_gate='questions': an
    entry written from a statement has no question gate, so a question about its subject
    reaches it; 'all' gates it too. (Entries written from questions: the test above.)
    Saved per entry."""
    statement = "Zorblat Industries is led by"
    for gate, want in (("questions", [0, 0]), ("all", [0, -1])):
        model, tok = build(family)
        ed = EntityHoReN(model, tok, tau=-1.0, anchor_tau=-1.0, question_tau=0.999,
                         question_gate=gate, background_tokens=0, max_steps=1)
        ed.edit(statement, T1, subject=S1)
        assert ed.gated == {0: gate == "all"}
        assert ed.routes([statement, P1]).tolist() == want, gate
        ed.save(tmp_path / gate)
        ed.close()
        again = horen.Editor.load(model, tok, tmp_path / gate)
        assert again.gated == {0: gate == "all"}
        assert again.routes([statement, P1]).tolist() == want
        again.close()


def test_an_edit_set_saved_before_the_question_gate_rule_keeps_its_routing(tmp_path):
    """A set saved before ``question_gate`` existed (no key in its config, no per-entry flags)
    loads with the behaviour it had: question_tau as recorded, the gate on every entry; one
    that recorded no question_tau at all had none."""
    import json

    from safetensors.torch import load_file, save_file

    model, tok = build("llama")
    ed = EntityHoReN(model, tok, tau=-1.0, anchor_tau=-1.0, question_tau=0.999,
                     question_gate="all", max_steps=1)
    ed.edit("Zorblat Industries is led by", T1, subject=S1)
    want = ed.routes(["Zorblat Industries is led by", P1]).tolist()
    assert want == [0, -1]
    ed.save(tmp_path / "e")
    ed.close()
    meta_path = tmp_path / "e" / "edit_config.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["question_gate"]
    meta_path.write_text(json.dumps(meta))
    tensors = load_file(tmp_path / "e" / "edits.safetensors")
    del tensors["question_gated"]
    save_file(tensors, tmp_path / "e" / "edits.safetensors")
    again = horen.Editor.load(model, tok, tmp_path / "e")
    assert again.config.question_gate == "all" and again.gated == {0: True}
    assert again.routes(["Zorblat Industries is led by", P1]).tolist() == want
    again.close()
    config = EntityHoReN.config_class.from_dict({})
    assert config.question_tau is None and config.question_gate == "all"
    assert horen.HoReN.config_class.from_dict({}).optimizer == "adam"


def test_question_keys_are_saved_and_required_when_the_gate_is_on(tmp_path):
    from safetensors.torch import load_file, save_file

    model, tok = build("llama")
    ed = EntityHoReN(model, tok, tau=-1.0, anchor_tau=-1.0, question_tau=0.999, max_steps=1)
    ed.edit(P1, T1, subject=S1)
    ed.edit(P2, "Osk", subject=S2)
    statement = "Zorblat Industries is led by"
    before = ed.routes([P1, P2, statement]).tolist()
    assert before == [0, 1, -1]
    ed.save(tmp_path / "e")
    ed.close()
    again = horen.Editor.load(model, tok, tmp_path / "e")
    assert torch.equal(again.question_matrix(), torch.stack([ed.questions[0], ed.questions[1]]))
    assert again.routes([P1, P2, statement]).tolist() == before
    again.close()
    # a tensors file that lost its question keys is refused, not routed without the gate
    tensors = load_file(tmp_path / "e" / "edits.safetensors")
    del tensors["questions"]
    save_file(tensors, tmp_path / "e" / "edits.safetensors")
    with pytest.raises(ValueError, match="no question keys"):
        horen.Editor.load(model, tok, tmp_path / "e")


def test_micro_batched_writes_equal_one_at_a_time(family):
    records = [horen.EditRecord(P1, T1, subject=S1), horen.EditRecord(P2, "Osk", subject=S2),
               horen.EditRecord(P1, "Nile", subject=S1)]
    out = []
    for micro in (1, 3):
        model, tok = build(family)
        ed = EntityHoReN(model, tok, tau=0.5, anchor_tau=0.9, max_steps=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotConvergedWarning)
            ed.apply_many(records, micro_batch=micro)
        out.append(([e["case"] for e in ed.edits], ed.anchor_matrix()[0]))
        ed.close()
    assert out[0][0] == out[1][0]
    assert torch.allclose(out[0][1], out[1][1], atol=1e-5)


def test_anchor_layer_must_be_below_the_edit_layer():
    model, tok = build("llama")
    with pytest.raises(ValueError, match="below the edit layer"):
        EntityHoReN(model, tok, anchor_layer=3)


def test_entity_calibration_writes_and_routes_as_the_editor_does():
    from horen.calibrate import SAME_SUBJECT, format_entity_table, sweep_entity

    model, tok = build("llama")
    records = [
        horen.EditRecord(P1, T1, rephrases=["Who is in charge of Zorblat Industries?"],
                         locality_prompt=P2, locality_answer="x", subject=S1),
        horen.EditRecord("What is the capital of Veltria?", "Osk", rephrases=[P2],
                         locality_prompt=P3, locality_answer="x", subject=S2),
        # a statement: no question gate under the default rule (question_gate="questions")
        horen.EditRecord("The mother tongue of Danielle Darrieux is", "Osk",
                         rephrases=["What is the mother tongue of Danielle Darrieux?"],
                         locality_prompt="Danielle Darrieux was born in", locality_answer="x",
                         subject="Danielle Darrieux"),
    ]
    rows, best = sweep_entity(lambda layer: EntityHoReN(model, tok, anchor_layer=layer), records,
                              [0, 1], taus=[-1.0, 0.999], anchor_taus=[-1.0, 0.7],
                              question_taus=[None, 0.5])
    assert len(rows) == 16 and best in rows
    assert "<- chosen" in format_entity_table(rows, best)
    # the same decisions as the editor's own writes and routes, for two settings
    for question_tau in (None, 0.5):
        row = next(r for r in rows if (r.anchor_layer, r.tau, r.anchor_tau, r.question_tau)
                   == (1, -1.0, 0.7, question_tau))
        ed = EntityHoReN(model, tok, anchor_layer=1, tau=-1.0, anchor_tau=0.7, max_steps=1,
                         question_tau=question_tau)
        for r in records:
            ed.apply(r)
        routed = ed.routes([r.prompt for r in records]).tolist()
        labels = [ed.codebook.labels[i] if i >= 0 else None for i in routed]
        assert row.rel == sum(a == r.target for a, r in zip(labels, records)) / 3
        assert row.entries == len(ed.codebook)
        loc = ed.routes([r.locality_prompt for r in records]).tolist()
        assert row.loc == sum(i == -1 for i in loc) / 3
        same = ed.routes([t.format(s=r.subject) for r in records for t in SAME_SUBJECT])
        assert row.same == pytest.approx((same == -1).double().mean().item())
        ed.close()


def test_generation_with_and_without_the_cache_agree(family):
    model, tok = build(family)
    ed = EntityHoReN(model, tok, tau=-1.0, anchor_tau=0.7, max_steps=5)
    ed.edit(P1, T1, subject=S1)
    prompts = [P1, P2, "Who is in charge of Zorblat Industries?"]
    assert ed.generate(prompts, max_new_tokens=5) == ed.generate(prompts, max_new_tokens=5,
                                                                 use_cache=False)


def test_all_subject_tokens_must_be_found_with_anchor_tokens_all():
    """'all': one anchor per subject token; a query holding only the subject's last token
    (another name ending the same way) passes 'last' but not 'all'."""
    model, tok = build("llama")
    kwargs = {"tau": -1.0, "anchor_tau": 0.9, "max_steps": 2, "anchor_layer": 0}
    last = EntityHoReN(model, tok, **kwargs)
    last.edit(P1, T1, subject=S1)
    assert last.anchor_matrix()[0].shape[1] == 1
    probe = "Who leads Industries?"
    hits_last = last.routes([P1, probe]).tolist()
    last.close()
    every = EntityHoReN(model, tok, anchor_tokens="all", **kwargs)
    every.edit(P1, T1, subject=S1)
    anchors, mask = every.anchor_matrix()
    n_subject = len(tok(" " + S1, add_special_tokens=False).input_ids)
    assert anchors.shape[1] == int(mask.sum()) == n_subject > 1
    assert every.routes([P1, probe]).tolist() == [0, -1]
    assert hits_last == [0, 0]
    every.close()


def test_route_anchored_takes_the_min_over_anchors_of_the_max_over_tokens():
    from horen.codebook import route_anchored

    e = torch.eye(4)
    keys = e[:1]
    anchors = torch.stack([torch.stack([e[1], e[2]])])  # one entry, two anchors
    q = e[:1]
    both, one = [torch.stack([e[1], e[2], e[3]])], [torch.stack([e[1], e[3]])]
    hop = {"steps": 0}
    assert route_anchored(q, both, keys, anchors, 0.5, 0.9, **hop).tolist() == [0]
    assert route_anchored(q, one, keys, anchors, 0.5, 0.9, **hop).tolist() == [-1]
    mask = torch.tensor([[True, False]])  # only the first anchor is real
    assert route_anchored(q, one, keys, anchors, 0.5, 0.9, anchor_mask=mask, **hop).tolist() == [0]


def test_the_anchor_matrix_follows_writes_and_removals():
    from horen.editors.codebook.entity import _padded

    model, tok = build("llama")
    ed = EntityHoReN(model, tok, tau=-1.0, anchor_tau=0.99, max_steps=1, anchor_tokens="all")
    targets = ((P2, S2, "Osk"), (P1, S1, T1), (P3, S1, "Nile"))
    ids = [ed.edit(p, t, subject=s) for p, s, t in targets]
    assert len(ed.codebook) == 3
    for step in ("writes", "removal"):
        anchors, mask = ed.anchor_matrix()
        want, want_mask = _padded([ed.anchors[i] for i in ed.codebook.ids])
        assert torch.equal(mask, want_mask) and torch.equal(anchors, want), step
        if step == "writes":
            ed.remove(ids[1], cascade=True)


def test_route_anchored_takes_a_threshold_per_anchor():
    from horen.codebook import route_anchored

    e = torch.eye(4)
    keys, q = e[:2], torch.nn.functional.normalize(e[0] + e[1], dim=0)[None]
    anchors = torch.stack([e[2], e[2]])  # two entries, the same anchor
    tokens = [torch.nn.functional.normalize(e[2] + 0.1 * e[3], dim=0)[None]]  # cosine 0.995
    hop = {"steps": 0}
    assert route_anchored(q, tokens, keys, anchors, 0.5, 0.9, **hop).tolist() == [0]
    per_entry = torch.tensor([0.999, 0.9])  # the first entry's anchor is held to more
    assert route_anchored(q, tokens, keys, anchors, 0.5, per_entry, **hop).tolist() == [1]
    per_anchor = torch.tensor([[0.999], [0.999]])
    assert route_anchored(q, tokens, keys, anchors, 0.5, per_anchor, **hop).tolist() == [-1]


def test_an_anchor_found_in_the_background_needs_more_to_match():
    """An anchor's threshold is max(anchor_tau, its background_rank-th best cosine with the
    background text): put the anchor itself into the background and the edit prompt, which
    matched, no longer can (nor its paraphrase); with the background off the threshold is
    anchor_tau."""
    para = "Who is in charge of Zorblat Industries?"
    model, tok = build("llama")
    kwargs = {"tau": -1.0, "anchor_tau": 0.5, "max_steps": 1, "question_tau": None}
    plain = EntityHoReN(model, tok, **kwargs)
    plain.edit(P1, T1, subject=S1)
    anchor, background = plain.anchors[0], plain.background()
    want = (anchor @ background.T).topk(10, dim=1).values[:, -1]
    assert torch.allclose(plain.anchor_scores[0], want)
    assert torch.equal(plain.anchor_thresholds(), want.clamp(min=0.5)[None])
    assert plain.routes([P1, para]).tolist() == [0, 0]
    plain.close()
    held = EntityHoReN(model, tok, background_rank=1, **kwargs)
    held._background = torch.cat([anchor, background])
    held.edit(P1, T1, subject=S1)
    assert held.anchor_thresholds().item() > 0.999
    assert held.routes([para]).tolist() == [-1]
    held.close()
    off = EntityHoReN(model, tok, background_tokens=0, **kwargs)
    off.edit(P1, T1, subject=S1)
    assert off.anchor_thresholds().tolist() == [[0.5]] and off._background is None
    off.close()


def test_an_edit_whose_background_cannot_be_read_writes_nothing(monkeypatch):
    model, tok = build("llama")
    with pytest.raises(ValueError, match="background_corpus must be one of"):
        EntityHoReN(model, tok, background_corpus="wikipedia")
    ed = EntityHoReN(model, tok, tau=-1.0, anchor_tau=0.5, max_steps=1)

    def unreadable():
        raise FileNotFoundError("no background text here")

    monkeypatch.setattr(ed, "_read_background", unreadable)
    with pytest.raises(FileNotFoundError):
        ed.edit(P1, T1, subject=S1)
    assert len(ed.codebook) == 0 and ed.edits == [] and ed.anchors == {}
    monkeypatch.undo()
    ed.edit(P1, T1, subject=S1)  # the editor goes on once the text can be read
    assert ed.routes([P1]).tolist() == [0]
    ed.close()


def test_gated_rows_follow_the_codebook_through_removal_and_saves_without_the_gate(tmp_path):
    model, tok = build("llama")
    ed = EntityHoReN(model, tok, tau=-1.0, anchor_tau=-1.0, question_tau=None, max_steps=1)
    first = ed.edit("Zorblat Industries is led by", T1, subject=S1)
    ed.edit(P2, "Osk", subject=S2)
    assert ed.gated_rows().tolist() == [False, True]
    ed.save(tmp_path / "e")  # no question gate in use: the flags are still saved
    ed.remove(first)
    assert ed.gated_rows().tolist() == [True]
    ed.close()
    again = horen.Editor.load(model, tok, tmp_path / "e")
    assert again.gated_rows().tolist() == [False, True]
    again.close()
