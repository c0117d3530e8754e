"""The locate-then-edit core shared by ROME, MEMIT and AlphaEdit (BASELINES.md §1).

A fact (subject s, prompt p containing s, new object o) is read at the *subject-last token*
and written into W_out (the MLP output projection) of one or more layers as a key → value
pair:

* :func:`subject_last_index`: the position of the subject's last token in a (prefixed)
  prompt, by cumulative tokenization of ``prefix + prompt[:end of subject]`` (EasyEdit's fix
  of ROME's additive count; BOS is counted when the tokenizer adds it);
* context templates (ROME §3.1 / MEMIT §4.2 "prefix augmentation"): ``"{}"`` plus short
  texts sampled from the model itself (top-k 5), each followed by ``". {}"``;
* keys k = W_out's input at the subject-last token, averaged over templates
  (:meth:`LocateEditor.template_keys`: one flat mean for ROME, MEMIT's mean of the two groups);
* the target value (ROME's v*, MEMIT's z; :meth:`LocateEditor.compute_value`): a free vector
  δ added at the subject-last token of every prompt, at the MLP output of layer l (ROME) or
  the residual stream after block L (MEMIT), found with Adam on

      L(δ) = NLL(o | template(p)) + kl_factor·KL(P_δ ‖ P_0)["s is a"] + v_wd·‖δ‖/‖h₀‖²,

  stopped below 5e-2, δ projected after each step onto ‖δ‖ ≤ clamp_norm_factor·‖h₀‖
  (ROME Eq. 4, MEMIT Eq. 16); the result is h₀ + δ. Layers below the site run once
  (:class:`horen.suffix.Suffix`).

The covariance C_l = E[k kᵀ] of each layer comes from :mod:`horen.stats`, computed lazily on
the *unedited* weights (inside :meth:`disabled`) and kept in ``editor.cov`` (tests may put
their own there).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...data.record import EditRecord
from ...models import architecture, edit_site, get_module
from ...stats import CORPORA, Trace, layer_stats
from ...suffix import Suffix
from ...text import Batch, format_prompt, make_batch
from .editor import WeightConfig, WeightEditor

EARLY_STOP_LOSS = 5e-2  # ROME/MEMIT compute_v: stop once the total loss is below this
KL_PROMPT = "{} is a"


@dataclasses.dataclass
class LocateConfig(WeightConfig):
    """The v*/z optimization and the covariance sample, shared by ROME, MEMIT, AlphaEdit."""

    v_lr: float = dataclasses.field(default=0.5, metadata={"help": "Adam lr for delta"})
    v_num_grad_steps: int = dataclasses.field(default=25, metadata={"help": "Adam steps, at most"})
    v_weight_decay: float = dataclasses.field(
        default=0.5, metadata={"help": "weight of ||delta|| / ||h0||^2 in the loss"})
    clamp_norm_factor: float = dataclasses.field(
        default=0.75, metadata={"help": "project delta onto ||delta|| <= factor * ||h0||"})
    kl_factor: float = dataclasses.field(
        default=0.0625, metadata={"help": "weight of the KL term on the '{subject} is a' prompt"})
    context_templates: str = dataclasses.field(
        default="generated", metadata={"help": "'generated' (prefix augmentation) or 'bare' ('{}' only)"})
    mom2_corpus: str = dataclasses.field(
        default="wiki_corpus", metadata={"help": "text for C=E[kk^T]: 'wiki_corpus', 'ovos' or 'random'"})
    mom2_n_tokens: int = dataclasses.field(
        default=100_000, metadata={"help": "sample size of C in tokens (originals: ~1e7-1e8)"})
    mom2_seq_len: int = dataclasses.field(
        default=1024, metadata={"help": "packed sequence length for the statistics"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.v_lr <= 0 or self.v_num_grad_steps < 1:
            raise ValueError("v_lr must be > 0 and v_num_grad_steps >= 1")
        if min(self.v_weight_decay, self.kl_factor) < 0 or self.clamp_norm_factor <= 0:
            raise ValueError("v_weight_decay, kl_factor must be >= 0, clamp_norm_factor > 0")
        if self.context_templates not in ("generated", "bare"):
            raise ValueError(f"context_templates must be 'generated' or 'bare', not {self.context_templates!r}")
        if self.mom2_corpus not in CORPORA:
            raise ValueError(f"mom2_corpus must be one of {CORPORA}, not {self.mom2_corpus!r}")
        if self.mom2_n_tokens < 1 or self.mom2_seq_len < 2:
            raise ValueError("mom2_n_tokens must be >= 1 and mom2_seq_len >= 2")


def n_layers(model) -> int:
    """Number of decoder layers of ``model``."""
    return len(get_module(model, architecture(model).layers))


def depth_layer(num_layers: int, ratio: float) -> int:
    """``round(ratio * num_layers)`` clipped to the model: the papers' layer scaled to depth."""
    return max(0, min(num_layers - 1, round(ratio * num_layers)))


