"""Suffix.tail: layers L..end replayed from an edited position on equal the full replay."""

from __future__ import annotations

import torch
from conftest import build

from horen.models import edit_site, get_module
from horen.suffix import Suffix, align_at
from horen.text import make_batch

PROMPTS = ["Who leads Zorblat Industries today?", "Paris", "What is the capital of France?"]
TARGETS = ["Mira Quell", "the long river Nile", "Osk"]


def test_align_at_puts_each_position_in_one_column():
    model, tok = build("gpt2")
    batch = make_batch(tok, model, PROMPTS, TARGETS)
    positions = [2, 0, 4]
    ids, mask, pos, col = align_at(batch, positions, tok.pad_token_id)
    assert col == 4
    for i, p in enumerate(positions):
        assert ids[i, col] == batch.input_ids[i, p] and pos[i, col] == p
        n = int(batch.attention_mask[i].sum())
        real = ids[i][mask[i].bool()]
        assert torch.equal(real, batch.input_ids[i, :n])


def test_tail_from_any_position_equals_the_full_replay(family):
    model, tok = build(family)
    site = edit_site(model, None)
    suffix = Suffix(model, site)
    batch = make_batch(tok, model, PROMPTS, TARGETS)
    positions = [3, 0, 2]  # e.g. a subject's last token, inside each prompt
    delta = torch.randn(site.d_out)
    rows_pos: dict = {}

    def hook(_module, _args, out):  # add delta at each row's edited position
        out = out.clone()
        r, c = rows_pos["rows"], rows_pos["cols"]
        out[r, c] = out[r, c] + delta
        return out

    rows, cols = batch.target_mask.nonzero(as_tuple=True)
    captured = suffix.capture(batch.input_ids, batch.attention_mask)
    tail = suffix.tail(batch, tok.pad_token_id, positions)
    handle = get_module(model, site.path).register_forward_hook(hook)
    try:
        with torch.no_grad():
            rows_pos.update(rows=torch.arange(3), cols=torch.tensor(positions))
            full = suffix.logits(captured, rows, cols - 1)
            rows_pos.update(cols=torch.zeros(3, dtype=torch.long))
            fast = suffix.logits(tail.captured, tail.rows, tail.cols)
    finally:
        handle.remove()
    assert torch.equal(tail.rows, rows)
    assert torch.equal(tail.labels, batch.input_ids[rows, cols])
    assert torch.allclose(fast, full, atol=1e-4, rtol=1e-4)
