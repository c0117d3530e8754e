"""REPAIR (WISE + distillation + shards of 5, merges of 15) on the tiny models of conftest.

WISE's own pieces (the 2-vector TIES by hand, margins, rollback, routing order) are tested in
test_wise.py; here what REPAIR adds or sets differently.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build

from horen.data.record import EditRecord
from horen.editors.base import Editor
from horen.editors.memory.repair import REPAIR, REPAIRConfig, distill_loss
from horen.editors.memory.wise import WISE, WISEConfig, ties_merge
from horen.text import make_batch

PROMPTS = [
    "Who leads Zorblat Industries?",
    "What is the capital of Veltria?",
    "Which river flows through Cairo?",
    "Who is in charge of the company?",
    "The mother tongue of Danielle Darrieux is",
]
TARGETS = ["Mira Quell", "Osk", "Paris", "Nile", "French"]
RECORDS = [EditRecord(f"{p} ({k})", t) for k in range(4) for p, t in zip(PROMPTS, TARGETS)]
R1 = RECORDS[0]
FAST = {"templates": "bare", "n_iter": 4}


def answer_hits(ed, record):
    """Share of the target tokens that are the teacher-forced argmax of the (edited) model."""
    batch = make_batch(ed.tokenizer, ed.model, [record.prompt], [record.target])
    rows, cols = batch.target_mask.nonzero(as_tuple=True)
    pred = ed.logits(batch)[rows, cols - 1].argmax(-1)
    return (pred == batch.input_ids[rows, cols]).float().mean().item()


def test_defaults_are_the_released_yaml_and_round_trip():
    cfg = REPAIRConfig()
    released = {
        "save_freq": 5,
        "merge_freq": 15,
        "act_ratio": 0.2,
        "edit_lr": 0.9,
        "n_iter": 30,
        "densities": 0.53,
        "norm_constraint": 1.0,
        "mask_ratio": 0.2,
        "act_margin": [2.0, 20.0, 10.0],
        "distill_weight": 0.0,
        "temperature": 2.0,
        "distill_alpha": 0.5,
    }
    assert {k: getattr(cfg, k) for k in released} == released
    assert isinstance(cfg, WISEConfig) and REPAIRConfig.from_dict(cfg.to_dict()) == cfg
    for f in REPAIRConfig.__dataclass_fields__.values():
        assert f.metadata.get("help"), f.name
    bad = (
        {"distill_weight": -1.0},
        {"temperature": 0.0},
        {"distill_alpha": 1.5},
        {"save_freq": 5, "merge_freq": 12},
    )
    for settings in bad:
        with pytest.raises(ValueError):
            REPAIRConfig(**settings)


def test_ties_merge_of_three_task_vectors_by_hand():
    """The 2-vector case is in test_wise; here 3 vectors at REPAIR's density 0.53."""
    base = torch.ones(6)
    taus = [
        torch.tensor([4.0, -1.0, 0.5, 2.0, -3.0, 0.1]),
        torch.tensor([-2.0, 3.0, 0.2, 1.0, -5.0, 0.3]),
        torch.tensor([1.0, 2.0, -6.0, -0.5, 0.4, 0.7]),
    ]
    merged = ties_merge(base, [base + t for t in taus], density=0.53)
    # int(0.53 * 6) = 3 kept each: [4,0,0,2,-3,0], [-2,3,0,0,-5,0], [1,2,-6,0,0,0];
    # elected signs of the sum [3,5,-6,2,-8,0]: + + - + - 0; means of the agreeing entries
    assert torch.allclose(merged, base + torch.tensor([2.5, 2.5, -6.0, 2.0, -4.0, 0.0]))


def kl_by_hand(z, teacher, t):
    q = torch.softmax(teacher / t, -1)
    log_p = torch.log_softmax(z / t, -1)
    return (q * (q.log() - log_p)).sum() / z.shape[0]


def test_distill_loss_is_the_formula_zero_for_equal_teachers_and_gradchecks():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    z1, zbar = (torch.randn(7, generator=gen, dtype=torch.float64) for _ in range(2))
    w, t, a = 0.7, 2.0, 0.3
    expected = w * t * t * (a * kl_by_hand(z, z1, t) + (1 - a) * kl_by_hand(z, zbar, t))
    assert distill_loss(z, z1, zbar, w, t, a).item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.autograd.gradcheck(lambda s: distill_loss(s, z1, zbar, w, t, a), (z,))
    same = z1.repeat(3, 1)  # every student row equals both teachers
    assert distill_loss(same, z1, z1, w, t, a).abs().item() < 1e-12
    assert distill_loss(same, z1, zbar, w, t, a).item() > 1e-3  # only z̄ differs


