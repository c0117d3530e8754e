"""Turning prompts and targets into token batches, one rule for editing and scoring.

The join rule (the reference's): the text is ``prompt + " " + target``; the prompt tokens
are exactly what the prompt alone tokenizes to (with the tokenizer's BOS, if it adds one);
the target tokens are the rest, so the target keeps its leading space and no BOS lands
inside the sequence. Where a tokenizer does not tokenize the joined text as
``prompt tokens + rest`` (it merges across the boundary), the target is tokenized on its own
with a leading space and no special tokens, and appended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def format_prompt(tokenizer, prompt: str, chat: bool = False) -> str:
    """The prompt as the model sees it: raw, or inside the tokenizer's chat template."""
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template; drop --chat")
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompt(tokenizer, prompt: str, chat: bool = False) -> list[int]:
    """Token ids of one (formatted) prompt."""
    text = format_prompt(tokenizer, prompt, chat)
    return tokenizer(text, add_special_tokens=not chat).input_ids


def pool_positions(tokenizer, prompt: str, chat: bool = False) -> list[int]:
    """1 at the prompt tokens a query pools over, 0 elsewhere.

    Raw prompts pool over all their tokens. Inside a chat template, only the tokens of the
    user's message count: the template's own tokens are the same for every prompt and
    would make all queries alike. (The value still goes to the last token of the whole
    formatted prompt, where the answer starts.)
    """
    ids = encode_prompt(tokenizer, prompt, chat)
    if not chat:
        return [1] * len(ids)
    text = format_prompt(tokenizer, prompt, chat)
    start = text.rfind(prompt)
    spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True).offset_mapping
    mask = [int(s < start + len(prompt) and e > start) for s, e in spans]
    return mask if any(mask) and len(mask) == len(ids) else [1] * len(ids)


def encode_pair(tokenizer, prompt: str, target: str, chat: bool = False):
    """``(prompt_ids, target_ids)`` by the join rule above."""
    if not target.strip():
        raise ValueError("the target is empty")
    prompt_ids = encode_prompt(tokenizer, prompt, chat)
    text = format_prompt(tokenizer, prompt, chat)
    sep = "" if chat else " "
    full = tokenizer(text + sep + target.strip(), add_special_tokens=not chat).input_ids
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return prompt_ids, full[len(prompt_ids) :]
    target_ids = tokenizer(sep + target.strip(), add_special_tokens=False).input_ids
    return prompt_ids, target_ids


@dataclass
class Batch:
    """A right-padded batch of prompt (+ optional target) sequences.

    Args:
        input_ids, attention_mask: ``(B, T)``.
        prompt_mask: ``(B, T)`` 1 at prompt tokens only.
        target_mask: ``(B, T)`` 1 at target tokens only.
        pool_mask: ``(B, T)`` 1 at the prompt tokens queries pool over (see
            :func:`pool_positions`).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_mask: torch.Tensor
    target_mask: torch.Tensor
    pool_mask: torch.Tensor

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in self.__dict__.values()))

    def select(self, rows: list[int]) -> Batch:
        """The sub-batch of ``rows``."""
        return Batch(*(t[rows] for t in self.__dict__.values()))

    def head_columns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the LM head must run to predict the target tokens: ``(columns, at)``.

        ``columns`` are the sorted positions just before some row's target token; ``at`` gives,
        for each target token in ``target_mask.nonzero()`` order, the index in ``columns`` of
        the position that predicts it.
        """
        before = self.target_mask.nonzero(as_tuple=True)[1] - 1
        columns = torch.unique(before)
        return columns, torch.searchsorted(columns, before)


def check_length(tokenizer, model, n_tokens: int, what: str) -> None:
    """A clear error for a sequence longer than the model's context."""
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    if limit and n_tokens > limit:
        raise ValueError(f"{what} is {n_tokens} tokens, longer than the model's context ({limit})")


def check_answer_end(setting: str) -> None:
    """The one check of an ``answer_end`` setting (:func:`answer_end_ids`), for the configs."""
    if not setting:
        raise ValueError("answer_end must be 'auto', 'none' or a non-empty stop string")


def answer_end_ids(tokenizer, chat: bool, setting: str = "auto") -> list[int]:
    """The tokens that end an answer, trained after each target so the model stops there.

    Args:
        setting: ``"auto"``: in chat mode the chat template's end-of-turn token (what the
            template writes right after an assistant message: ``<|im_end|>``, ``<|eot_id|>``),
            in plain mode the tokenizer's end-of-sequence token; ``"none"``: nothing (the
            paper's training, where the answer runs on after the target); any other string:
            its tokens (a stop string such as ``"\n"``).
    """
    if setting == "none":
        return []
    if setting != "auto":
        return tokenizer(setting, add_special_tokens=False).input_ids
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if not chat or not getattr(tokenizer, "chat_template", None):
        return eos
    marker = "horenanswer"
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    after = text[text.rfind(marker) + len(marker) :]
    ids = tokenizer(after, add_special_tokens=False).input_ids
    special = set(tokenizer.all_special_ids)
    return next(([i] for i in ids if i in special), eos)


def make_batch(
    tokenizer, model, prompts, targets=None, chat: bool = False, end_ids: Sequence[int] = ()
) -> Batch:
    """Right-padded batch of ``prompt [+ " " + target]`` with prompt and target masks.

    ``end_ids`` (:func:`answer_end_ids`) are appended after each target and count as target
    tokens (value training); the scorers never pass them.
    """
    rows = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt {i} is empty")
        if targets is None:
            p, t = encode_prompt(tokenizer, prompt, chat), []
        else:
            p, t = encode_pair(tokenizer, prompt, targets[i], chat)
            t = t + list(end_ids)
        check_length(tokenizer, model, len(p) + len(t), f"prompt {i} (+ target)")
        rows.append((p, t, pool_positions(tokenizer, prompt, chat) if chat else [1] * len(p)))
    width = max(len(p) + len(t) for p, t, _ in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    att, pm, tm, qm = (torch.zeros(len(rows), width, dtype=torch.long) for _ in range(4))
    for i, (p, t, q) in enumerate(rows):
        n = len(p) + len(t)
        ids[i, :n] = torch.tensor(p + t)
        att[i, :n] = 1
        pm[i, : len(p)] = 1
        tm[i, len(p) : n] = 1
        qm[i, : len(p)] = torch.tensor(q)
    return Batch(ids, att, pm, tm, qm)
