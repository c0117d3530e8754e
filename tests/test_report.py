"""Tables, plots and the README section from results files (horen.report)."""

from __future__ import annotations

import argparse
import json

import pytest

from horen import report


def fake_result(method, dataset="zsre", ops=(1.0, 0.97, 0.9), complete=True):
    checkpoints = []
    for n, op in zip((1, 10, 100), ops):
        checkpoints.append(
            {
                "n": n,
                "teacher_forced": {"rel": 1.0, "gen": op, "loc": 1.0, "op": op},
                "generation": {
                    "rel_em": 0.5,
                    "rel_acc": 0.75,
                    "gen_em": 0.25,
                    "gen_acc": 0.5,
                    "loc": 1.0,
                    "op": 0.7,
                },
                "edit_seconds_total": n * 0.5,
                "eval_seconds": 1.0,
                "peak_rss_mb": 100.0,
            }
        )
    return {
        "format": "horen-bench/1",
        "method": method,
        "dataset": dataset,
        "model": "tiny",
        "protocol": "sequential",
        "chat": False,
        "complete": complete,
        "scorers": ["teacher_forced", "generation"],
        "decoding_version": 2,
        "time_per_edit": 0.5,
        "git": {"commit": "abcdef0123456789", "dirty": True},
        "command": f"horen bench --method {method} --dataset {dataset} --n 100",
        "file": f"{method}__{dataset}__tiny__n100__sequential.json",
        "checkpoints": checkpoints,
    }


@pytest.fixture
def results_dir(tmp_path):
    for method, ops in (("horen", (1.0, 0.97, 0.9)), ("grace", (0.6, 0.4, 0.37))):
        r = fake_result(method, ops=ops)
        (tmp_path / r["file"]).write_text(json.dumps(r))
    return tmp_path


def test_table_has_every_run_checkpoint_and_command(results_dir):
    results = report.load_results([str(results_dir / "*.json")])
    assert [r["method"] for r in results] == ["grace", "horen"]
    text = report.markdown_report(results)
    assert "### Teacher-forced" in text and "### Generation" in text
    assert "| horen | zsre | tiny | sequential | 100 | 1.000 | 0.900 | 1.000 | 0.900 |" in text
    assert "| grace | zsre | tiny | sequential | 10 | 1.000 | 0.400 | 1.000 | 0.400 |" in text
    assert (
        "| horen | zsre | tiny | sequential | 1 | 0.750 | 0.500 | 1.000 | 0.700 | 0.500 | 0.250 |"
        in text
    )
    assert "`horen bench --method horen --dataset zsre --n 100`" in text
    assert "abcdef0123+dirty" in text


def test_runs_list_names_where_a_run_was_resumed_and_with_what_code():
    r = fake_result("alphaedit", complete=False)
    r.update(resumed_at=[10, 50], resumed_git=[{"commit": "1234567890ab", "dirty": False}, {}])
    text = report.markdown_report([r])
    assert ("(incomplete), 0.500 s/edit on CPU not recorded, commit abcdef0123+dirty, resumed "
            "after edit 10 on commit "
            "1234567890, resumed after edit 50:") in text
    r.update(resumed_at=[10, 50], resumed_git=[{"commit": "1234567890ab", "dirty": False}])
    assert ("resumed after edit 10, resumed after edit 50 on commit 1234567890:"
            in report.markdown_report([r]))  # the first resume predates resumed_git


AMD = "AuthenticAMD cpu family 25 model 17 stepping 1 (AMD EPYC)"
INTEL = "GenuineIntel cpu family 6 model 167 stepping 1 (Intel(R) Xeon(R) Processor)"


def test_times_measured_on_another_cpu_than_most_runs_are_marked():
    runs = [fake_result(m) for m in ("horen", "grace", "rome", "memit", "wise")]
    for r, cpu in zip(runs, (AMD, "AMD EPYC", INTEL, AMD, None)):
        r["machine"] = {"cpu": cpu}
    runs[3]["resumed_at"], runs[3]["resumed_cpu"] = [50], [INTEL]  # moved machine mid-run
    text = report.markdown_report(runs)
    summary = text.split("### Teacher-forced")[0]
    for method, mark in (("horen", ""), ("grace", ""), ("rome", "²"), ("memit", "²"), ("wise", "")):
        assert f"| {method} | zsre | 100 | 1.000 | 0.900 | 1.000 | 0.900 | 0.700 | – | – | 0.50{mark} |" in summary
    assert "another CPU (Intel Xeon Processor) than most runs whose CPU is recorded (AMD EPYC)" in summary
    assert "s/edit on AMD EPYC then Intel Xeon Processor, commit" in text
    assert "s/edit on CPU not recorded, commit" in text
    same = report.markdown_report(runs[:2] + runs[4:])
    assert "²" not in same and "another CPU" not in same
    runs[2]["time_per_edit"] = runs[3]["time_per_edit"] = None  # no time, nothing to mark
    assert "another CPU" not in report.markdown_report(runs)


