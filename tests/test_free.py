"""The free-generation scorer (horen.metrics.free) and the end-of-answer training it checks."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from conftest import build

from horen import metrics as M
from horen.data.record import EditRecord
from horen.editors import HoReN, NotConvergedWarning
from horen.editors.codebook.training import end_weights
from horen.layer import PromptContext
from horen.text import answer_end_ids, make_batch

P1, T1 = "Who leads Zorblat Industries?", "Mira Quell"
P2, T2 = "What is the capital of Veltria?", "Osk"


@pytest.mark.parametrize("answer", [
    "Ken Duncan Duncan Duncan",
    "the crown crown crown crown crown",
    "Brightwavewavewavewavewave",
    "Lecuminaalesalesales",
    "19981999199920002001200220032004",
    "Mira Quellin Quellin Quellin Quell",
    "a Volvo B12M, a Volvo B12M, a Volvo B12M, a",
    "Yes. No. Yes. No. Yes. No.",
])
def test_degenerate_answers_are_caught(answer):
    assert M.is_degenerate(answer)


@pytest.mark.parametrize("answer", [
    "Ken Duncan",
    "The capital of France is Paris.",
    "1000000",
    "Mississippi",
    "It is 1998, the year the band formed in the city of the river of the north.",
    "Zzz",
    "",
])
def test_clean_answers_are_not_degenerate(answer):
    assert not M.is_degenerate(answer)


def test_hit_is_a_whole_word_prefix_after_normalization():
    assert M.starts_with("The Esk, a river in England.", "the Esk")
    assert M.starts_with("esk", "The Esk")
    assert M.starts_with("Mira Quell.", "Mira Quell")
    assert not M.starts_with("Eskimo", "Esk")
    assert not M.starts_with("It is Mira Quell", "Mira Quell")
    assert not M.starts_with("anything", "  ")


def test_mention_reads_the_first_sentence_only():
    assert M.mentions("It was designed by Mira Quell. Later...", "Mira Quell")
    assert not M.mentions("It was designed by Ann. Later Mira Quell took over.", "Mira Quell")
    assert M.first_sentence("Dr. Who? No.") == "Dr."  # a documented simplification
    assert M.judge("Ken Duncan Duncan Duncan", "Ken Duncan") == {
        "hit": 1.0, "mention": 1.0, "degenerate": 1.0}


def test_answer_end_ids_resolve_for_plain_chat_and_stop_strings():
    _, tok = build("gpt2")
    eos = tok.eos_token_id
    assert answer_end_ids(tok, chat=False) == [eos]
    assert answer_end_ids(tok, chat=False, setting="none") == []
    assert answer_end_ids(tok, chat=False, setting="\n") == tok("\n", add_special_tokens=False).input_ids
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}"
                         "<|endoftext|>{% endfor %}{% if add_generation_prompt %}<s>assistant: {% endif %}")
    assert answer_end_ids(tok, chat=True) == [eos]


def test_end_tokens_are_training_targets_not_scored_ones():
    model, tok = build("llama")
    plain = make_batch(tok, model, [P1], [T1])
    ended = make_batch(tok, model, [P1], [T1], end_ids=[tok.eos_token_id])
    assert int(ended.target_mask.sum()) == int(plain.target_mask.sum()) + 1
    last = ended.target_mask[0].nonzero()[-1]
    assert int(ended.input_ids[0, last]) == tok.eos_token_id


@pytest.mark.parametrize("setting,ends", [("auto", True), ("none", False)])
def test_values_are_trained_to_end_the_answer_after_the_target(setting, ends):
    """The value's loss covers the end-of-sequence token after the target (answer_end auto);
    the paper's training (none) stops at the target. (The tiny models cannot learn a token
    after the first from one vector at their last layer: the embedded model's slow test
    checks the answers stop.)"""
    model, tok = build("llama")
    ed = HoReN(model, tok, max_steps=2, answer_end=setting)
    seen = []
    train = ed.train_value
    ed.train_value = lambda init, batch: seen.append(batch) or train(init, batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvergedWarning)
        ed.edit(P1, T1)
    batch = seen[0]
    labels = batch.input_ids[batch.target_mask.bool()]
    plain = make_batch(tok, model, [P1], [T1])
    assert (labels[-1].item() == tok.eos_token_id) == ends
    assert len(labels) == int(plain.target_mask.sum()) + ends


def test_end_weights_mark_each_rows_last_tokens():
    rows = torch.tensor([0, 0, 0, 1, 1, 3])
    assert end_weights(rows, 1, 10.0, 4).tolist() == [1, 1, 10, 1, 10, 10]
    assert end_weights(rows, 2, 5.0, 4).tolist() == [1, 5, 5, 5, 5, 5]
    assert end_weights(rows, 0, 5.0, 4).tolist() == [1] * 6


@pytest.mark.parametrize("weight", [1.0, 4.0])
def test_the_end_token_counts_end_weight_times_in_the_loss(weight):
    """An edit's reported start loss (value 0: the base model) is the sum of the target
    tokens' cross-entropies, the end-of-sequence token's counted ``end_weight`` times, divided
    by the number of target tokens."""
    model, tok = build("llama")
    ed = HoReN(model, tok, max_steps=1, end_weight=weight, value_init="zero")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvergedWarning)
        ed.edit(P1, T1)
    batch = make_batch(tok, model, [P1], [T1], end_ids=[tok.eos_token_id])
    with ed.disabled(), torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    cols = batch.target_mask[0].nonzero()[:, 0]
    ce = torch.nn.functional.cross_entropy(logits[0, cols - 1].float(), batch.input_ids[0, cols],
                                           reduction="none")
    w = torch.ones_like(ce)
    w[-1] = weight
    assert ed.edits[-1]["loss_start"] == pytest.approx(float((ce * w).sum() / len(w)), abs=1e-4)


class ScriptedEditor:
    """The scorer's view of an editor, answering from a script (what each prompt gets)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.asked = answers, []

    @contextlib.contextmanager
    def disabled(self):
        yield

    def generate(self, prompts, max_new_tokens, stop_at_newline):
        assert stop_at_newline and max_new_tokens == M.FREE_BUDGET
        self.asked += prompts
        return [self.answers[p] for p in prompts]