def test_no_distillation_without_history_or_weight():
    model, tok = build("llama")
    ed = REPAIR(model, tok, distill_weight=1.0, **FAST)
    z = torch.randn(4, len(tok))
    assert ed.teachers() is None and ed.extra_loss(z).item() == 0.0
    ed.history = [torch.randn(len(tok))]
    assert ed.extra_loss(z).item() > 0
    off = REPAIR(build("llama")[0], tok, **FAST)  # distill_weight 0: the released configs
    off.history = ed.history
    assert off.extra_loss(z).item() == 0.0
    assert type(WISE.extra_loss(ed, z)) is torch.Tensor and WISE.extra_loss(ed, z).item() == 0.0


def test_shards_of_five_merges_of_fifteen_and_the_group_history():
    model, tok = build("gpt2")
    ed = REPAIR(model, tok, distill_weight=0.5, **FAST)
    masks = [ed.mask]
    for k, r in enumerate(RECORDS[:15], start=1):
        ed.apply(r)
        if ed.shard == len(masks):  # a shard started: a new mask, the shard's own
            masks.append(ed.mask)
        assert torch.equal(ed.mask, ed._mask(ed.shard))
        if k == 5:  # full, saved when the next edit arrives (WISE's rule)
            assert ed.memories == [] and len(ed.shard_edits) == 5
        if k == 6:
            assert len(ed.memories) == 1 and ed.saved_ids == [1, 2, 3, 4, 5]
    assert len(ed.memories) == 2 and len(ed.shard_edits) == 5 and ed.shard == 2
    assert ed.history == [] and sorted(ed.pending) == list(range(1, 16))
    shards = [w for w, _ in ed.memories] + [ed.side]
    least = min([t for _, t in ed.memories] + [ed.threshold()])
    group = torch.stack([ed.pending[i] for i in range(1, 16)]).mean(0)
    ed.apply(RECORDS[15])  # shard 2 saved: the 3 shards become exactly 1 merged memory
    masks.append(ed.mask)
    assert len(ed.memories) == 1 and ed.shard == 3 and len(ed.saved_ids) == 15
    merged, thr = ed.memories[0]
    assert torch.equal(merged, ties_merge(ed.w0, shards, 0.53)) and thr == least
    assert all(not torch.equal(a, b) for i, a in enumerate(masks) for b in masks[i + 1 :])
    assert len(ed.history) == 1 and torch.allclose(ed.history[0], group)
    assert list(ed.pending) == [16] and ed.edits[-1]["kd"] > 0  # the first distilled edit


def test_only_the_last_three_groups_are_kept():
    model, tok = build("qwen2")
    ed = REPAIR(model, tok, distill_weight=0.5, save_freq=1, merge_freq=1, **FAST)
    for r in RECORDS[:4]:
        ed.apply(r)
        means = dict(ed.pending)
    ed.apply(RECORDS[4])  # groups of one edit: 4 have closed, the last 3 are kept
    assert len(ed.history) == 3 and torch.equal(ed.history[-1], means[4])
    z1, zbar = ed.teachers()
    assert torch.equal(z1, means[4]) and torch.allclose(zbar, torch.stack(ed.history).mean(0))


def test_distillation_changes_training_only_when_on():
    model, tok = build("llama")
    teacher = torch.randn(len(tok), generator=torch.Generator().manual_seed(1))
    sides = {}
    for w in (0.0, 5.0):
        ed = REPAIR(build("llama")[0], tok, distill_weight=w, **FAST)
        ed.history = [teacher]
        ed.apply(R1)
        sides[w] = ed.side
    shared = {k: v for k, v in REPAIRConfig().to_dict().items() if k in WISEConfig().to_dict()}
    plain = WISE(model, tok, WISEConfig(**shared), **FAST)
    plain.apply(R1)
    assert torch.equal(sides[0.0], plain.side)  # weight 0: exactly WISE with REPAIR's settings
    assert not torch.equal(sides[5.0], sides[0.0])