@dataclass
class Request:
    """One fact to write: ``prompt`` contains ``subject``; ``target`` is the new object."""

    prompt: str
    subject: str
    target: str


def make_request(record: EditRecord, method: str) -> Request:
    """The record as a :class:`Request`, or a ValueError if it has no usable subject."""
    where = f" ({record.source})" if record.source else ""
    if not record.subject or not record.subject.strip():
        raise ValueError(f"{method} needs the subject of the fact (EditRecord.subject){where}; "
                         "use a dataset that carries it (ZsRE, CounterFact) or a codebook editor")
    if record.subject not in record.prompt:
        raise ValueError(f"{method}: subject {record.subject!r} does not occur in the prompt "
                         f"{record.prompt!r}{where}")
    return Request(record.prompt, record.subject, record.target)


def subject_last_index(tokenizer, prefix: str, prompt: str, subject: str, chat: bool = False) -> int:
    """Token index of the subject's last token in ``format(prefix + prompt)``.

    Cumulative tokenization: the length of the tokens of the text up to the subject's end,
    minus one (with the tokenizer's BOS if it adds one, as the full prompt has it).
    """
    content = prefix + prompt
    text = format_prompt(tokenizer, content, chat)
    start = text.find(content) + len(prefix) + prompt.find(subject)
    ids = tokenizer(text[: start + len(subject)], add_special_tokens=not chat).input_ids
    return len(ids) - 1


def cat_batches(a: Batch, b: Batch, pad: int) -> Batch:
    """Two right-padded batches stacked (padded to the wider one)."""
    width = max(a.input_ids.shape[1], b.input_ids.shape[1])

    def grow(t, value):
        return F.pad(t, (0, width - t.shape[1]), value=value)

    return Batch(**{
        f.name: torch.cat([grow(getattr(a, f.name), pad if f.name == "input_ids" else 0),
                           grow(getattr(b, f.name), pad if f.name == "input_ids" else 0)])
        for f in dataclasses.fields(Batch)
    })