def test_summary_has_one_row_per_run_with_what_sets_it_apart():
    plain = fake_result("memit")
    batched = fake_result("memit", ops=(0.5, 0.4, 0.3), complete=False)
    batched["config"] = {"edit_batch": 100, "overrides": {"lr": 3e-05, "rollback_window": 100}}
    text = report.markdown_report([plain, batched])
    summary = text.split("### Teacher-forced")[0]
    assert "| memit | zsre | 100 | 1.000 | 0.900 | 1.000 | 0.900 | 0.700 | – | – | 0.50 |" in summary
    assert "| memit (batch 100, lr=3e-05) (incomplete) | zsre | 100 | 1.000 | 0.300 |" in summary
    assert "### zsre at N" not in summary  # both runs end at the same N
    shorter = fake_result("rome")
    shorter["checkpoints"] = shorter["checkpoints"][:2]
    text = report.markdown_report([plain, shorter]).split("### Teacher-forced")[0]
    common = text.split("### zsre at N = 10, every method")[1]
    assert "| memit | zsre | 10 | 1.000 | 0.970 |" in common and "| rome | zsre | 10 |" in common


def test_a_run_made_with_defaults_since_changed_says_so():
    """The editor config a run recorded is compared with the method's defaults today: a
    setting that differs and was not set by --set is shown; one set by --set is shown once
    as an override; settings resolved per model (tau = None by default) are not compared."""
    import dataclasses

    from horen.editors import HoReNConfig

    now = dataclasses.asdict(HoReNConfig())
    old = fake_result("horen")
    old["editor"] = {"config": {**now, "max_steps": 50, "stop_loss": 0.01, "tau": 0.775}}
    same = fake_result("horen")
    same["editor"] = {"config": {**now, "tau": 0.775}}
    chosen = fake_result("horen")
    chosen["editor"] = {"config": {**now, "max_steps": 50}}
    chosen["config"] = {"overrides": {"max_steps": 50}}
    assert report._run_label(old) == "horen (defaults then: max_steps=50, stop_loss=0.01)"
    assert report._run_label(same) == "horen"
    assert report._run_label(chosen) == "horen (max_steps=50)"
    # settings newer than the run count as their old behaviour (``before``), not as today's
    older = fake_result("horen")
    older["editor"] = {"config": {k: v for k, v in now.items() if k not in ("optimizer",
                                                                              "end_weight")}}
    assert report._run_label(older) == "horen (defaults then: end_weight=1.0, optimizer=adam)"
    # the L-BFGS settings are left out of an Adam run's label (they did nothing there)
    adam = fake_result("horen")
    adam["editor"] = {"config": {**now, "optimizer": "adam", "lbfgs_first": 1.0}}
    assert report._run_label(adam) == "horen (defaults then: optimizer=adam)"
    lbfgs = fake_result("horen")
    lbfgs["editor"] = {"config": {**now, "lbfgs_first": 1.0, "lbfgs_expand": 2.0}}
    assert report._run_label(lbfgs) == "horen (defaults then: lbfgs_expand=2.0, lbfgs_first=1.0)"
    before_lbfgs = fake_result("horen")  # recorded before the L-BFGS settings existed
    before_lbfgs["editor"] = {"config": {k: v for k, v in now.items() if not k.startswith("lbfgs")}}
    assert report._run_label(before_lbfgs) == (
        "horen (defaults then: lbfgs_expand=2.0, lbfgs_first=1.0)")


