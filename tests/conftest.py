"""Tiny random models built in-process (no downloads), one table for every family.

Each case gives a model config (Llama, Qwen2, GPT-2) and a tokenizer trained in a few
milliseconds on a small corpus: byte-level BPE like GPT-2 and SmolLM2, with a BOS token for the
Llama case (as Llama tokenizers add one).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CORPUS = [
    "Who leads Zorblat Industries? Mira Quell leads it.",
    "What is the capital of France? Paris is the capital of France.",
    "The mother tongue of Danielle Darrieux is French. Osk is a city in Veltria.",
    "Which river flows through Cairo? The Nile flows through Cairo, Egypt.",
    "When was the inception of IAAF Combined Events Challenge? 2006 and 1998 and 2011.",
    "Who is in charge of the company? The chief executive officer runs the firm.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 ?!.,'-",
]


def make_tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=2000, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<s>" if bos else None
    )
    fast.pad_token = fast.eos_token
    return fast


def _llama(vocab):
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg)


def _qwen2(vocab):
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return Qwen2ForCausalLM(cfg)


def _gpt2(vocab):
    cfg = GPT2Config(vocab_size=vocab, n_embd=24, n_layer=4, n_head=4, n_positions=128,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg)


FAMILIES = {"llama": (_llama, True), "qwen2": (_qwen2, False), "gpt2": (_gpt2, False)}


def build(family: str, seed: int = 0):
    """``(model, tokenizer)`` for one family, deterministic for a seed."""
    make_model, bos = FAMILIES[family]
    tok = make_tokenizer(bos)
    torch.manual_seed(seed)
    model = make_model(len(tok)).eval()
    model.config.bos_token_id = model.config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny(family):
    return build(family)


@pytest.fixture(autouse=True)
def _reference_cache(tmp_path, monkeypatch):
    """Benchmarks in tests cache the base reference in a temporary folder, not in ~/.cache."""
    import horen.bench.reference

    monkeypatch.setattr(horen.bench.reference, "default_root", lambda: tmp_path / "reference")


def skip_or_fail(reason: str) -> None:
    """Skip a test whose input this machine lacks (a user's clone) - but fail under CI=true,
    where everything it needs is installed and ``../shared`` is beside the checkout."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: it must be present)")
    pytest.skip(reason)


def require_shared(folder: str = "") -> Path:
    """``../shared/data/<folder>`` (or under ``$HOREN_DATA``), else skip / fail as above."""
    from horen.data.loaders import data_roots

    for root in data_roots():
        if (root / folder).is_dir():
            return root / folder
    skip_or_fail(f"../shared/data/{folder} is not present (the shared datasets are not beside "
                 "this checkout)")
    raise AssertionError("unreachable")


@pytest.fixture
def shared_data() -> Path:
    return require_shared()