class LocateEditor(WeightEditor):
    """Base of ROME, MEMIT and AlphaEdit: templates, keys, the value optimization, C."""

    config_class = LocateConfig

    @property
    def template_specs(self) -> list[tuple[str | None, int, int]]:
        """``(start text or None for start-of-text, how many, new tokens)`` per group."""
        raise NotImplementedError

    def __init__(self, model, tokenizer, config=None, **overrides):
        super().__init__(model, tokenizer, config, **overrides)
        self.arch = architecture(model)
        self.templates: list[str] | None = None
        self.cov: dict[int, torch.Tensor] = {}
        self.last_solve: dict = {}  # tensors of the latest closed-form solve, for inspection

    # ---- covariance ----------------------------------------------------------------------
    def covariances(self, layers) -> dict[int, torch.Tensor]:
        """C_l = E[k kᵀ] (float64) of the unedited model for each layer, cached."""
        missing = [layer for layer in layers if layer not in self.cov]
        if missing:
            cfg = self.config
            with self.disabled():
                stats = layer_stats(self.model, self.tokenizer, missing, cfg.mom2_corpus,
                                    cfg.mom2_n_tokens, cfg.mom2_seq_len)
            for layer, moment in stats.items():
                self.cov[layer] = moment.moment().to(self.device)
        return {layer: self.cov[layer] for layer in layers}

    # ---- templates -------------------------------------------------------------------------
    def context_templates(self) -> list[str]:
        """``["{}"] + [generated + ". {}"]``, sampled once per editor (seeded by ``seed``)."""
        if self.templates is None:
            self.templates = ["{}"]
            if self.config.context_templates == "generated":
                self.templates += self._generate_templates()
        return self.templates

    @torch.no_grad()
    def _generate_templates(self) -> list[str]:
        tok, out = self.tokenizer, []
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed)
            for start, count, length in self.template_specs:
                if start is None:  # ROME: from the start-of-text token
                    first = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
                    ids = torch.tensor([[first]])
                else:
                    ids = torch.tensor([tok(start).input_ids])
                gen = self.model.generate(
                    input_ids=ids.to(self.device), attention_mask=torch.ones_like(ids).to(self.device),
                    do_sample=True, top_k=5, top_p=1.0, temperature=1.0, max_new_tokens=length,
                    num_return_sequences=count, pad_token_id=tok.pad_token_id,
                )
                for row in tok.batch_decode(gen, skip_special_tokens=True):
                    out.append(row.replace("{", " ").replace("}", " ").strip() + ". {}")
        return out

    # ---- keys -------------------------------------------------------------------------------
    @torch.no_grad()
    def read_at_subject(self, requests: list[Request], templates: list[str], paths, chunk: int = 64):
        """Inputs and outputs of modules ``paths`` at the subject-last token of each
        (template, request) prompt, template-major: ``({path: (T*n, d_in)}, {path: (T*n, d)})``.
        """
        rows = [(t[: t.index("{}")], r) for t in templates for r in requests]
        ins = {p: [] for p in paths}
        outs = {p: [] for p in paths}
        for i in range(0, len(rows), chunk):
            part = rows[i : i + chunk]
            batch = make_batch(self.tokenizer, self.model, [pre + r.prompt for pre, r in part],
                               chat=self.config.chat).to(self.device)
            idx = torch.tensor([subject_last_index(self.tokenizer, pre, r.prompt, r.subject,
                                                   self.config.chat) for pre, r in part])
            if (idx >= batch.prompt_mask.sum(1).cpu()).any() or (idx < 0).any():
                raise ValueError("subject-last index outside the prompt; check the subject")
            with Trace(self.model, paths) as trace:
                self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           use_cache=False)
            at = (torch.arange(len(part)), idx)
            for p in paths:
                ins[p].append(trace.inputs[p][at].float())
                outs[p].append(trace.outputs[p][at].float())
        return ({p: torch.cat(v) for p, v in ins.items()}, {p: torch.cat(v) for p, v in outs.items()})

    def template_keys(self, requests: list[Request], layer: int, grouped: bool) -> torch.Tensor:
        """``(d_in, n)`` keys at layer ``layer``, averaged over the context templates.

        ``grouped`` (MEMIT's ``compute_ks``): ½·key("{}") + ½·mean over the prefixed ones;
        otherwise (ROME's ``compute_u``) one mean over all templates.
        """
        return self.template_keys_at(requests, [layer], grouped)[layer]

    def template_keys_at(self, requests: list[Request], layers, grouped: bool) -> dict[int, torch.Tensor]:
        """:meth:`template_keys` at several layers from one forward pass (same weights)."""
        paths = {layer: edit_site(self.model, layer).path for layer in layers}
        templates = self.context_templates()
        read = self.read_at_subject(requests, templates, list(paths.values()))[0]
        out = {}
        for layer, path in paths.items():
            keys = read[path].view(len(templates), len(requests), -1)
            if grouped and len(templates) > 1:
                mean = 0.5 * keys[0] + 0.5 * keys[1:].mean(0)
            else:
                mean = keys.mean(0)
            out[layer] = mean.T.to(torch.float64)
        return out

    # ---- the target value -----------------------------------------------------------------
    def compute_value(self, request: Request, layer: int, at: str) -> tuple[torch.Tensor, dict]:
        """ROME's v* (``at="mlp"``: MLP output of ``layer``) or MEMIT's z (``at="block"``:
        the residual stream after block ``layer``); returns ``(h₀ + δ, log fields)``.
        """
        cfg, tok, chat = self.config, self.tokenizer, self.config.chat
        templates = self.context_templates()
        prefixes = [t[: t.index("{}")] for t in templates]
        rewrite = make_batch(tok, self.model, [p + request.prompt for p in prefixes],
                             [request.target] * len(prefixes), chat)
        kl_prompt = KL_PROMPT.format(request.subject)
        batch = cat_batches(rewrite, make_batch(tok, self.model, [kl_prompt], chat=chat),
                            tok.pad_token_id).to(self.device)
        idx = [subject_last_index(tok, p, request.prompt, request.subject, chat) for p in prefixes]
        idx.append(subject_last_index(tok, "", kl_prompt, request.subject, chat))
        m = len(prefixes)
        site = edit_site(self.model, layer)
        suffix = Suffix(self.model, site)
        # layers `layer`..end run from each row's subject-last token on only (Suffix.tail)
        tail = suffix.tail(batch, tok.pad_token_id or 0, positions=idx)
        t_rows, labels = tail.rows, tail.labels
        rows = torch.cat([t_rows, torch.tensor([m], device=self.device)])
        cols = torch.cat([tail.cols, torch.tensor([0], device=self.device)])
        at_rows = torch.arange(m + 1, device=self.device)
        at_cols = torch.zeros(m + 1, dtype=torch.long, device=self.device)
        counts = torch.bincount(t_rows, minlength=m).float()
        captured = tail.captured

        delta = torch.zeros(site.d_out, device=self.device, requires_grad=True)
        state: dict = {}

        def hook(_module, _args, output):
            h = output[0] if isinstance(output, tuple) else output
            if "h0" not in state:
                state["h0"] = h[0, 0].detach().float().clone()
            h = h.clone()
            h[at_rows, at_cols] = h[at_rows, at_cols] + delta.to(h.dtype)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        block = f"{self.arch.layers}.{layer}"
        module = get_module(self.model, site.path.rpartition(".")[0] if at == "mlp" else block)
        opt = torch.optim.Adam([delta], lr=cfg.v_lr)
        handle = module.register_forward_hook(hook)
        try:
            for step in range(cfg.v_num_grad_steps):
                logp = torch.log_softmax(suffix.logits(captured, rows, cols), dim=-1)
                token_lp = logp[:-1].gather(1, labels[:, None])[:, 0]
                per_prompt = torch.zeros(m, device=self.device).index_add(0, t_rows, token_lp)
                nll = -(per_prompt / counts).mean()
                kl_logp = logp[-1:]
                if "kl0" not in state:
                    state["kl0"] = kl_logp.detach().clone()
                    state["nll0"] = nll.item()
                kl = F.kl_div(state["kl0"], kl_logp, log_target=True, reduction="batchmean")
                decay = delta.norm() / state["h0"].norm() ** 2
                loss = nll + cfg.kl_factor * kl + cfg.v_weight_decay * decay
                if loss.item() < EARLY_STOP_LOSS or step == cfg.v_num_grad_steps - 1:
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    limit = cfg.clamp_norm_factor * state["h0"].norm()
                    if delta.norm() > limit:
                        delta.mul_(limit / delta.norm())
        finally:
            handle.remove()
        info = {"v_steps": step + 1, "nll_start": round(state["nll0"], 5),
                "nll": round(nll.item(), 5), "kl": round(kl.item(), 6),
                "delta_norm": round(delta.norm().item(), 5), "h0_norm": round(state["h0"].norm().item(), 5)}
        return (state["h0"] + delta.detach()).to(torch.float64), info

    # ---- save/load extras -----------------------------------------------------------------
    def _state(self):
        state, tensors = super()._state()
        return {**state, "templates": self.templates}, tensors

    def _load_state(self, state, tensors):
        super()._load_state(state, tensors)
        self.templates = state.get("templates")
