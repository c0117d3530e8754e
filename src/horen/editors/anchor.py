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
  ``max_t cos(a_i, h_t) > anchor_tau`` (h_t the query's activations at the anchor layer,
  over the prompt's own tokens: in chat mode the user's message only).

Among the entries passing both, the best relation score wins. Values are trained and added
exactly as HoReN's (the last prompt token of layer L). The subject comes from the record
(``subject=``), else :func:`horen.subject.infer_subject`; one that is not in the prompt is an
error. Writes follow HoReN's three cases, decided by the same two-gate match.
"""

from __future__ import annotations

import dataclasses

import torch

from ..codebook import NO_MATCH, normalize, route_anchored
from ..layer import PromptContext
from ..models import get_module
from ..subject import infer_subject, subject_last_token
from ..text import encode_prompt, format_prompt
from .base import register
from .horen import HoReN, HoReNConfig


@dataclasses.dataclass
class EntityConfig(HoReNConfig):
    """HoReN's settings plus the entity gate's. The defaults (anchor layer 3 of 30, tau 0.7,
    anchor_tau 0.8) were chosen on the embedded model by ``horen calibrate --method
    horen-entity`` on held-out ZsRE and CounterFact records (``results/calibration/entity_*``):
    the best worst-case routing OP of the two; calibrate them for another model."""

    tau: float | None = dataclasses.field(
        default=0.7, metadata={"help": "relation gate: cosine of the pooled keys; None = HoReN's"}
    )
    anchor_layer: int | None = dataclasses.field(
        default=None, metadata={"help": "layer whose MLP input gives anchors; None = 1/10 depth"}
    )
    anchor_tau: float = dataclasses.field(
        default=0.8, metadata={"help": "entity gate: cosine an anchor must reach at a query token"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not -1 <= self.anchor_tau <= 1:
            raise ValueError(f"anchor_tau is a cosine threshold in [-1, 1], not {self.anchor_tau}")
        if not self.normalize:
            raise ValueError("horen-entity needs normalized keys")


@dataclasses.dataclass
class Query:
    """What one batch of prompts routes with: ``pooled`` ``(B, d_ff)`` relation queries,
    ``tokens`` ``(B, T, d_a)`` normalized anchor-layer activations with ``mask`` ``(B, T)``,
    and (writes only) ``subject`` ``(B, d_a)`` the normalized anchors of the edit subjects."""

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    subject: torch.Tensor | None = None

    def __getitem__(self, i) -> Query:
        if i is None:
            return self
        pick = slice(i, i + 1)
        subject = None if self.subject is None else self.subject[pick]
        return Query(self.pooled[pick], self.tokens[pick], self.mask[pick], subject)


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
        path = f"{self.site.layers_path}.{self.anchor_layer}.{inside}"
        self._anchor_module = get_module(model, path)
        self._hook = self._anchor_module.register_forward_hook(self._read_anchor_acts)
        self._acts: torch.Tensor | None = None
        self.anchors: dict[int, torch.Tensor] = {}  # entry id -> normalized anchor
        self._matrix: tuple[list[int], torch.Tensor] = ([], torch.zeros(0, 0))
        self._subject_pos: list[int] | None = None

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
        subject = None
        if self._subject_pos is not None:
            rows = torch.arange(len(self._subject_pos), device=tokens.device)
            subject = tokens[rows, torch.as_tensor(self._subject_pos, device=tokens.device)]
        return Query(pooled, tokens, ctx.pooled[:, :width].bool(), subject)

    def anchor_matrix(self) -> torch.Tensor:
        """``(K, d_a)`` anchors in codebook row order (kept in step with the codebook: rows
        added since the last call are appended, a removal rebuilds it)."""
        ids = self.codebook.ids
        cached, matrix = self._matrix
        if cached != ids:
            if not ids:
                matrix = torch.zeros(0, 0)
            elif cached and ids[: len(cached)] == cached:
                matrix = torch.cat([matrix, torch.stack([self.anchors[i] for i in ids[len(cached):]])])
            else:
                matrix = torch.stack([self.anchors[i] for i in ids])
            self._matrix = (list(ids), matrix)
        return matrix

    def match(self, q: Query) -> torch.Tensor:
        cfg, keys = self.config, self.codebook.keys
        tokens = [t[m] for t, m in zip(q.tokens, q.mask)]
        return route_anchored(
            q.pooled, tokens, keys, self.anchor_matrix().to(keys.device), self.tau,
            cfg.anchor_tau, beta=cfg.beta, alpha=cfg.alpha, steps=cfg.hopfield_steps,
            eps=cfg.hopfield_eps,
        )

    # ---- writing ---------------------------------------------------------------------------
    def subject_positions(self, records) -> list[int]:
        """Token index of each record's subject (its last token) in the formatted prompt."""
        chat, out = self.config.chat, []
        for r in records:
            subject = r.subject or infer_subject(r.prompt)
            text = format_prompt(self.tokenizer, r.prompt, chat)
            pos = subject_last_token(self.tokenizer, text, r.prompt, subject)
            bare = len(self.tokenizer(text, add_special_tokens=False).input_ids)
            out.append(pos + len(encode_prompt(self.tokenizer, r.prompt, chat)) - bare)
        return out

    def _apply_batch(self, records) -> list[dict]:
        self._subject_pos = self.subject_positions(records)
        try:
            return super()._apply_batch(records)
        finally:
            self._subject_pos = None

    def write(self, q: Query, target: str) -> tuple[int, dict]:
        cb = self.codebook
        row = int(self.match(q)[0])
        if row != NO_MATCH and cb.labels[row] == target:
            entry = cb.ids[row]
            return row, {"case": "extend", "entry": entry, "touches": [entry]}
        case = "new" if row == NO_MATCH else "conflict"
        row = cb.add(q.pooled[0], torch.zeros(self.values.shape), target)
        self.anchors[cb.ids[row]] = q.subject[0].to(cb.device)
        return row, {"case": case, "entry": cb.ids[row], "touches": [cb.ids[row]]}

    # ---- state -----------------------------------------------------------------------------
    def _remove(self, edit: dict) -> None:
        super()._remove(edit)
        live = set(self.codebook.ids)
        self.anchors = {i: a for i, a in self.anchors.items() if i in live}

    def _state(self):
        state, tensors = super()._state()
        if self.anchors:
            tensors["anchors"] = self.anchor_matrix()
        return state, tensors

    def _load_state(self, state, tensors):
        anchors = tensors.pop("anchors", None)
        super()._load_state(state, tensors)
        ids = self.codebook.ids
        self.anchors = {} if anchors is None else {i: a for i, a in zip(ids, anchors)}

    @torch.no_grad()
    def routes(self, prompts: list[str]) -> torch.Tensor:
        return self.match(self.queries(prompts))