def test_runs_are_ordered_by_the_numbers_in_their_settings(tmp_path):
    for lam in (15000, 500, 5000, 1500):
        r = fake_result("memit")
        r["config"] = {"overrides": {"mom2_update_weight": lam}}
        r["file"] = f"memit_{lam}.json"
        (tmp_path / r["file"]).write_text(json.dumps(r))
    for n in (1000, 200):
        r = fake_result("grace")
        r["n"], r["file"] = n, f"grace_{n}.json"
        (tmp_path / r["file"]).write_text(json.dumps(r))
    results = report.load_results([str(tmp_path / "*.json")])
    assert [r.get("n") for r in results[:2]] == [200, 1000]
    lams = [r["config"]["overrides"]["mom2_update_weight"] for r in results[2:]]
    assert lams == [500, 1500, 5000, 15000]
    summary = report.markdown_report(results[2:]).split("### Teacher-forced")[0]
    rows = [line.split(" |")[0] for line in summary.splitlines() if line.startswith("| memit")]
    assert rows == [f"| memit (mom2_update_weight={lam})" for lam in lams]


def test_a_method_run_at_two_lengths_gets_one_row_at_their_shared_n():
    long_run = fake_result("grace", ops=(1.0, 0.5, 0.4))
    short_run = fake_result("grace", ops=(1.0, 0.6, 0.6))
    short_run["checkpoints"] = short_run["checkpoints"][:2]
    short_run["time_per_edit"] = 0.25
    other = fake_result("horen")
    text = report.markdown_report([long_run, short_run, other]).split("### Teacher-forced")[0]
    common = text.split("### zsre at N = 10, every method")[1]
    assert common.count("| grace |") == 1 and common.count("| horen |") == 1
    assert "| grace | zsre | 10 | 1.000 | 0.600 | 1.000 | 0.600 | 0.700 | – | – | 0.25 |" in common


def test_checkpoint_tables_tell_apart_one_method_run_at_two_lengths():
    short_run = fake_result("rome", ops=(1.0, 0.9, 0.7))
    long_run = fake_result("rome", ops=(1.0, 0.9, 0.8), complete=False)
    long_run["n"] = 1000
    text = report.markdown_report([short_run, long_run, fake_result("horen")])
    tf = text.split("### Teacher-forced")[1].split("### Generation")[0]
    assert "| rome (N = 100) | zsre | tiny | sequential | 100 | 1.000 | 0.700 |" in tf
    assert "| rome (N = 1000) (incomplete) | zsre | tiny | sequential | 100 | 1.000 | 0.800 |" in tf
    assert "| horen | zsre | tiny | sequential | 100 |" in tf  # one run: its label alone


def test_runs_decoded_the_old_way_are_marked_in_generation_numbers_only():
    old = fake_result("grace")
    del old["decoding_version"]  # results files from before it was recorded
    text = report.markdown_report([old, fake_result("horen")])
    summary = text.split("### Teacher-forced")[0]
    assert "| grace | zsre | 100 | 1.000 | 0.900 | 1.000 | 0.900 | 0.700¹ | – | – | 0.50 |" in summary
    assert "| horen | zsre | 100 | 1.000 | 0.900 | 1.000 | 0.900 | 0.700 | – | – | 0.50 |" in summary
    generation = text.split("### Generation")[1].split("### Runs")[0]
    assert "| grace¹ | zsre |" in generation and "| horen | zsre |" in generation
    assert "| grace | zsre | tiny |" in text.split("### Teacher-forced")[1].split("### Generation")[0]
    assert report.OLD_DECODING_NOTE in text
    assert report.OLD_DECODING_NOTE not in report.markdown_report([fake_result("horen")])


def test_probe_sets_get_a_table_with_their_own_columns():
    r = fake_result("horen", dataset="wikibigedit")
    for c in r["checkpoints"]:
        c["probes"] = {"personas": 0.5, "mhop": 0.25, "n_mhop": 1}
    text = report.markdown_report([r, fake_result("grace")])
    table = text.split("### Extra probes (teacher-forced answer accuracy)")[1].split("###")[0]
    assert "| Method | Dataset | Model | Protocol | N | personas | mhop |" in table
    assert "| horen | wikibigedit | tiny | sequential | 100 | 0.500 | 0.250 |" in table
    assert "| grace |" not in table


