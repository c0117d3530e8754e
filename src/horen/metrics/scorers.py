"""The teacher-forced, generation and probe scorers, and the base model's locality answers
they are compared with (:func:`base_reference`, computed once per run)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..data.record import EditRecord
from ..text import encode_pair, make_batch
from .compare import (
    agreement,
    by_length,
    exact_match,
    fraction_equal,
    group,
    mean,
    normalize_answer,
    token_accuracy,
)
from .free import FREE_BUDGET, free_answers

EM_SLACK = 4
"""Extra greedy tokens decoded beyond the target's length for exact match (a differently
tokenized but right answer may need more tokens); token accuracy reads only the first ones."""


# ---- the base model's locality answers, computed once ---------------------------------------
@dataclass
class BaseReference:
    """What the unedited model predicts on each record's locality probe.

    Attributes:
        tf_loc: per record, the base argmax ids at the locality answer positions (or None).
        gen_loc: per record, the base greedy ids over the locality answer's length (or None).
        free_loc: per record, the base model's free answer to the locality prompt (or None;
            :mod:`horen.metrics.free`).
    """

    tf_loc: list[torch.Tensor | None] = field(default_factory=list)
    gen_loc: list[list[int] | None] = field(default_factory=list)
    free_loc: list[str | None] = field(default_factory=list)

    def __getitem__(self, index: slice) -> BaseReference:
        """The reference of a slice of the records (``ref[:n]``, ``ref[t : t + 1]``)."""
        return BaseReference(self.tf_loc[index], self.gen_loc[index], self.free_loc[index])


def _chat(editor) -> bool:
    return bool(getattr(editor.config, "chat", False))


def _loc_items(records: Sequence[EditRecord]) -> list[int]:
    return [i for i, r in enumerate(records) if r.locality_prompt is not None]


def _loc_lengths(editor, records: Sequence[EditRecord], idx: Sequence[int]) -> list[int]:
    """Token length of each locality answer (how many greedy tokens locality compares)."""
    return [
        max(1, len(answer_ids(editor, records[i].locality_prompt, records[i].locality_answer)))
        for i in idx
    ]


def base_reference(
    editor,
    records: Sequence[EditRecord],
    scorers: Sequence[str] = ("tf", "gen"),
    batch_size: int = 16,
    free_max_tokens: int = FREE_BUDGET,
) -> BaseReference:
    """The base model's locality predictions for ``records`` (run inside ``editor.disabled()``)."""
    ref = BaseReference(*([None] * len(records) for _ in range(3)))
    idx = _loc_items(records)
    prompts = [records[i].locality_prompt for i in idx]
    answers = [records[i].locality_answer for i in idx]
    with editor.disabled():
        if "tf" in scorers:
            for i, (pred, _) in zip(idx, target_predictions(editor, prompts, answers, batch_size)):
                ref.tf_loc[i] = pred
        if "gen" in scorers:
            lengths = _loc_lengths(editor, records, idx)
            for i, ids in zip(idx, generate_ids(editor, prompts, lengths, batch_size)):
                ref.gen_loc[i] = ids
        if "free" in scorers:
            for i, text in zip(idx, free_answers(editor, prompts, free_max_tokens, batch_size)):
                ref.free_loc[i] = text
    return ref


