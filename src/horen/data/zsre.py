"""ZsRE in the MEND/EasyEdit JSON format (as used by WISE, GRACE and HoReN).

Each record: ``src`` (prompt), ``answers`` (list; target = ``answers[0]``), ``alt``
(an alternative target), ``rephrase``, ``loc`` ("nq question: ..."), ``loc_ans``,
``subject``, and optionally ``portability`` {"New Question", "New Answer"}.
"""

from __future__ import annotations

import os
from pathlib import Path

from horen.data._common import Row, build, read_rows
from horen.data.record import EditRecord

ZSRE_FILES = ("zsre_mend_edit.json", "zsre_mend_eval_3k_disjoint.json")


def convert_zsre(row: Row, target_field: str = "answers") -> EditRecord:
    """Converts one ZsRE record.

    Args:
        row: the raw record.
        target_field: ``"answers"`` (target = ``answers[0]``, the WISE/HoReN convention)
            or ``"alt"`` (the MEND/EasyEdit counterfactual target).
    """
    if target_field == "answers":
        target = row.str_list("answers", required=True)
        if not target:
            raise row.error("answers", "no non-empty answer")
        target = target[0]
    elif target_field == "alt":
        target = row.req_str("alt")
    else:
        raise ValueError(f"target_field must be 'answers' or 'alt', not {target_field!r}")
    loc, loc_ans = row.pair("loc", "loc_ans")
    extra = {}
    port = row.data.get("portability")
    if port:
        if not isinstance(port, dict):
            raise row.error("portability", f"expected an object, got {type(port).__name__}")
        question = row.as_str(port.get("New Question"), "portability.New Question")
        answer = row.as_str(port.get("New Answer"), "portability.New Answer")
        extra["portability"] = [{"prompt": question, "answer": answer.strip()}]
    return EditRecord(
        prompt=row.req_str("src"),
        target=target.strip(),
        rephrases=row.str_list("rephrase"),
        locality_prompt=loc,
        locality_answer=loc_ans,
        subject=row.opt_str("subject"),
        extra=extra,
        source=row.source,
    )


def is_zsre(keys: set[str]) -> bool:
    """True if a record with these keys looks like ZsRE."""
    return "src" in keys and ("answers" in keys or "alt" in keys)


def load_zsre(
    path: str | os.PathLike,
    target_field: str = "answers",
    skip_bad: bool = False,
    n: int | None = None,
) -> list[EditRecord]:
    """Loads a ZsRE (MEND/EasyEdit) JSON, JSONL or CSV file.

    Args:
        path: the file.
        target_field: ``"answers"`` (``answers[0]``) or ``"alt"``.
        skip_bad: skip malformed records with a warning instead of raising.
        n: load at most this many records.

    Raises:
        DatasetError: a malformed file or record (file, index and field are named).
    """
    return _load_zsre(Path(path), target_field, skip_bad, n)[0]


def _load_zsre(path, target_field="answers", skip_bad=False, n=None):
    if target_field not in ("answers", "alt"):
        raise ValueError(f"target_field must be 'answers' or 'alt', not {target_field!r}")
    return build(read_rows(path), path, lambda r: convert_zsre(r, target_field), skip_bad, n)


def load_zsre_default(
    data_root: str | os.PathLike,
    target_field: str = "answers",
    skip_bad: bool = False,
    n: int | None = None,
) -> list[EditRecord]:
    """Loads the staged ZsRE edits, in order: the two files of ``ZSRE_FILES``.

    Args:
        data_root: the data folder holding ``zsre/`` (or the ``zsre/`` folder itself).
        target_field: ``"answers"`` or ``"alt"``.
        skip_bad: skip malformed records with a warning instead of raising.
        n: load at most this many records.

    Returns:
        1037 + 2564 = 3601 records for the staged files.
    """
    return _load_zsre_default(Path(data_root), target_field, skip_bad, n)[0]


def zsre_dir(data_root: Path) -> Path:
    """The folder holding the ZsRE files, given the data root or the folder itself."""
    return data_root if (data_root / ZSRE_FILES[0]).is_file() else data_root / "zsre"


def _load_zsre_default(data_root, target_field="answers", skip_bad=False, n=None):
    folder = zsre_dir(data_root)
    records, skipped = [], 0
    for name in ZSRE_FILES:
        left = None if n is None else n - len(records)
        got, bad = _load_zsre(folder / name, target_field, skip_bad, left)
        records += got
        skipped += bad
    return records, skipped
