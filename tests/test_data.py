"""Tests for the dataset loaders (horen.data): tiny fixtures, malformed records, real files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from horen.data import (
    DatasetError,
    EditRecord,
    LoadedDataset,
    detect_format,
    load_counterfact,
    load_csv,
    load_dataset,
    load_jsonl,
    load_knowedit,
    load_unke,
    load_wikibigedit,
    load_zsre,
    load_zsre_default,
)

FIX = Path(__file__).resolve().parent / "fixtures" / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def no_source(records: list[EditRecord]) -> list[EditRecord]:
    return [dataclasses.replace(r, source="") for r in records]


# --- each format on its fixture ----------------------------------------------------------


def test_zsre():
    recs = load_zsre(FIX / "zsre.json")
    assert len(recs) == 2
    r = recs[0]
    assert (r.prompt, r.target, r.subject) == (
        "Who leads Zorblat Industries?", "Mira Quell", "Zorblat Industries"
    )
    assert r.rephrases == ["Who is the head of Zorblat Industries?"]
    assert r.locality_prompt == "nq question: who wrote the hobbit"
    assert r.locality_answer == "J. R. R. Tolkien"
    assert r.extra == {"portability": [
        {"prompt": "Where was the leader of Zorblat Industries born?", "answer": "Quellton"}
    ]}
    assert r.source == "zsre.json#0"
    assert recs[1].target == "Sea of Voss" and recs[1].extra == {}
    assert [r.target for r in load_zsre(FIX / "zsre.json", target_field="alt")] == [
        "Tom Brix", "Aral Sea"
    ]
    with pytest.raises(ValueError, match="target_field"):
        load_zsre(FIX / "zsre.json", target_field="pred")


def test_zsre_default(tmp_path):
    folder = tmp_path / "zsre"
    folder.mkdir()
    rows = json.loads((FIX / "zsre.json").read_text())
    write_json(folder / "zsre_mend_edit.json", rows)
    write_json(folder / "zsre_mend_eval_3k_disjoint.json", rows[:1])
    recs = load_zsre_default(tmp_path)
    assert [r.source for r in recs] == [
        "zsre_mend_edit.json#0", "zsre_mend_edit.json#1", "zsre_mend_eval_3k_disjoint.json#0"
    ]
    assert len(load_zsre_default(folder, n=2)) == 2
    ds = load_dataset("zsre", data_root=tmp_path)
    assert (len(ds), ds.name, ds.format) == (3, "zsre", "zsre")


def test_counterfact_flat_and_rome_agree_on_core_fields():
    flat = load_counterfact(FIX / "counterfact_flat.json")
    rome = load_counterfact(FIX / "counterfact_rome.json")
    assert len(flat) == len(rome) == 2
    for f, r in zip(flat, rome):
        assert (f.prompt, f.target, f.subject) == (r.prompt, r.target, r.subject)
        assert f.rephrases[0] == r.rephrases[0]
    assert flat[0].locality_prompt == rome[0].locality_prompt == "Jean Morel is a native speaker of"
    assert flat[0].locality_answer == rome[0].locality_answer == "French"
    assert rome[0].prompt == "The mother tongue of Pia Lorn is"
    assert rome[0].rephrases == ["Pia Lorn grew up speaking", "Pia Lorn's first language is"]
    assert [p["prompt"] for p in rome[0].extra["neighborhood"]] == [
        "Jean Morel is a native speaker of", "The mother tongue of Luc Abel is"
    ]
    assert rome[1].locality_prompt is None and rome[1].extra == {}  # no neighborhood prompts


def test_knowedit():
    a, b = load_knowedit(FIX / "knowedit.json")
    assert (a.prompt, a.target) == ("The place of death of Leo Varn is", "Berlin")
    assert a.subject == "Leo Varn"
    assert a.rephrases == ["Leo Varn died in", "Leo Varn passed away in"]
    assert (a.locality_prompt, a.locality_answer) == ("The father of Leo Varn is", "Otto Varn")
    assert a.extra["locality:Relation_Specificity"] == [
        {"prompt": "The father of Leo Varn is", "answer": "Otto Varn"},
        {"prompt": "The sibling of Leo Varn is", "answer": "Ida Varn"},
    ]
    assert a.extra["portability:Logical_Generalization"] == [
        {"prompt": "Is Leo Varn still alive?", "answer": "no"}
    ]
    assert "portability:Subject_Aliasing" in a.extra
    assert b.rephrases == ["The instrument of Aria Bell is"]
    assert (b.locality_prompt, b.locality_answer) == ("Nora Tam plays the", "violin")
    assert b.extra == {"locality:neighborhood": [
        {"prompt": "Nora Tam plays the", "answer": "violin"},
        {"prompt": "Eli Rask plays the", "answer": "cello"},
    ]}


def test_wikibigedit_native_and_flat():
    native = load_wikibigedit(FIX / "wikibigedit_native.json")
    flat = load_wikibigedit(FIX / "wikibigedit_flat.json")
    a = native[0]
    assert (a.prompt, a.target, a.subject) == (
        "In which region is Saco Nui located?", "Portland area", "Saco Nui"
    )
    assert a.extra == {
        "personas": [{"prompt": "Where Saco Nui sit?", "answer": "Portland area"}],
        "mhop": [{
            "prompt": "What language is spoken in the region where Saco Nui is located?",
            "answer": "English",
        }],
    }
    assert native[1].extra == {}  # personas/mhop null
    stripped = [dataclasses.replace(r, extra={}) for r in no_source(native)]
    assert stripped == no_source(flat)


def test_unke():
    a, b = load_unke(FIX / "unke.json")
    assert a.prompt == "What is Ola Brann's occupation?"
    assert a.target.startswith("Ola Brann has worked") and a.rephrases == [
        "What does Ola Brann do for a living?"
    ]
    assert a.locality_prompt is None and a.subject is None
    assert a.extra["sub_question"][1] == {
        "prompt": "What does Ola Brann study?", "answer": "Coral reefs."
    }
    assert b.extra == {}


@pytest.mark.parametrize("loader,name", [(load_jsonl, "plain.jsonl"), (load_csv, "plain.csv")])
def test_plain(loader, name):
    a, b, c = loader(FIX / name)
    assert (a.prompt, a.target, a.subject) == (
        "Who leads Zorblat Industries?", "Mira Quell", "Zorblat Industries"
    )
    assert (a.locality_prompt, a.locality_answer) == ("Who wrote Hamlet?", "Shakespeare")
    assert b.rephrases == ["Varnia's capital city is"]
    assert b.locality_prompt is None and b.subject is None
    assert c.rephrases == [] and c.source == f"{name}#2"  # blank JSONL lines are not records
    if name.endswith(".jsonl"):
        assert a.rephrases == ["Who heads Zorblat Industries?", "Zorblat Industries' leader is"]
    else:
        assert c.prompt == "Glimmer River flows into the, eventually"  # quoted comma
        assert c.subject == "Glimmer River"


# --- auto-detection and the entry point --------------------------------------------------


@pytest.mark.parametrize("name,fmt,count", [
    ("zsre.json", "zsre", 2),
    ("counterfact_flat.json", "easyedit", 2),
    ("counterfact_rome.json", "counterfact_rome", 2),
    ("knowedit.json", "easyedit", 2),
    ("wikibigedit_native.json", "wikibigedit", 2),
    ("wikibigedit_flat.json", "easyedit", 2),
    ("unke.json", "unke", 2),
    ("plain.jsonl", "plain", 3),
    ("plain.csv", "plain", 3),
])
def test_load_dataset_autodetects(name, fmt, count):
    ds = load_dataset(FIX / name)
    assert isinstance(ds, LoadedDataset)
    assert (ds.format, len(ds), ds.skipped, ds.name) == (fmt, count, 0, Path(name).stem)
    assert ds.path == str(FIX / name)
    assert all(isinstance(r, EditRecord) for r in ds)
    assert ds[0].source == f"{name}#0"
    assert len(load_dataset(str(FIX / name), n=1)) == 1


def test_detect_format_unknown(tmp_path):
    path = write_json(tmp_path / "odd.json", [{"foo": 1}])
    with pytest.raises(DatasetError, match="odd.json.*unknown dataset format"):
        load_dataset(path)
    assert detect_format([{"src": "q", "answers": ["a"]}]) == "zsre"


def test_named_dataset_not_found(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="data_root.*HOREN_DATA"):
        load_dataset("counterfact", data_root=tmp_path)
    monkeypatch.setenv("HOREN_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_dataset("unke")
    (tmp_path / "unke").mkdir()
    (tmp_path / "unke" / "final_data_v2.json").write_text((FIX / "unke.json").read_text())
    ds = load_dataset("unke")
    assert (ds.name, len(ds)) == ("unke", 2)
    with pytest.raises(FileNotFoundError, match="neither a dataset name"):
        load_dataset(tmp_path / "missing.json")


# --- malformed input ---------------------------------------------------------------------


def test_bad_records_raise_with_file_index_field():
    with pytest.raises(DatasetError, match=r"zsre_bad\.json: record 1: field 'src'"):
        load_zsre(FIX / "zsre_bad.json")


def test_bad_records_skipped_and_counted():
    with pytest.warns(UserWarning, match=r"skipped 2 malformed"):
        ds = load_dataset(FIX / "zsre_bad.json", skip_bad=True)
    assert (len(ds), ds.skipped) == (1, 2)
    assert ds[0].source == "zsre_bad.json#0"


@pytest.mark.parametrize("row,field", [
    ({"src": "q?", "answers": []}, "answers"),
    ({"src": "q?", "answers": "a", "loc": "nq question: x"}, "loc_ans"),
    ({"src": 5, "answers": ["a"]}, "src"),
    ({"src": "q?", "answers": ["a"], "rephrase": 3}, "rephrase"),
    ({"src": "q?", "answers": ["a"], "portability": {"New Question": "p?"}},
     "portability.New Answer"),
])
def test_zsre_field_errors(tmp_path, row, field):
    path = write_json(tmp_path / "z.json", [{"src": "ok?", "answers": ["ok"]}, row])
    with pytest.raises(DatasetError) as info:
        load_zsre(path)
    msg = str(info.value)
    assert str(path) in msg and "record 1" in msg and f"'{field}'" in msg


@pytest.mark.parametrize("row,field", [
    ({"update": "q?", "ans": ""}, "ans"),
    ({"update": "q?", "ans": "a", "mhop": "m?", "mhop_ans": None}, "mhop_ans"),
])
def test_wikibigedit_field_errors(tmp_path, row, field):
    path = write_json(tmp_path / "w.json", [row])
    with pytest.raises(DatasetError, match=rf"w\.json: record 0: field '{field}'"):
        load_wikibigedit(path)


@pytest.mark.parametrize("loader,row,field", [
    (load_unke, {"question": "q?", "answer": "a", "sub_question": ["s?"], "sub_answer": []},
     "sub_answer"),
    (load_knowedit, {"prompt": "p", "target_new": "t", "locality": {"L": [{"prompt": 1}]}},
     "locality.L.prompt"),
    (load_counterfact, {"requested_rewrite": {"prompt": "{} is", "subject": "S",
                                              "target_new": {"id": "Q1"}}},
     "requested_rewrite.target_new.str"),
])
def test_other_field_errors(tmp_path, loader, row, field):
    path = write_json(tmp_path / "x.json", [row])
    with pytest.raises(DatasetError, match=rf"x\.json: record 0: field '{field}'"):
        loader(path)


def test_non_object_record(tmp_path):
    path = write_json(tmp_path / "p.json", [{"prompt": "p", "target": "t"}, ["not", "a", "dict"]])
    with pytest.raises(DatasetError, match=r"p\.json: record 1: expected an object"):
        load_dataset(path)
    with pytest.warns(UserWarning):
        assert load_dataset(path, skip_bad=True).skipped == 1


def test_unreadable_json(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"prompt": "p", ', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"broken\.json: not valid JSON"):
        load_dataset(broken)
    lines = tmp_path / "broken.jsonl"
    lines.write_text('{"prompt": "p", "target": "t"}\n{oops\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"broken\.jsonl: line 2: not valid JSON"):
        load_jsonl(lines)
    obj = write_json(tmp_path / "obj.json", {"prompt": "p"})
    with pytest.raises(DatasetError, match=r"obj\.json: expected a JSON list"):
        load_dataset(obj)


def test_dataset_error_is_value_error():
    assert issubclass(DatasetError, ValueError)


# --- the real staged files (skipped when ../shared/data is absent) -----------------------

needs_shared = pytest.mark.usefixtures("shared_data")  # skipped in a clone, failed under CI


@needs_shared
@pytest.mark.parametrize("name,count", [
    ("zsre", 3601), ("counterfact", 10000), ("wikibigedit", 1000),
    ("wikibigedit_locft", 3000), ("unke", 1000),
])
def test_real_datasets(name, count):
    ds = load_dataset(name, data_root=SHARED)
    assert (len(ds), ds.skipped) == (count, 0)
    assert all(r.prompt and r.target for r in ds)


@needs_shared
def test_real_zsre_order_and_default():
    recs = load_zsre_default(SHARED)
    assert len(recs) == 3601
    assert recs[0].source == "zsre_mend_edit.json#0"
    assert recs[1037].source == "zsre_mend_eval_3k_disjoint.json#0"
    assert "portability" in recs[0].extra and recs[0].target == "1998"


@needs_shared
def test_real_wikibigedit_locft_formats_identical():
    folder = SHARED / "wikibigedit"
    flat = load_dataset(folder / "wikibigedit_locft_3k.json")
    native = load_dataset(folder / "wikibigedit_locft_3k_native.json")
    assert (len(flat), len(native)) == (3000, 3000)
    assert (flat.format, native.format) == ("easyedit", "wikibigedit")
    assert no_source(flat.records) == no_source(native.records)


@needs_shared
def test_real_wikibigedit_horen_probes():
    recs = load_dataset("wikibigedit", data_root=SHARED).records
    assert all("personas" in r.extra for r in recs)
    assert sum("mhop" in r.extra for r in recs) == 32
