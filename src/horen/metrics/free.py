"""The free-generation scorer: the whole answer a user reads, judged as a whole.

The other scorers stop looking where the target ends (teacher forcing never lets the model
generate; the generation scorer cuts each answer at the target's length + ``EM_SLACK``), so an
answer that loops after the target ('Ken Duncan Duncan Duncan ...') scores as a perfect edit.
Here every prompt is decoded greedily (KV cache on) until the model ends its answer: an
end-of-sequence / end-of-turn token, a newline after some text, or a budget of ``max_new_tokens``
(default :data:`FREE_BUDGET`). :func:`free_answers` returns those answers; per answer:

* ``hit``: the normalized answer STARTS with the normalized target (:func:`starts_with`);
* ``mention``: the normalized target appears in the answer's first sentence (:func:`mentions`);
* ``degenerate``: the answer repeats itself (:func:`is_degenerate`).

Rel / Gen are the hit rates on the edit prompts / rephrases; Loc is the fraction of locality
prompts whose free answer is EXACTLY the base model's (string equality, the base answers
computed once, before any edit); OP = geometric mean of the three. ``loc_true`` /
``base_loc_true``: whether the edited / base model's locality answer mentions the record's
locality answer (the neighbour's true answer on CounterFact and KnowEdit, the NQ answer on
ZsRE): a hard neighbour that changed from right to wrong shows there.

Normalization (:func:`normalize_answer`, SQuAD's): lowercase, punctuation dropped, the
articles a/an/the dropped, whitespace squeezed; a target "the Esk" is hit by "Esk." and by
"The Esk river", not by "Eskimo" (whole words are compared).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .compare import by_length, group, mean, normalize_answer

FREE_BUDGET = 48
"""New tokens a free answer may run to when the model does not end it first."""

_WORD = re.compile(r"\w+", re.UNICODE)
_STUTTER = re.compile(r"(\w{2,}?)\1{2,}", re.UNICODE)  # 'wavewavewave', 'alesalesales'
_DIGIT_RUN = re.compile(r"\d{12,}")  # '199819992000200120022003'
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def _words(text: str) -> list[str]:
    return normalize_answer(text).split()


def starts_with(answer: str, target: str) -> bool:
    """The normalized answer's first words are the normalized target's words.

    Example:
        >>> starts_with("The Esk, a river in England.", "the Esk"), starts_with("Eskimo", "Esk")
        (True, False)
    """
    want = _words(target)
    return bool(want) and _words(answer)[: len(want)] == want


def first_sentence(text: str) -> str:
    """The answer up to its first sentence end ('.', '!' or '?' followed by a space)."""
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0]


def mentions(answer: str, target: str) -> bool:
    """The normalized target's words appear, in order and contiguous, in the first sentence.

    Example:
        >>> mentions("It was designed by Mira Quell. Later ...", "Mira Quell")
        True
    """
    want, have = _words(target), _words(first_sentence(answer))
    return bool(want) and any(have[i : i + len(want)] == want for i in range(len(have)))


def is_degenerate(answer: str, max_span: int = 6) -> bool:
    """True for an answer that repeats itself, by any of three documented rules:

    1. one span of 1..``max_span`` words occurs three times in a row ('Duncan Duncan Duncan',
       'a Volvo B12M, a Volvo B12M, a Volvo B12M'); punctuation and case are ignored;
    2. inside a word, a piece of two or more characters occurs three times in a row
       ('Brightwavewavewave', 'Lecuminaalesalesales'); a single repeated character
       ('1000000', 'Zzz') is not counted;
    3. a run of twelve or more digits ('199819992000200120022003').

    Example:
        >>> is_degenerate("Ken Duncan Duncan Duncan"), is_degenerate("Ken Duncan")
        (True, False)
    """
    if _DIGIT_RUN.search(answer):
        return True
    for word in _WORD.findall(answer):
        for m in _STUTTER.finditer(word.lower()):
            if len(set(m.group(1))) > 1:
                return True
    words = [w.lower() for w in _WORD.findall(answer)]
    for span in range(1, max_span + 1):
        for i in range(len(words) - 3 * span + 1):
            a = words[i : i + span]
            if a == words[i + span : i + 2 * span] == words[i + 2 * span : i + 3 * span]:
                return True
    return False


def judge(answer: str, target: str) -> dict:
    """``{"hit", "mention", "degenerate"}`` (floats, 0 or 1) of one free answer."""
    return {
        "hit": float(starts_with(answer, target)),
        "mention": float(mentions(answer, target)),
        "degenerate": float(is_degenerate(answer)),
    }


def free_answers(
    editor, prompts: Sequence[str], max_new_tokens: int = FREE_BUDGET, batch_size: int = 16
) -> list[str]:
    """Free greedy answers (see the module docstring for where each one ends), input order kept.

    Prompts are batched by length (similar prompts decode about as many steps); an answer
    never depends on the prompts batched with it (each row stops on its own).
    """
    out: list = [None] * len(prompts)
    for idx in by_length([len(p) for p in prompts], batch_size):
        texts = editor.generate([prompts[i] for i in idx], max_new_tokens=max_new_tokens,
                                stop_at_newline=True)
        for i, text in zip(idx, texts):
            out[i] = text
    return out


def score_free(
    editor, records, reference, batch_size: int = 16, max_new_tokens: int = FREE_BUDGET
) -> list[dict]:
    """Per record: ``rel_hit``, ``rel_mention``, ``rel_degenerate``, the same three ``gen_*``
    (means over the rephrases), ``loc`` (the free answer equals the base model's), and
    ``loc_true`` / ``base_loc_true`` (it / the base answer mentions the locality answer).

    Args:
        editor: the edited model.
        records: the records; ``reference.free_loc`` must hold the base answers to their
            locality prompts (:func:`horen.metrics.base_reference` with ``"free"``).
        max_new_tokens: the budget of each answer.
    """
    prompts = [r.prompt for r in records]
    para = [(i, p) for i, r in enumerate(records) for p in r.rephrases]
    loc_idx = [i for i, r in enumerate(records) if r.locality_prompt is not None]
    asked = prompts + [p for _, p in para] + [records[i].locality_prompt for i in loc_idx]
    answers = free_answers(editor, asked, max_new_tokens, batch_size)
    rel = answers[: len(prompts)]
    gen = answers[len(prompts) : len(prompts) + len(para)]
    loc = answers[len(prompts) + len(para) :]
    keys = ("hit", "mention", "degenerate")
    rows = []
    for r, answer in zip(records, rel):
        judged = judge(answer, r.target)
        row = {f"rel_{k}": judged[k] for k in keys}
        rows.append({**row, **{f"gen_{k}": None for k in keys}, "loc": None,
                     "loc_true": None, "base_loc_true": None})
    judged = [judge(a, records[i].target) for (i, _), a in zip(para, gen)]
    for i, mine in group([i for i, _ in para], judged).items():
        for k in keys:
            rows[i][f"gen_{k}"] = mean([j[k] for j in mine])
    for i, answer in zip(loc_idx, loc):
        base = reference.free_loc[i]
        rows[i]["loc"] = float(answer == base)
        truth = records[i].locality_answer
        rows[i]["loc_true"] = float(mentions(answer, truth))
        rows[i]["base_loc_true"] = float(mentions(base, truth))
    return rows