def test_an_edit_that_does_not_converge_is_reported():
    model, tok = build("llama")
    ed = HoReN(model, tok, max_steps=1, lr=1e-4)
    with pytest.warns(NotConvergedWarning, match="1 of 1 edits did not converge"):
        ed.edit(P1, T1)
    assert ed.edits[-1]["converged"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = HoReN(model, tok, max_steps=1, lr=1e-4, converge_loss=1e9, layer=1)
        ok.edit(P1, T1)
    assert ok.edits[-1]["converged"] is True


def test_value_training_sees_the_prefix_as_inference_does(family):
    """The tokens before the last prompt token carry no value at inference, so training must
    not add one there either, even when an entry with a trained value matches the prefix."""
    model, tok = build(family)
    ed = HoReN(model, tok, tau=-1.0, max_steps=20)  # every prompt (and prefix) matches entry 0
    ed.edit(P1, T1)
    assert float(ed.codebook.values[0].abs().sum()) > 0
    batch = make_batch(tok, model, [P2], [T2], end_ids=ed.end_ids)
    values = torch.randn(1, ed.site.d_out)
    _, tail_logits, _ = ed._tail_forward(batch)(values)
    _, full_logits, _ = ed._full_forward(batch)(values)
    assert torch.allclose(tail_logits, full_logits, atol=1e-4, rtol=1e-4)
    # and the full forward itself is what inference computes with that value forced
    with torch.no_grad(), ed.layer.prompt(PromptContext.of(batch, forced_values=values)):
        ref = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    rows, cols = batch.target_mask.nonzero(as_tuple=True)
    assert torch.allclose(full_logits, ref[rows, cols - 1].float(), atol=1e-5)


def test_free_scorer_rows_and_exact_locality():
    records = [
        EditRecord(P1, T1, rephrases=["Who runs Zorblat?", "Zorblat's head?"],
                   locality_prompt="Capital of France?", locality_answer="Paris"),
        EditRecord(P2, T2, rephrases=[], locality_prompt="Who wrote Hamlet?",
                   locality_answer="Shakespeare"),
    ]
    base = ScriptedEditor({"Capital of France?": "Paris.", "Who wrote Hamlet?": "Shakespeare."})
    ref = M.base_reference(base, records, ["free"])
    assert ref.free_loc == ["Paris.", "Shakespeare."]
    edited = ScriptedEditor({
        P1: "Mira Quell.", "Who runs Zorblat?": "Mira Quell Quell Quell",
        "Zorblat's head?": "It is Mira Quell.", P2: "Oskaran",
        "Capital of France?": "Paris.", "Who wrote Hamlet?": "Osk wrote it.",
    })
    rows = M.score_free(edited, records, ref)
    assert rows[0] == {
        "rel_hit": 1.0, "rel_mention": 1.0, "rel_degenerate": 0.0,
        "gen_hit": 0.5, "gen_mention": 1.0, "gen_degenerate": 0.5,
        "loc": 1.0, "loc_true": 1.0, "base_loc_true": 1.0,
    }
    assert rows[1]["rel_hit"] == 0.0  # 'Oskaran' is not the word 'Osk'
    assert rows[1]["gen_hit"] is None
    assert (rows[1]["loc"], rows[1]["loc_true"], rows[1]["base_loc_true"]) == (0.0, 0.0, 1.0)
    summary = M.summarize(rows, "free_generation")
    assert summary["op"] == pytest.approx((0.5 * 0.5 * 0.5) ** (1 / 3))
    assert summary["n_gen_hit"] == 1


def test_free_answers_keep_the_input_order_in_length_batches():
    prompts = [f"q{'x' * k}" for k in (3, 9, 1, 5)]
    ed = ScriptedEditor({p: f"a{p}" for p in prompts})
    assert M.free_answers(ed, prompts, batch_size=2) == [f"a{p}" for p in prompts]
    assert sorted(ed.asked) == sorted(prompts)


def test_free_answers_of_a_real_model_stop_at_the_end_token(family):
    model, tok = build(family)
    ed = HoReN(model, tok)
    free = M.free_answers(ed, [P1, P2], max_new_tokens=10)
    ids = ed.generate([P1, P2], max_new_tokens=10, return_ids=True)
    for answer, row in zip(free, ids):
        cut = row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
        text = tok.decode(row[:cut], skip_special_tokens=True).strip()
        assert answer == text.split("\n", 1)[0].strip()


def test_newline_stop_skips_leading_newlines():
    _, tok = build("gpt2")
    stop = __import__("horen.editors.base", fromlist=["NewlineStop"]).NewlineStop(tok, 1)
    rows = [[0] + tok("\n\nAnswer", add_special_tokens=False).input_ids,
            [0] + tok("Answer\nmore", add_special_tokens=False).input_ids]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.eos_token_id] * (width - len(r)) for r in rows])
    assert stop(ids, None).tolist() == [False, True]