def test_below_act_ratio_times_min_act_the_output_is_the_base_bit_for_bit(family):
    model, tok = build(family)
    ed = REPAIR(model, tok, **FAST)
    d_out, d_in = ed.w0.shape
    gen = torch.Generator().manual_seed(0)
    acts, mask = torch.randn(2, 5, d_in, generator=gen), torch.ones(2, 5)
    side = ed.w0 + 0.1 * torch.randn(d_out, d_in, generator=gen)
    base_out = ed.linear(acts, ed.w0)
    d = (ed.act(ed.linear(acts, side)) - ed.act(base_out)).norm(dim=-1).mean(1)  # Δ per row
    ed.side, choices = side, []
    for min_act in (d.max() / 0.2 * 1.001, d.mean() / 0.2, d.min() / 0.2 * 0.999):
        ed.shard_edits = [(1, R1, min_act.item())]  # the live shard's min_act
        choices.append(ed.route(acts, base_out, mask).tolist())  # -1: base, 0: side memory
    mixed = [0 if i == d.argmax() else -1 for i in range(2)]  # only the larger Δ clears it
    assert choices == [[-1, -1], mixed, [0, 0]]
    # the whole model: a real edit whose threshold is out of reach returns the base's logits
    prompts = [R1.prompt, "The sky is"]
    batch = make_batch(tok, model, prompts)
    with ed.disabled():
        base = ed.logits(batch)
    ed.side, ed.shard_edits = ed.w0.clone(), []
    ed.apply(R1)
    assert not torch.equal(ed.logits(batch), base)  # its own prompt reaches the edit
    ed.shard_edits = [(i, r, 1e9) for i, r, _ in ed.shard_edits]
    assert torch.equal(ed.logits(batch), base)


def test_an_edit_lands(family):
    model, tok = build(family)
    ed = REPAIR(model, tok, templates="bare", edit_lr=10.0)
    assert answer_hits(ed, R1) == 0.0
    ed.apply(R1)
    assert answer_hits(ed, R1) >= 0.5
    gpt2 = REPAIR(*build("gpt2"), templates="bare")  # the released settings as they are
    gpt2.apply(R1)
    assert answer_hits(gpt2, R1) == 1.0


def test_save_load_round_trip_continues_identically(tmp_path):
    model, tok = build("llama")
    settings = {"distill_weight": 0.5, "save_freq": 1, "merge_freq": 2, **FAST}
    ed = REPAIR(model, tok, **settings)
    for r in RECORDS[:4]:
        ed.apply(r)
    assert ed.history and ed.pending and ed.memories
    prompts = [R1.prompt, RECORDS[3].prompt, "The sky is"]
    edited = ed.logits(make_batch(tok, model, prompts))
    path = ed.save(tmp_path / "r")
    fresh, tok2 = build("llama")
    loaded = Editor.load(fresh, tok2, path)
    assert isinstance(loaded, REPAIR) and loaded.config == ed.config
    assert torch.equal(loaded.logits(make_batch(tok2, fresh, prompts)), edited)
    assert all(torch.equal(a, b) for a, b in zip(loaded.history, ed.history, strict=True))
    assert loaded.pending.keys() == ed.pending.keys()
    ed.apply(RECORDS[4])  # the distillation state came back: the next edit trains the same
    loaded.apply(RECORDS[4])
    assert torch.equal(loaded.side, ed.side) and loaded.edits[-1]["kd"] == ed.edits[-1]["kd"]
    from safetensors.torch import load_file

    names = set(load_file(str(path / "edits.safetensors")))
    assert not any(n.startswith("model.") or n.endswith(".weight") for n in names)


def test_rollback_drops_the_edits_mean_logits():
    model, tok = build("qwen2")
    ed = REPAIR(model, tok, distill_weight=0.5, **FAST)
    ed.apply(R1)
    after_one = (ed.side.clone(), ed.pending[1].clone())
    e2 = ed.apply(RECORDS[1])
    ed.remove(e2)
    assert list(ed.pending) == [1] and torch.equal(ed.pending[1], after_one[1])
    assert torch.equal(ed.side, after_one[0])


def test_print_names_the_method():
    model, tok = build("gpt2")
    REPAIR(model, tok, **FAST)
    assert "method=repair" in str(model)


def test_distill_loss_direction_matters():
    """KL(teacher ‖ student), not the reverse: the two differ for these logits."""
    z = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([0.0, 3.0, 0.0])
    ours = distill_loss(z, teacher, teacher, 1.0, 1.0, 1.0)
    reverse = F.kl_div(
        torch.log_softmax(teacher, -1)[None], torch.softmax(z, -1), reduction="batchmean"
    )
    assert ours.item() == pytest.approx(kl_by_hand(z, teacher, 1.0).item())
    assert abs(ours.item() - reverse.item()) > 0.1