# ---- teacher-forced ---------------------------------------------------------------------------
@torch.no_grad()
def target_predictions(
    editor, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 16
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per pair: ``(argmax ids at the target positions, target ids)``, batched and right-padded.

    The prediction for target token t is read at position t - 1 of ``prompt + " " + target``.
    Pairs are batched by text length (:func:`by_length`); the result keeps the input order.
    """
    chat = _chat(editor)
    out: list = [None] * len(prompts)
    for idx in by_length([len(p) + len(t) for p, t in zip(prompts, targets)], batch_size):
        p, t = [prompts[i] for i in idx], [targets[i] for i in idx]
        batch = make_batch(editor.tokenizer, editor.model, p, t, chat)
        columns, at = batch.head_columns()  # the head runs only where a target is predicted
        pred = editor.logits(batch, columns).argmax(-1).cpu()
        rows, cols = batch.target_mask.nonzero(as_tuple=True)
        counts = batch.target_mask.sum(1).tolist()
        preds, labels = pred[rows, at].split(counts), batch.input_ids[rows, cols].split(counts)
        for i, predicted, target_ids in zip(idx, preds, labels):
            out[i] = (predicted, target_ids)
    return out


def score_teacher_forced(
    editor, records: Sequence[EditRecord], reference: BaseReference, batch_size: int = 16
) -> list[dict]:
    """Per record ``{"rel", "gen", "loc"}`` teacher-forced scores (None where no probe).

    Args:
        editor: the edited model.
        records: the records to score; ``reference`` must hold their base predictions.
        reference: from :func:`base_reference` on the same records.
        batch_size: sequences per forward pass.
    """
    rel = target_predictions(
        editor, [r.prompt for r in records], [r.target for r in records], batch_size
    )
    para = [(i, p) for i, r in enumerate(records) for p in r.rephrases]
    gen = target_predictions(
        editor, [p for _, p in para], [records[i].target for i, _ in para], batch_size
    )
    idx = _loc_items(records)
    loc = target_predictions(
        editor,
        [records[i].locality_prompt for i in idx],
        [records[i].locality_answer for i in idx],
        batch_size,
    )
    rows = [{"rel": fraction_equal(*pair), "gen": None, "loc": None} for pair in rel]
    for i, scores in group([i for i, _ in para], [fraction_equal(*g) for g in gen]).items():
        rows[i]["gen"] = mean(scores)
    for i, (pred, _) in zip(idx, loc):
        rows[i]["loc"] = fraction_equal(pred, reference.tf_loc[i])
    return rows


def probe_sets(records: Sequence[EditRecord]) -> list[str]:
    """Names of the extra probe sets the records carry (UnKE's sub-questions excepted: the
    UnKE scorer reads those), in first-seen order."""
    names = (k for r in records for k in r.extra if k != "sub_question")
    return list(dict.fromkeys(names))


def score_probes(
    editor, records: Sequence[EditRecord], reference: BaseReference | None = None, batch_size: int = 16
) -> list[dict]:
    """Per record ``{set name: teacher-forced answer accuracy}`` (None where it has none).

    Every probe of every set goes through :func:`target_predictions` in one pass; a record
    with several probes in a set scores their mean.
    """
    names = probe_sets(records)
    items = [(i, name, q) for i, r in enumerate(records) for name in names
             for q in r.extra.get(name, [])]
    preds = target_predictions(
        editor, [q["prompt"] for *_, q in items], [q["answer"] for *_, q in items], batch_size
    )
    rows = [dict.fromkeys(names) for _ in records]
    keys = [(i, name) for i, name, _ in items]
    for (i, name), scores in group(keys, [fraction_equal(*p) for p in preds]).items():
        rows[i][name] = mean(scores)
    return rows


# ---- generation ------------------------------------------------------------------------------
def answer_ids(editor, prompt: str, answer: str) -> list[int]:
    """Token ids of a generated ``answer`` by the join rule (leading space kept, no BOS)."""
    if not answer.strip():
        return []
    return encode_pair(editor.tokenizer, prompt, answer, _chat(editor))[1]


class AnswerMemo:
    """Greedy answers already decoded at one checkpoint, so a later scorer does not decode
    them again (valid only while the edited model does not change).

    Each answer is cut to its own budget, so the answer to a prompt for k tokens is the first
    k new tokens of its answer for any larger budget: the UnKE scorer reads the generation
    scorer's answers (decoded for the reference's length + ``EM_SLACK``) cut to its own.
    """

    def __init__(self) -> None:
        self._answers: dict[str, tuple[int, list[int]]] = {}

    def get(self, prompt: str, budget: int) -> list[int] | None:
        """The new token ids of ``prompt``'s answer for ``budget`` tokens, if decoded."""
        decoded, ids = self._answers.get(prompt, (0, []))
        return ids[:budget] if decoded >= budget else None

    def put(self, prompt: str, budget: int, ids: list[int]) -> None:
        if self._answers.get(prompt, (0, []))[0] < budget:
            self._answers[prompt] = (budget, ids)


