"""Choosing tau (and checking rho) for a new model, as the paper recommends.

Queries are read from the frozen model BELOW the edit site, so they do not depend on any
trained value: routing of a whole edit stream can be simulated without training anything.
For each (pool_ratio, tau) the simulation writes a codebook with the editor's own rule
(``editor.write``: a new entry unless the refined query matches an entry with the same
target) and matches with its own ``editor.match``, then reports
three routing rates on the final codebook:

* ``rel``: edit prompts routed to an entry carrying their target;
* ``gen``: paraphrases routed to an entry carrying their target;
* ``loc``: unrelated (locality) prompts routed to no entry at all;

and their geometric mean ``op``. The chosen tau maximizes ``op`` (ties: the larger tau, the
safer for locality). These are routing rates, an upper bound on the edited model's scores.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .codebook import NO_MATCH, Codebook, normalize, pool, route_anchored
from .text import make_batch

DEFAULT_TAUS = tuple(round(0.5 + 0.025 * i, 3) for i in range(20))  # 0.5 .. 0.975


class _Rates:
    """The geometric mean ``op`` of a sweep row's routing rates (the fields ``RATES`` names)."""

    RATES = ("rel", "gen", "loc")

    @property
    def op(self) -> float:
        return math.prod(getattr(self, name) for name in self.RATES) ** (1 / len(self.RATES))


@dataclass
class SweepRow(_Rates):
    pool_ratio: float
    tau: float
    rel: float
    gen: float
    loc: float
    entries: int


@torch.no_grad()
def prompt_acts(editor, prompts: list[str], batch_size: int = 32) -> list[torch.Tensor]:
    """W's input at the real prompt tokens of each prompt: a list of ``(n_i, d_ff)``."""
    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="reading queries", leave=False):
        chunk = prompts[start : start + batch_size]
        batch = make_batch(editor.tokenizer, editor.model, chunk, chat=editor.config.chat)
        batch = batch.to(editor.device)
        captured = editor.suffix.capture(batch.input_ids, batch.attention_mask)
        acts = editor.read_acts(captured, batch).float()
        for row, mask in zip(acts, batch.pool_mask):
            out.append(row[mask.bool()].cpu())
    return out


def pooled(acts: list[torch.Tensor], pool_ratio: float, normalized: bool = True) -> torch.Tensor:
    """Pooled queries ``(N, d_ff)`` for one pooling ratio (unit-normalized, as HoReN's are
    unless its ``normalize`` is off)."""
    qs = torch.stack([pool(a[None], torch.ones(1, a.shape[0]), pool_ratio)[0] for a in acts])
    return normalize(qs) if normalized else qs


def simulate(editor, keys_in, labels, probes, probe_labels, loc, tau: float) -> SweepRow:
    """Write a codebook for one tau with the editor's own rule (``editor.write``: a new
    entry unless the query matches one with the same target), then the three routing rates
    on the final codebook with its own matching (``editor.match``: Hopfield step, cosine).

    The editor's codebook and tau are swapped out meanwhile and restored after."""
    kept = editor.codebook, editor.tau
    editor.codebook = Codebook(keys_in.shape[1], editor.values.shape, device=keys_in.device)
    editor.tau = tau
    try:
        for q, label in zip(keys_in, labels):
            editor.write(q, label)
        entry_labels = editor.codebook.labels

        def hit_rate(qs, want):
            rows = editor.match(qs).tolist()
            return sum(r != NO_MATCH and entry_labels[r] == w for r, w in zip(rows, want)) / len(want)

        rel = hit_rate(keys_in, labels)
        gen = hit_rate(probes, probe_labels) if len(probe_labels) else float("nan")
        loc_rate = float((editor.match(loc) == NO_MATCH).float().mean()) if len(loc) else float("nan")
        return SweepRow(0.0, tau, rel, gen, loc_rate, len(editor.codebook))
    finally:
        editor.codebook, editor.tau = kept


