"""Plain JSONL or CSV files of the core fields, for users' own edits.

Columns / keys: ``prompt`` and ``target`` (required); ``rephrase`` (a string; in JSONL
also a list; ``rephrases`` is accepted too), ``locality_prompt`` and ``locality_answer``
(together), ``subject``. Empty CSV cells count as absent.
"""

from __future__ import annotations

from horen.data._common import Row, loader, read_csv, read_jsonl
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


load_plain = loader("a plain JSONL, CSV (or JSON list) file of core fields", convert_plain)
load_jsonl = loader("a plain JSONL file (whatever its extension)", convert_plain, read=read_jsonl)
load_csv = loader("a plain CSV file (whatever its extension)", convert_plain, read=read_csv)