def generate_answers(
    editor,
    prompts: Sequence[str],
    lengths: Sequence[int],
    batch_size: int = 16,
    use_cache: bool = True,
    memo: AnswerMemo | None = None,
) -> list[str]:
    """Greedy answers (KV cache on, batched), each decoded from at most ``lengths[i]`` tokens.

    Prompts asking for similar answer lengths are batched together (:func:`by_length`), so a
    batch decodes about as many steps as its rows need; each answer is cut to its own budget
    (never the batch's longest), and the result keeps the input order. With a ``memo``,
    answers it holds are read from it and new ones are added to it.
    """
    memo = memo if memo is not None else AnswerMemo()
    ids: list = [memo.get(p, k) for p, k in zip(prompts, lengths)]
    todo = [i for i, hit in enumerate(ids) if hit is None]
    for batch in by_length([lengths[i] for i in todo], batch_size):
        idx = [todo[j] for j in batch]
        rows = editor.generate(
            [prompts[i] for i in idx],
            max_new_tokens=[lengths[i] for i in idx],
            use_cache=use_cache,
            return_ids=True,
        )
        for i, row in zip(idx, rows):
            memo.put(prompts[i], lengths[i], row)
            ids[i] = row
    return [editor.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


def generate_ids(
    editor,
    prompts: Sequence[str],
    lengths: Sequence[int],
    batch_size: int = 16,
    use_cache: bool = True,
    memo: AnswerMemo | None = None,
) -> list[list[int]]:
    """Greedy answers as token ids (by the join rule), each cut to its ``lengths[i]``."""
    texts = generate_answers(editor, prompts, lengths, batch_size, use_cache, memo)
    return [answer_ids(editor, p, t)[:k] for p, t, k in zip(prompts, texts, lengths)]


def answer_match(answer: str, target: str, cut: str | None = None) -> float:
    """Exact match of a greedy answer with the target, after SQuAD normalization.

    Base LMs do not stop after the answer, so the answer is compared where the target ends:
    either ``cut`` (the answer decoded from as many tokens as the target has, the reference's
    convention: "1998" out of "19981999...") or the answer's first words, as many as the
    normalized target has (a right answer tokenized differently: "the nile" for "The Nile").
    Either matching scores 1; "Mira" for "Mira Quell" scores 0.
    """
    if cut is not None and exact_match(cut, target):
        return 1.0
    want = normalize_answer(target).split()
    if not want:
        return exact_match(answer, target)
    return float(normalize_answer(answer).split()[: len(want)] == want)


def _gen_scores(
    editor, prompts, targets, batch_size, use_cache=True, memo=None
) -> list[tuple[float, float]]:
    """``(exact match, token accuracy)`` of greedy answers to ``prompts`` against ``targets``."""
    refs = [answer_ids(editor, p, t) for p, t in zip(prompts, targets)]
    lengths = [len(r) + EM_SLACK for r in refs]
    texts = generate_answers(editor, prompts, lengths, batch_size, use_cache, memo)
    out = []
    for p, text, ref, target in zip(prompts, texts, refs, targets):
        ids = answer_ids(editor, p, text)
        cut = editor.tokenizer.decode(ids[: len(ref)], skip_special_tokens=True)
        out.append((answer_match(text, target, cut), token_accuracy(ids, ref)))
    return out


def score_generation(
    editor,
    records: Sequence[EditRecord],
    reference: BaseReference,
    batch_size: int = 16,
    use_cache: bool = True,
    memo: AnswerMemo | None = None,
) -> list[dict]:
    """Per record ``{"rel_em", "rel_acc", "gen_em", "gen_acc", "loc"}`` from greedy decoding.

    ``use_cache=False`` decodes without the KV cache (the authors' loop; same tokens, slower).
    The answers to the edit prompts and rephrases are kept in ``memo`` if one is given.
    """
    targets = [r.target for r in records]
    rel = _gen_scores(editor, [r.prompt for r in records], targets, batch_size, use_cache, memo)
    para = [(i, p) for i, r in enumerate(records) for p in r.rephrases]
    gen = _gen_scores(
        editor, [p for _, p in para], [targets[i] for i, _ in para], batch_size, use_cache, memo
    )
    rows = [
        {"rel_em": em, "rel_acc": a, "gen_em": None, "gen_acc": None, "loc": None} for em, a in rel
    ]
    for i, mine in group([i for i, _ in para], gen).items():
        rows[i]["gen_em"] = mean([em for em, _ in mine])
        rows[i]["gen_acc"] = mean([a for _, a in mine])
    idx = _loc_items(records)
    prompts = [records[i].locality_prompt for i in idx]
    lengths = _loc_lengths(editor, records, idx)
    answers = generate_ids(editor, prompts, lengths, batch_size, use_cache)
    for i, e, n in zip(idx, answers, lengths):
        rows[i]["loc"] = agreement(e, reference.gen_loc[i], n)
    return rows
