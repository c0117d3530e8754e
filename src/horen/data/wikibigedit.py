"""WikiBigEdit, native or EasyEdit-flattened (auto-detected from the first record).

- Native (``wikibigedit_horen_n1000.json``, ``wikibigedit_locft_3k_native.json``):
  ``subject``, ``update`` (prompt), ``ans`` (target), ``rephrase``, ``personas`` (a
  persona-style rephrase, answer ``ans`` -> ``extra["personas"]``), ``mhop`` / ``mhop_ans``
  (a multi-hop probe -> ``extra["mhop"]`` when not null), ``loc``, ``loc_ans``.
- Flattened (``wikibigedit_locft_3k.json``): ``prompt``, ``target_new``, ``subject``,
  ``rephrase_prompt``, ``locality_prompt``, ``locality_ground_truth``.
"""

from __future__ import annotations

from horen.data._common import Row, loader
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


load_wikibigedit = loader(
    "WikiBigEdit, native or EasyEdit-flattened (auto-detected; JSON, JSONL or CSV)",
    choose=lambda first: convert_knowedit if "target_new" in first else convert_wikibigedit,
)
