"""Plain JSONL or CSV files of the core fields, for users' own edits.

Columns / keys: ``prompt`` and ``target`` (required); ``rephrase`` (a string; in JSONL
also a list; ``rephrases`` is accepted too), ``locality_prompt`` and ``locality_answer``
(together), ``subject``. Empty CSV cells count as absent.
"""

from __future__ import annotations

import os
from pathlib import Path

from horen.data._common import Row, build, read_csv, read_jsonl, read_rows
from horen.data.record import EditRecord


def convert_plain(row: Row) -> EditRecord:
    """Converts one plain record."""
    loc, loc_ans = row.pair("locality_prompt", "locality_answer")
    rephrase_key = "rephrases" if "rephrases" in row.data else "rephrase"
    return EditRecord(
        prompt=row.req_str("prompt"),
        target=row.req_str("target").strip(),
        rephrases=row.str_list(rephrase_key),
        locality_prompt=loc,
        locality_answer=loc_ans,
        subject=row.opt_str("subject"),
        source=row.source,
    )


def is_plain(keys: set[str]) -> bool:
    """True if a record with these keys is in the plain format."""
    return "prompt" in keys and "target" in keys


def load_plain(
    path: str | os.PathLike, skip_bad: bool = False, n: int | None = None
) -> list[EditRecord]:
    """Loads a plain JSONL, CSV (or JSON list) file of core fields.

    Args:
        path: the file; ``.jsonl`` and ``.csv`` are read as such, anything else as JSON.
        skip_bad: skip malformed records with a warning instead of raising.
        n: load at most this many records.

    Raises:
        DatasetError: a malformed file or record (file, index and field are named).
    """
    path = Path(path)
    return build(read_rows(path), path, convert_plain, skip_bad, n)[0]


def load_jsonl(
    path: str | os.PathLike, skip_bad: bool = False, n: int | None = None
) -> list[EditRecord]:
    """Loads a plain JSONL file (whatever its extension); see :func:`load_plain`."""
    path = Path(path)
    return build(read_jsonl(path), path, convert_plain, skip_bad, n)[0]


def load_csv(
    path: str | os.PathLike, skip_bad: bool = False, n: int | None = None
) -> list[EditRecord]:
    """Loads a plain CSV file (whatever its extension); see :func:`load_plain`."""
    path = Path(path)
    return build(read_csv(path), path, convert_plain, skip_bad, n)[0]