def test_cli_writes_report_and_plots(results_dir, tmp_path):
    pytest.importorskip("matplotlib")  # requirements-bench.txt
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args([str(results_dir / "*.json"), "--out", str(out)])
    assert report.run(args) == 0
    md = (out / "report.md").read_text()
    assert "| horen |" in md and "zsre__teacher_forced.png" in md
    for name in ("zsre__teacher_forced.png", "zsre__generation.png"):
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_readme_section_is_replaced_between_markers(results_dir, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nintro\n\n{report.START}\nold table\n{report.END}\n\n## After\n")
    results = report.load_results(sorted(results_dir.glob("*.json")))
    text = report.update_readme(readme, results, str(tmp_path / "out" / "report.md"))
    assert "old table" not in text and "| horen |" in text and "(out/report.md)" in text
    head, row = text.split("| method |", 1)[1].split("\n")[0], text.split("| horen |")[1]
    assert "zsre" in head and " / " in row  # one column per dataset: TF OP / free OP
    assert text.startswith("# Title\n\nintro\n\n") and text.endswith(f"{report.END}\n\n## After\n")
    assert report.update_readme(readme, results, str(tmp_path / "out" / "report.md")) == text
    fresh = tmp_path / "NEW.md"
    fresh.write_text("# Other\n")
    assert report.START in report.update_readme(fresh, results)


def test_not_a_results_file(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="neither a horen bench nor a bench-speed"):
        report.load_results([bad])
    (tmp_path / "run.json").write_text(json.dumps(fake_result("horen")))
    matched = report.load_results([tmp_path / "*.json"])  # a glob skips other JSON files
    assert [r["method"] for r in matched] == ["horen"]


def test_speed_results_get_their_own_table(results_dir):
    phase = {
        "edits_per_second": 0.25,
        "eval_sequences_per_second": 12.0,
        "teacher_forced": {"op": 0.92},
    }
    speed = {
        "n": 200,
        "model": "tiny",
        "threads": 2,
        "reference": phase,
        "fast": {**phase, "edits_per_second": 2.5},
        "default": {**phase, "edits_per_second": 4.0, "teacher_forced": {"op": 0.91}},
        "edit_speedup": 10.0,
        "edit_speedup_default": 16.0,
        "eval_speedup": 1.0,
        "command": "horen bench-speed --n 200",
    }
    (results_dir / "speed__zsre__n200.json").write_text(json.dumps(speed))
    results = report.load_results([results_dir / "*.json"])
    text = report.markdown_report(results)
    assert "### Speed: 200 ZsRE edits on tiny" in text
    assert "| fast path, same settings | 2.500 | 0.400 | 12.0 | 0.920 |" in text
    assert "Edit speedup 10.00x (16.00x with the defaults)" in text
    assert "horen bench --method horen" in text  # the bench runs are still there
    assert len(report.plot_results(results, results_dir / "plots")) == 2  # no plot for speed


def test_plot_names_are_file_safe(tmp_path):
    r = fake_result("horen", dataset="synthetic:10000")
    (path, _) = report.plot_results([r], tmp_path)
    assert path.name == "synthetic-10000__teacher_forced.png" and path.exists()


def test_eval_speed_results_get_a_table(tmp_path):
    def side(sps, op):
        return {"sequences_per_second": sps, "teacher_forced": {"op": op}, "generation": {"op": op}}

    r = {
        "mode": "eval",
        "n": 200,
        "model": "tiny",
        "teacher_forced": {"reference": side(12.0, 0.9), "fast": side(30.0, 0.9)},
        "generation": {"reference": side(2.0, 0.8), "fast": side(20.0, 0.8)},
        "eval_speedup_teacher_forced": 2.5,
        "eval_speedup_generation": 10.0,
        "command": "horen bench-speed --eval-only",
    }
    (tmp_path / "speed_eval__zsre__n200.json").write_text(json.dumps(r))
    text = report.markdown_report(report.load_results([tmp_path / "*.json"]))
    assert "### Scoring speed: 200 ZsRE edits on tiny" in text
    assert "| 2.0 | 20.0 | 10.00x | 0.800 / 0.800 |" in text


def test_plot_lines_stay_apart_with_many_runs():
    # eleven methods, one with two N: each run gets its own look, a method keeps its colour
    methods = [f"m{i:02d}" for i in range(11)]
    runs = [fake_result(m) for m in methods] + [dict(fake_result("m00"), n=1000)]
    colors = [f"c{i}" for i in range(20)]  # stands in for tab20
    styles = report._line_styles(runs, colors)
    looks = {(s["color"], s["linestyle"], s["marker"]) for s in styles}
    assert len(looks) == len(runs)
    assert len({s["color"] for s in styles[:11]}) == 11
    assert styles[0]["color"] == styles[-1]["color"]
    assert styles[0]["linestyle"] != styles[-1]["linestyle"]
