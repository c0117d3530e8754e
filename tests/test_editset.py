"""Saving, loading and opening edit sets: nothing a user has is overwritten or lost, and
every bad file gets an error that names it (issue 28's defects, each failing before its fix)."""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import ClassVar

import pytest
from safetensors.torch import load_file, save_file

from horen import HoReN, open_edit_set
from horen.editors.base import Editor, EditorConfig, read_meta, read_saved
from horen.layer import WrapperLayer
from horen.models import get_module

P1, T1 = "Who leads Zorblat Industries?", "Mira Quell"
pytestmark = pytest.mark.filterwarnings("ignore::horen.NotConvergedWarning")


def saved(tiny, path):
    model, tok = tiny
    ed = HoReN(model, tok, max_steps=5)
    ed.edit(P1, T1)
    ed.save(path)
    ed.close()
    return model, tok


def test_save_refuses_to_replace_a_folder_that_is_not_an_edit_set(tiny, tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    ed = HoReN(*tiny)
    with pytest.raises(ValueError, match="not a saved edit set"):
        ed.save(mine)
    assert (mine / "thesis.txt").read_text() == "years of work"
    with pytest.raises(ValueError, match="not a saved edit set"):
        open_edit_set(mine)
    (tmp_path / "empty").mkdir()
    ed.save(tmp_path / "empty")  # an empty folder is fine
    ed.save(tmp_path / "empty")  # and so is a previous save
    assert read_meta(tmp_path / "empty")["method"] == "horen"


def test_a_load_that_fails_leaves_the_model_unwrapped(tiny, tmp_path):
    model, tok = saved(tiny, tmp_path / "e")
    tensors = load_file(tmp_path / "e" / "edits.safetensors")
    save_file({k: v for k, v in tensors.items() if k != "keys"}, tmp_path / "e" / "edits.safetensors")
    with pytest.raises(ValueError, match="do not load"):
        Editor.load(model, tok, tmp_path / "e")
    site = HoReN(model, tok)  # the model is free again: a new editor wraps it
    assert isinstance(get_module(model, site.site.path), WrapperLayer)


def test_unreadable_files_are_named(tiny, tmp_path):
    saved(tiny, tmp_path / "e")
    (tmp_path / "e" / "edits.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="edits.safetensors is unreadable"):
        read_saved(tmp_path / "e")
    (tmp_path / "e" / "edit_config.json").write_text("{truncated")
    with pytest.raises(ValueError, match="edit_config.json is unreadable"):
        read_meta(tmp_path / "e")


def test_a_crashed_save_is_recovered_from_the_newest_previous_one(tiny, tmp_path):
    saved(tiny, tmp_path / "e")
    shutil.copytree(tmp_path / "e", tmp_path / ".e.old-9")
    os.rename(tmp_path / "e", tmp_path / ".e.old-10")  # "9" sorts last as text, but is older
    for pid, age in (("9", 100), ("10", 0)):
        meta_file = tmp_path / f".e.old-{pid}" / "edit_config.json"
        meta = json.loads(meta_file.read_text())
        meta["edits"][0]["target"] = f"from {pid}"
        meta_file.write_text(json.dumps(meta))
        os.utime(meta_file, (time.time() - age,) * 2)
    with pytest.warns(UserWarning, match="previous save"):
        assert read_meta(tmp_path / "e")["edits"][0]["target"] == "from 10"


def test_unknown_settings_are_an_error_naming_the_known_ones(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['taux'\].*tau"):
        HoReN(*tiny, taux=1)
    saved(tiny, tmp_path / "e")
    with pytest.raises(ValueError, match="settings are fixed"):
        open_edit_set(tmp_path / "e", settings={"tau": 0.5})
    with pytest.raises(ValueError, match="holds 'horen' edits"):
        open_edit_set(tmp_path / "e", method="grace")


def test_the_saved_config_records_the_tau_in_use(tiny, tmp_path):
    saved(tiny, tmp_path / "e")
    config = read_meta(tmp_path / "e")["config"]
    assert isinstance(config["tau"], float) and isinstance(config["pool_ratio"], float)


class Chain(Editor):
    """An editor whose edits build on each other as GRACE's can: 2 on 1, 3 on 2 only."""

    method = "chain-test"
    config_class = EditorConfig
    builds_on: ClassVar[dict[int, list[int]]] = {2: [1], 3: [2]}

    def __init__(self):  # no model: the contract's bookkeeping only
        self.edits, self.next_edit_id, self.removed = [], 1, []

    def _apply(self, record):
        return {"touches": []}

    def _remove(self, edit):
        self.removed.append(edit["id"])

    def _conflicts(self, edit):
        return [e["id"] for e in self.edits if edit["id"] in self.builds_on.get(e["id"], [])]

    def _state(self):
        return {}, {}

    def _load_state(self, state, tensors):
        pass

    def disabled(self):
        raise NotImplementedError


def test_cascade_removes_what_builds_on_what_builds_on_it():
    from horen.data.record import EditRecord

    ed = Chain()
    for k in range(3):
        ed.apply(EditRecord(prompt=f"p{k}", target=f"t{k}"))
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        ed.remove(1)
    assert ed.remove(1, cascade=True) == [3, 2, 1]
    assert ed.edits == [] and ed.removed == [3, 2, 1]
