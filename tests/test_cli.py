"""The CLI end to end on a tiny model saved to a local directory."""

from __future__ import annotations

import json

import pytest
from conftest import build

from horen.cli import main

P1, P2 = "Who leads Zorblat Industries?", "Which river flows through Cairo?"


@pytest.fixture
def model_dir(tmp_path):
    model, tok = build("llama")
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_edit_generate_list_remove(model_dir, tmp_path, capsys):
    edits = str(tmp_path / "edits")
    assert main(["edit", "--model", model_dir, "--edits", edits, "--prompt", P1,
                 "--target", "Paris", "--set", "max_steps=3", "--set", "tau=0.9"]) == 0
    # a second edit: model, method and settings come from the saved set
    assert main(["edit", "--edits", edits, "--prompt", P2, "--target", "Nile"]) == 0
    meta = json.loads((tmp_path / "edits" / "edit_config.json").read_text())
    assert [e["id"] for e in meta["edits"]] == [1, 2]
    assert meta["config"]["max_steps"] == 3 and meta["config"]["tau"] == 0.9
    capsys.readouterr()
    assert main(["edits", "list", "--edits", edits]) == 0
    out = capsys.readouterr().out
    assert "2 horen edits" in out and P1 in out and "'Nile'" in out
    assert main(["generate", "--edits", edits, "--prompt", P1, "--prompt", P2,
                 "--max-new-tokens", "3"]) == 0
    assert out.count("->") >= 2
    assert main(["edits", "remove", "1", "--edits", edits]) == 0
    meta = json.loads((tmp_path / "edits" / "edit_config.json").read_text())
    assert [e["id"] for e in meta["edits"]] == [2]


def test_bad_input_changes_nothing(model_dir, tmp_path, capsys):
    edits = str(tmp_path / "edits")
    assert main(["edit", "--model", model_dir, "--edits", edits, "--prompt", P1,
                 "--target", "Paris", "--set", "max_steps=2"]) == 0
    before = (tmp_path / "edits" / "edit_config.json").read_text()
    assert main(["edit", "--edits", edits, "--prompt", P2, "--target", " "]) == 2
    assert "target" in capsys.readouterr().err
    assert (tmp_path / "edits" / "edit_config.json").read_text() == before
    assert main(["edit", "--edits", edits, "--method", "grace", "--prompt", P2,
                 "--target", "Nile"]) != 0  # the set holds horen edits
    assert (tmp_path / "edits" / "edit_config.json").read_text() == before
    assert main(["edits", "remove", "7", "--edits", edits]) == 2


def test_a_misspelt_setting_is_one_line_naming_the_known_ones(model_dir, tmp_path, capsys):
    edits = tmp_path / "edits"
    assert main(["edit", "--model", model_dir, "--edits", str(edits), "--prompt", P1,
                 "--target", "Paris", "--set", "taux=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "taux" in err and "tau" in err.replace("taux", "") and "max_steps" in err
    assert not edits.exists()  # nothing written


def test_edit_from_file(model_dir, tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text(json.dumps({"prompt": P1, "target": "Paris"}) + "\n"
                    + json.dumps({"prompt": P2, "target": "Nile"}) + "\n")
    edits = str(tmp_path / "edits")
    assert main(["edit", "--model", model_dir, "--edits", edits, "--from", str(data),
                 "--method", "grace", "--set", "max_steps=2"]) == 0
    meta = json.loads((tmp_path / "edits" / "edit_config.json").read_text())
    assert meta["method"] == "grace" and len(meta["edits"]) == 2


def test_folded_weight_edits_are_listed_and_not_removed(model_dir, tmp_path, capsys):
    edits = str(tmp_path / "edits")
    assert main(["edit", "--model", model_dir, "--edits", edits, "--method", "ft-m",
                 "--prompt", P1, "--target", "Paris", "--set", "num_steps=2",
                 "--set", "rollback_window=1"]) == 0
    assert main(["edit", "--edits", edits, "--prompt", P2, "--target", "Nile"]) == 0
    capsys.readouterr()
    assert main(["edits", "list", "--edits", edits]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "folded" in lines[1] and "folded" not in lines[2]
    before = (tmp_path / "edits" / "edit_config.json").read_text()
    assert main(["edits", "remove", "1", "--edits", edits]) == 2
    assert "folded" in capsys.readouterr().err
    assert (tmp_path / "edits" / "edit_config.json").read_text() == before
    assert main(["edits", "remove", "2", "--edits", edits]) == 0


def test_an_edit_that_did_not_converge_says_so(model_dir, tmp_path, capsys):
    edits = str(tmp_path / "edits")
    assert main(["edit", "--model", model_dir, "--edits", edits, "--prompt", P1,
                 "--target", "Mira Quell", "--set", "max_steps=1", "--set", "lr=1e-4"]) == 0
    assert "NOT CONVERGED (loss " in capsys.readouterr().out
    assert main(["edits", "list", "--edits", edits]) == 0
    assert "(NOT converged)" in capsys.readouterr().out


def test_a_model_path_that_is_no_model_gets_one_line_saying_what_was_tried(tmp_path):
    from horen.models import load_model

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a .gguf model"):
        load_model(str(text))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither config.json nor a .gguf"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "two").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "two" / name).write_bytes(b"")
    with pytest.raises(ValueError, match="2 .gguf files; pass one of them: a.gguf, b.gguf"):
        load_model(str(tmp_path / "two"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot load the model .* as a local folder"):
        load_model(str(tmp_path / "broken"))


def test_entity_calibration_runs_with_the_default_anchor_layer(model_dir, tmp_path, capsys):
    """No --anchor-layers: the default layer is looked up without leaving the model wrapped;
    the chosen settings and the background setting go into the edit set it starts."""
    edits = str(tmp_path / "cal")
    assert main(["calibrate", "--method", "horen-entity", "--model", model_dir, "--dataset",
                 "tests/fixtures/data/zsre.json", "--n", "3", "--taus", "0.5",
                 "--anchor-taus", "0.8", "--background-tokens", "0", "--edits", edits]) == 0
    assert "chosen: anchor_layer=" in capsys.readouterr().out
    config = json.loads((tmp_path / "cal" / "edit_config.json").read_text())["config"]
    assert (config["tau"], config["anchor_tau"], config["background_tokens"]) == (0.5, 0.8, 0)


def test_calibrate_can_start_the_edit_set_that_uses_its_choice(model_dir, tmp_path, capsys):
    data = "tests/fixtures/data/zsre.json"
    edits = str(tmp_path / "cal")
    assert main(["calibrate", "--model", model_dir, "--dataset", data, "--n", "3",
                 "--taus", "0.5", "0.9", "--edits", edits]) == 0
    out = capsys.readouterr().out
    chosen = float(out.split("chosen: tau=")[1].split()[0])
    meta = json.loads((tmp_path / "cal" / "edit_config.json").read_text())
    assert meta["config"]["tau"] == chosen and meta["edits"] == []
    assert main(["edit", "--edits", edits, "--prompt", P1, "--target", "Paris",
                 "--set", "max_steps=2"]) == 2  # its settings are fixed now
    assert main(["edit", "--edits", edits, "--prompt", P1, "--target", "Paris"]) == 0
