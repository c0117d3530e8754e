"""WikiBigEdit, native or EasyEdit-flattened (auto-detected from the first record).

- Native (``wikibigedit_horen_n1000.json``, ``wikibigedit_locft_3k_native.json``):
  ``subject``, ``update`` (prompt), ``ans`` (target), ``rephrase``, ``personas`` (a
  persona-style rephrase, answer ``ans`` -> ``extra["personas"]``), ``mhop`` / ``mhop_ans``
  (a multi-hop probe -> ``extra["mhop"]`` when not null), ``loc``, ``loc_ans``.
- Flattened (``wikibigedit_locft_3k.json``): ``prompt``, ``target_new``, ``subject``,
  ``rephrase_prompt``, ``locality_prompt``, ``locality_ground_truth``.
"""

from __future__ import annotations

import os
from pathlib import Path

from horen.data._common import Row, build, read_rows
from horen.data.knowedit import convert_knowedit
from horen.data.record import EditRecord


def convert_wikibigedit(row: Row) -> EditRecord:
    """Converts one native WikiBigEdit record."""
    target = row.req_str("ans").strip()
    loc, loc_ans = row.pair("loc", "loc_ans")
    extra = {}
    personas = row.str_list("personas")
    if personas:
        extra["personas"] = [{"prompt": p, "answer": target} for p in personas]
    mhop, mhop_ans = row.pair("mhop", "mhop_ans")
    if mhop is not None:
        extra["mhop"] = [{"prompt": mhop, "answer": mhop_ans}]
    return EditRecord(
        prompt=row.req_str("update"),
        target=target,
        rephrases=row.str_list("rephrase"),
        locality_prompt=loc,
        locality_answer=loc_ans,
        subject=row.opt_str("subject"),
        extra=extra,
        source=row.source,
    )


def is_wikibigedit(keys: set[str]) -> bool:
    """True if a record with these keys is in the native WikiBigEdit format."""
    return "update" in keys and "ans" in keys


def load_wikibigedit(
    path: str | os.PathLike, skip_bad: bool = False, n: int | None = None
) -> list[EditRecord]:
    """Loads WikiBigEdit, native or EasyEdit-flattened (auto-detected).

    Args:
        path: the file (JSON, JSONL or CSV).
        skip_bad: skip malformed records with a warning instead of raising.
        n: load at most this many records.

    Raises:
        DatasetError: a malformed file or record (file, index and field are named).
    """
    return _load_wikibigedit(Path(path), skip_bad, n)[0]


def _load_wikibigedit(path, skip_bad=False, n=None):
    rows = read_rows(path)
    first = next((r for r in rows if isinstance(r, dict)), {})
    convert = convert_knowedit if "target_new" in first else convert_wikibigedit
    return build(rows, path, convert, skip_bad, n)
