"""Every family in the architecture table, on a tiny random model of that family.

conftest.FAMILIES runs the whole suite on Llama, Qwen2 and GPT-2; this file checks the other
rows of :data:`horen.models.ARCHITECTURES` (Mistral, Gemma, Phi-3, GPT-NeoX, GPT-J, ...) end
to end: the table's paths exist with the orientation it states, the fast paths (layers from
the edit site up, cached generation) equal the full model, HoReN learns an edit and rolls it
back to the base model's exact logits, ROME's closed form lands on that family's W,
UltraEdit's one-gradient edit writes that family's MLP input matrices and rolls back, and
WISE, MEMOIR, REPAIR and UnKE each change the edit prompt's logits and roll back to the base
bits (Falcon's in-place add to the MLP output broke WISE's training: found here).
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from horen.data import EditRecord
from horen.editors import MEMOIR, REPAIR, ROME, WISE, HoReN, UltraEdit, UnKE
from horen.models import ARCHITECTURES, edit_site, get_module
from horen.suffix import Suffix
from horen.text import make_batch

WIDE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
        "num_attention_heads": 4, "max_position_embeddings": 128}
GQA = {**WIDE, "num_key_value_heads": 2}
CONFIGS = {  # model_type -> small config arguments
    "llama": GQA,
    "mistral": {**GQA, "sliding_window": None},
    "qwen2": GQA,
    "qwen3": {**GQA, "head_dim": 8},
    "gemma": {**GQA, "head_dim": 8},
    "gemma2": {**GQA, "head_dim": 8, "sliding_window": 64, "query_pre_attn_scalar": 8},
    "phi3": {**WIDE, "pad_token_id": 0},
    "gpt2": {"n_embd": 24, "n_layer": 3, "n_head": 4, "n_positions": 128},
    "gpt_neox": {**WIDE, "rotary_pct": 0.5},
    "gptj": {"n_embd": 32, "n_inner": 64, "n_layer": 3, "n_head": 4, "n_positions": 128,
             "rotary_dim": 4},
    "gemma3_text": {**GQA, "head_dim": 8, "sliding_window": 64, "query_pre_attn_scalar": 8},
    "olmo2": GQA,
    "stablelm": GQA,
    "phi": WIDE,
    "starcoder2": {**GQA, "sliding_window": None},
    "falcon": {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
               "new_decoder_architecture": False, "multi_query": True},
    "bloom": {"hidden_size": 32, "n_layer": 3, "n_head": 4},
}
# Gemma-2 and Gemma-3 normalize the MLP's output again (post_feedforward_layernorm, gain 1 at random init),
# so a value added at W can turn that layer's contribution but not grow it; on a random tiny
# model that is too little to move the argmax (the loss still falls, checked).
POST_MLP_NORM = {"gemma2", "gemma3_text"}
P1, T1 = "Who leads Zorblat Industries?", "Paris"
OTHER = "Which river flows through Cairo?"


def test_every_table_row_has_a_tiny_model_here():
    assert set(CONFIGS) == set(ARCHITECTURES)


def build(model_type: str):
    tok = make_tokenizer(bos=model_type in ("llama", "mistral", "gemma", "gemma2"))
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), **CONFIGS[model_type])
    cfg.bos_token_id = cfg.eos_token_id = cfg.pad_token_id = tok.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


@pytest.fixture(params=sorted(CONFIGS))
def arch(request):
    return request.param


def test_table_paths_exist_with_the_stated_orientation(arch):
    model, _ = build(arch)
    row = ARCHITECTURES[arch]
    site = edit_site(model, None)
    assert site.path == f"{row.layers}.{model.config.num_hidden_layers - 1}.{row.site}"
    w = get_module(model, site.path)
    assert isinstance(w, Conv1D) == row.conv1d
    x = torch.randn(2, site.d_in)
    assert w(x).shape == (2, site.d_out) == (2, model.config.hidden_size)
    assert len(get_module(model, row.layers)) == model.config.num_hidden_layers
    layer = get_module(model, row.layers)[0]
    for path in row.mlp_in:  # UltraEdit's matrices: they read the hidden state
        assert get_module(layer, path)(torch.randn(2, model.config.hidden_size)).shape[0] == 2
    norm = get_module(model, row.final_norm)
    assert norm(torch.randn(2, model.config.hidden_size)).shape == (2, model.config.hidden_size)


def test_layers_from_the_site_up_equal_the_full_model(arch):
    model, tok = build(arch)
    site = edit_site(model, 1)
    suffix = Suffix(model, site)
    batch = make_batch(tok, model, [P1, OTHER, "Paris"], ["Mira Quell", "Osk", "the long river"])
    rows, cols = batch.target_mask.nonzero(as_tuple=True)
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        fast = suffix.logits(suffix.capture(batch.input_ids, batch.attention_mask), rows, cols - 1)
    assert torch.allclose(fast, full[rows, cols - 1].float(), atol=1e-4, rtol=1e-4)


def test_horen_edits_routes_generates_and_rolls_back_exactly(arch):
    model, tok = build(arch)
    batch = make_batch(tok, model, [P1, OTHER], [T1, "Osk"])
    other = make_batch(tok, model, [OTHER], ["Osk"])
    with torch.no_grad():
        base = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        base_other = model(input_ids=other.input_ids, attention_mask=other.attention_mask).logits
    ed = HoReN(model, tok, tau=0.999999)
    values = torch.randn(2, ed.site.d_out)
    _, tail_logits, _ = ed._tail_forward(batch)(values)
    _, full_logits, _ = ed._full_forward(batch)(values)
    assert torch.allclose(tail_logits, full_logits, atol=1e-4, rtol=1e-4)
    edit = ed.edit(P1, T1)
    one = make_batch(tok, model, [P1], [T1])
    at = one.target_mask.nonzero(as_tuple=True)
    assert ed.edits[-1]["loss"] < ed.edits[-1]["loss_start"]
    if arch not in POST_MLP_NORM:
        assert ed.logits(one)[at[0], at[1] - 1].argmax(-1).item() == one.input_ids[at].item()
    assert (ed.routes([OTHER]) == -1).all()
    assert torch.equal(ed.logits(other), base_other)  # unmatched: the base model's bits
    prompts = [P1, OTHER, "Paris"]
    assert ed.generate(prompts, max_new_tokens=4) == ed.generate(prompts, max_new_tokens=4,
                                                                  use_cache=False)
    ed.remove(edit)
    assert torch.equal(ed.logits(batch), base)


def test_rome_writes_v_star_into_that_familys_weight(arch):
    model, tok = build(arch)
    fast = {"mom2_corpus": "random", "mom2_n_tokens": 256, "mom2_seq_len": 64,
            "context_templates": "bare", "v_num_grad_steps": 4}
    ed = ROME(model, tok, layer=1, **fast)
    param = model.get_parameter(f"{ed.site.path}.weight")
    w0 = param.detach().clone()
    eid = ed.apply(EditRecord(P1, "Mira Quell", subject="Zorblat Industries"))
    s = ed.last_solve
    w = param.detach().double()
    w = w.T if ed.site.conv1d else w
    bias = getattr(get_module(model, ed.site.path), "bias", None)
    out = w @ s["k"] + (bias.double() if bias is not None else 0)
    assert torch.allclose(out, s["v_star"], atol=1e-5)
    ed.remove(eid)
    assert torch.equal(param.detach(), w0)


def test_ultraedit_writes_that_familys_mlp_inputs_and_rolls_back(arch):
    model, tok = build(arch)
    ed = UltraEdit(model, tok, lr=1e-2)
    params = {p: model.get_parameter(f"{p}.weight") for p in ed.config.modules}
    before = {p: w.detach().clone() for p, w in params.items()}
    eid = ed.apply(EditRecord(P1, T1))
    assert all(not torch.equal(params[p].detach(), before[p]) for p in params)
    ed.remove(eid)
    assert all(torch.equal(params[p].detach(), before[p]) for p in params)  # exact


FAST_EDITORS = {  # settings that make one edit take well under a second on a tiny model
    "memoir": (MEMOIR, {"templates": "bare", "background_corpus": "random",
                        "background_tokens": 64, "edit_lr": 10.0, "n_iter": 4}),
    "repair": (REPAIR, {"templates": "bare", "n_iter": 4, "edit_lr": 10.0}),
    "wise": (WISE, {"templates": "bare", "n_iter": 4, "edit_lr": 10.0}),
    "unke": (UnKE, {"preserve_corpus": "random", "n_preserve": 2, "preserve_tokens": 8,
                    "v_num_grad_steps": 3, "optim_num_step": 3, "lr": 1e-2}),
}


@pytest.mark.parametrize("method", sorted(FAST_EDITORS))
def test_the_newer_editors_edit_that_family_and_roll_back_exactly(arch, method):
    model, tok = build(arch)
    batch = make_batch(tok, model, [P1, OTHER], [T1, "Osk"])
    with torch.no_grad():
        base = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    cls, settings = FAST_EDITORS[method]
    ed = cls(model, tok, **settings)
    eid = ed.apply(EditRecord(P1, T1))
    assert not torch.equal(ed.logits(batch)[0], base[0])  # the edit prompt's answer moved
    ed.remove(eid)
    assert torch.equal(ed.logits(batch), base)
    ed.close()