def sweep(editor, records, taus=DEFAULT_TAUS, pool_ratios=(None,), batch_size: int = 32):
    """Sweep (pool_ratio, tau) over ``records``; returns ``(rows, best_row)``.

    Args:
        editor: a HoReN-family editor on the model to calibrate (its codebook is unused).
        records: edit records with rephrases and locality prompts (a few hundred is plenty).
        pool_ratios: ratios to check; ``None`` means the editor's current one.
    """
    cfg = editor.config
    prompts = [r.prompt for r in records]
    probe_pairs = [(p, r.target) for r in records for p in r.rephrases[:1]]
    locs = [r.locality_prompt for r in records if r.locality_prompt]
    acts = prompt_acts(editor, prompts + [p for p, _ in probe_pairs] + locs, batch_size)
    n, m = len(prompts), len(probe_pairs)
    rows = []
    for ratio in pool_ratios:
        ratio = editor.pool_ratio if ratio is None else ratio
        q = pooled(acts, ratio, cfg.normalize).to(editor.device)
        for tau in taus:
            row = simulate(
                editor, q[:n], [r.target for r in records], q[n : n + m],
                [t for _, t in probe_pairs], q[n + m :], tau,
            )
            row.pool_ratio = ratio
            rows.append(row)
    best = max(rows, key=lambda r: (0 if math.isnan(r.op) else r.op, r.tau))
    return rows, best


@dataclass
class EntityRow(_Rates):
    """One setting of the entity-anchored router (``horen-entity``) and its routing rates;
    ``same``: synthesized prompts about an edit's subject but another relation
    (:data:`SAME_SUBJECT`) routed to no entry. ``op`` is the geometric mean of all four."""

    anchor_layer: int
    tau: float
    anchor_tau: float
    question_tau: float | None
    rel: float
    gen: float
    loc: float
    same: float
    entries: int

    RATES = ("rel", "gen", "loc", "same")


DEFAULT_ANCHOR_TAUS = (0.5, 0.6, 0.7, 0.8, 0.9)

# Other relations of an edit's subject, in the forms the datasets ask them (questions,
# statements to complete, bare "subject relation" phrases). A template may ask the edit's own
# relation for a few records: the rate is a slight underestimate of the gate's precision.
SAME_SUBJECT = (
    "{s} date of birth",
    "The place of death of {s} is",
    "What award did {s} receive?",
    "Which country is {s} from?",
    "The official website of {s} is",
    "Who is the spouse of {s}?",
)


@torch.no_grad()
def entity_queries(editor, prompts: list[str], batch_size: int = 32):
    """Per prompt ``(pooled (d_ff,), tokens (n, d_a), question (d_ff,))`` of a horen-entity
    editor."""
    pooled, tokens, questions = [], [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc="reading queries", leave=False):
        q = editor.queries(prompts[start : start + batch_size])
        pooled.append(q.pooled.cpu())
        questions.append(q.question.cpu())
        tokens += [t[m].cpu() for t, m in zip(q.tokens, q.mask)]
    return torch.cat(pooled), tokens, torch.cat(questions)


def sweep_entity(editor_for, records, anchor_layers, taus, anchor_taus, question_taus=(None,),
                 batch_size: int = 32):
    """Routing of ``horen-entity`` for each (anchor layer, tau, anchor_tau, question_tau):
    ``(rows, best)``.

    The codebook is written as the editor writes it (HoReN's three cases, decided by the
    gates of :func:`horen.codebook.route_anchored`), one entry per new edit with its
    subject's anchor and question key; rel/gen/loc are then routing rates on the final
    codebook, as in :func:`sweep`, and ``same`` the rate for :data:`SAME_SUBJECT` prompts of
    every record with a subject. The question gate applies to the entries the editor's
    ``question_gate`` rule gives it (:meth:`~horen.editors.codebook.entity.EntityHoReN.asks`).
    ``editor_for(layer)`` builds the editor for one anchor layer.
    """
    prompts = [r.prompt for r in records]
    probes = [(p, r.target) for r in records for p in r.rephrases[:1]]
    locs = [r.locality_prompt for r in records if r.locality_prompt]
    sames = [t.format(s=r.subject) for r in records if r.subject for t in SAME_SUBJECT]
    n, m, k = len(prompts), len(probes), len(locs)
    rows = []
    for layer in anchor_layers:
        editor = editor_for(layer)
        try:
            cfg = editor.config
            hop = {"beta": cfg.beta, "alpha": cfg.alpha, "steps": cfg.hopfield_steps,
                   "eps": cfg.hopfield_eps}
            pooled, tokens, questions = entity_queries(
                editor, prompts + [p for p, _ in probes] + locs + sames, batch_size)
            positions = editor.subject_positions(records)
            # the anchor of an edit: its prompt's activation at the subject's last token (the
            # tokens kept are those of the pooling mask: count the ones before that position)
            masks = [make_batch(editor.tokenizer, editor.model, [p], chat=cfg.chat).pool_mask[0]
                     for p in prompts]
            subjects = []
            for i, (first, last) in enumerate(positions):
                at = int(masks[i][:first].sum())
                subjects.append(tokens[i][at : at + last - first + 1])
            background = [editor.background_scores(a) for a in subjects]
            gated = torch.tensor([editor.asks(p) for p in prompts])  # the question_gate rule
        finally:
            editor.close()
        groups = {"probes": range(n, n + m), "locs": range(n + m, n + m + k),
                  "sames": range(n + m + k, len(tokens))}
        for tau, anchor_tau, question_tau in itertools.product(taus, anchor_taus, question_taus):
            rates = _simulate_entity(
                pooled, tokens, questions, subjects, background, [r.target for r in records],
                [t for _, t in probes], groups,
                {"tau": tau, "anchor_tau": anchor_tau, "question_tau": question_tau}, hop, gated)
            rows.append(EntityRow(layer, tau, anchor_tau, question_tau, *rates))
    best = max(rows, key=lambda r: (0 if math.isnan(r.op) else r.op, r.tau, r.anchor_tau))
    return rows, best