def _bowl(batch, init):
    """A toy value loss for train_value: one target token per row whose loss is
    softplus(500 * |v - 1.25|^2 - 10), least at v = 1.25: Adam steps of 1 bounce around it."""
    rows = torch.arange(init.shape[0])

    def forward(values, sel=None):
        if values is None:
            return rows, None, torch.zeros_like(rows)
        logit = 10 - 500 * ((values - 1.25) ** 2).sum(-1)
        logits = torch.stack([logit, torch.zeros_like(logit)], -1)
        return rows, logits if sel is None else logits[sel], torch.zeros_like(rows)

    return forward


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_a_plateau_above_converge_loss_goes_on_with_a_smaller_step(decay, monkeypatch):
    """The reference rule stops at the first bounce (patience 1); plateau_decay goes back to
    the best value with a smaller step, and the row converges."""
    model, tok = build("llama")
    ed = HoReN(model, tok, optimizer="adam", lr=1.0, patience=1, max_steps=100,
               plateau_decay=decay, end_weight=1.0,
               stop_loss=1e-3, converge_loss=5e-2)
    monkeypatch.setattr(ed, "_tail_forward", _bowl)
    init = torch.zeros(2, 4)
    init[1] = 1.24  # a second row, already near the optimum: rows keep their own step sizes
    values, stats = ed.train_value(init, batch=None, truncated=True)
    if decay:
        assert [s["converged"] for s in stats] == [True, True]
        assert stats[0]["steps"] > 3
    else:
        assert stats[0]["converged"] is False and stats[0]["steps"] <= 3
    assert stats[1]["converged"] is True and torch.equal(values[1], init[1])
    with pytest.raises(ValueError, match="plateau_decay"):
        HoReN(model, tok, plateau_decay=1.0)