def _simulate_entity(pooled, tokens, questions, subjects, background, labels, probe_labels,
                     groups, gates, hop, gated):
    n = len(labels)
    question_tau = gates["question_tau"]
    if question_tau is not None:  # per record: its entry's question threshold, -inf = no gate
        question_tau = torch.where(gated, question_tau, -math.inf)
    keys = pooled.new_zeros(0, pooled.shape[1])
    width, d = max(len(s) for s in subjects), subjects[0].shape[-1]
    anchors, mask = pooled.new_zeros(n, width, d), torch.zeros(n, width, dtype=torch.bool)
    floors = torch.full((n, width), -math.inf)  # each entry's anchors' background scores
    rows: list[int] = []  # the record each entry was written from
    entry_labels: list[str] = []

    def match(idx):
        k = len(entry_labels)
        return route_anchored(
            pooled[idx], [tokens[i] for i in idx], keys, anchors[:k], gates["tau"],
            floors[:k].clamp(min=gates["anchor_tau"]), anchor_mask=mask[:k],
            questions=questions[idx],
            question_keys=questions[rows],
            question_tau=None if question_tau is None else question_tau[rows], **hop,
        ).tolist()

    for i in range(n):
        row = match([i])[0]
        if row == NO_MATCH or entry_labels[row] != labels[i]:
            k = len(entry_labels)
            keys = torch.cat([keys, pooled[i][None]])
            anchors[k, : len(subjects[i])], mask[k, : len(subjects[i])] = subjects[i], True
            floors[k, : len(subjects[i])] = background[i]
            rows.append(i)
            entry_labels.append(labels[i])

    def hit_rate(idx, want):
        got = match(idx)
        return sum(r != NO_MATCH and entry_labels[r] == w for r, w in zip(got, want)) / len(want)

    def miss_rate(idx):
        idx = list(idx)
        return sum(r == NO_MATCH for r in match(idx)) / len(idx) if idx else float("nan")

    rel = hit_rate(list(range(n)), labels)
    gen = hit_rate(list(groups["probes"]), probe_labels) if probe_labels else float("nan")
    return rel, gen, miss_rate(groups["locs"]), miss_rate(groups["sames"]), len(entry_labels)


def format_entity_table(rows: list[EntityRow], best: EntityRow) -> str:
    head = "anchor_layer    tau  anchor_tau  question_tau    rel    gen    loc   same     op  entries"

    def line(r):
        q = "off" if r.question_tau is None else f"{r.question_tau:.3f}"
        return (f"{r.anchor_layer:12d} {r.tau:6.3f} {r.anchor_tau:11.3f} {q:>13} {r.rel:6.3f} "
                f"{r.gen:6.3f} {r.loc:6.3f} {r.same:6.3f} {r.op:6.3f} {r.entries:8d}")

    return "\n".join([head] + [line(r) + ("  <- chosen" if r is best else "") for r in rows])


def format_table(rows: list[SweepRow], best: SweepRow) -> str:
    head = "pool_ratio    tau    rel    gen    loc     op  entries"
    return _table(rows, best, head, lambda r: f"{r.pool_ratio:10.2f} {r.tau:6.3f}")


def _table(rows, best, head: str, setting) -> str:
    """One line per swept setting (``setting(row)`` gives its first columns), then the rates."""
    lines = [head]
    for r in rows:
        mark = "  <- chosen" if r is best else ""
        lines.append(
            f"{setting(r)} {r.rel:6.3f} {r.gen:6.3f} {r.loc:6.3f} {r.op:6.3f} {r.entries:8d}{mark}"
        )
    return "\n".join(lines)