def test_a_plateau_with_a_norm_term_resets_rows_without_breaking_backward(monkeypatch):
    """value_l2 saves the value for its backward; a plateau's reset of a row before that
    backward raised autograd's in-place error (found in issue 30's probes)."""
    model, tok = build("llama")
    ed = HoReN(model, tok, optimizer="adam", lr=1.0, patience=1, max_steps=100,
               plateau_decay=0.5, value_l2=1e-4, end_weight=1.0, stop_loss=1e-3,
               converge_loss=5e-2)
    monkeypatch.setattr(ed, "_tail_forward", _bowl)
    _, stats = ed.train_value(torch.zeros(2, 4), batch=None, truncated=True)
    assert [s["converged"] for s in stats] == [True, True] and stats[0]["steps"] > 3


def test_lbfgs_trains_each_row_to_its_own_minimum_and_stops_finished_rows(monkeypatch):
    """L-BFGS on the bowl: both rows converge; the row that starts near the optimum finishes
    first and is not moved after (its steps stop counting); a bad name is refused."""
    model, tok = build("llama")
    ed = HoReN(model, tok, optimizer="lbfgs", max_steps=60, stop_loss=1e-3, converge_loss=5e-2)
    monkeypatch.setattr(ed, "_tail_forward", _bowl)
    init = torch.zeros(2, 4)
    init[1] = 1.24
    values, stats = ed.train_value(init, batch=None, truncated=True)
    assert [s["converged"] for s in stats] == [True, True]
    assert stats[1]["steps"] == 1 and torch.equal(values[1], init[1])
    assert stats[0]["steps"] < 60 and torch.allclose(values[0], torch.full((4,), 1.25), atol=0.01)
    with pytest.raises(ValueError, match="optimizer"):
        HoReN(model, tok, optimizer="sgd")


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_value_l2_keeps_values_smaller(optimizer, monkeypatch):
    """On the bowl (least at 1.25 per coordinate) a norm term pulls the value toward zero."""
    model, tok = build("llama")
    kw = {"optimizer": optimizer, "max_steps": 100, "stop_loss": 1e-9, "patience": 20}
    plain, tight = HoReN(model, tok, **kw), None
    monkeypatch.setattr(plain, "_tail_forward", _bowl)
    free, _ = plain.train_value(torch.zeros(1, 4), batch=None, truncated=True)
    plain.close()
    tight = HoReN(model, tok, value_l2=5.0, **kw)
    monkeypatch.setattr(tight, "_tail_forward", _bowl)
    held, _ = tight.train_value(torch.zeros(1, 4), batch=None, truncated=True)
    assert held.norm() < free.norm() - 0.01
    with pytest.raises(ValueError, match="value_l2"):
        HoReN(model, tok, value_l2=-1.0)
