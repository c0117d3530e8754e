"""CounterFact, in either of its two formats (auto-detected from the first record).

- Flat EasyEdit/MEND format (``counterfact-edit.json``): ``case_id``, ``prompt``,
  ``target_new``, ``subject``, ``ground_truth``, ``rephrase_prompt``, ``locality_prompt``,
  ``locality_ground_truth`` (read by :func:`horen.data.knowedit.convert_knowedit`).
- Original ROME format (``counterfact.json``): ``requested_rewrite`` {``prompt`` with a
  ``{}`` subject placeholder, ``subject``, ``target_new`` {"str"}, ``target_true`` {"str"}},
  ``paraphrase_prompts`` and ``neighborhood_prompts``. Locality = the first neighborhood
  prompt with answer ``target_true``; all neighborhood prompts go to ``extra["neighborhood"]``.
"""

from __future__ import annotations

from horen.data._common import Row, loader
from horen.data.knowedit import convert_knowedit
from horen.data.record import EditRecord


def _answer_str(row: Row, rewrite: dict, key: str) -> str:
    value = rewrite.get(key)
    value = value.get("str") if isinstance(value, dict) else value
    return row.as_str(value, f"requested_rewrite.{key}.str").strip()


def convert_rome(row: Row) -> EditRecord:
    """Converts one record of the original ROME ``counterfact.json``."""
    rewrite = row.data.get("requested_rewrite")
    if not isinstance(rewrite, dict):
        raise row.error("requested_rewrite", "missing or not an object")
    subject = row.as_str(rewrite.get("subject"), "requested_rewrite.subject")
    template = row.as_str(rewrite.get("prompt"), "requested_rewrite.prompt")
    if "{}" not in template:
        raise row.error("requested_rewrite.prompt", "has no '{}' subject placeholder")
    target = _answer_str(row, rewrite, "target_new")
    neighbors = row.str_list("neighborhood_prompts")
    loc, loc_ans, extra = None, None, {}
    if neighbors:
        loc_ans = _answer_str(row, rewrite, "target_true")
        loc = neighbors[0]
        extra["neighborhood"] = [{"prompt": p, "answer": loc_ans} for p in neighbors]
    return EditRecord(
        prompt=template.replace("{}", subject),
        target=target,
        rephrases=row.str_list("paraphrase_prompts"),
        locality_prompt=loc,
        locality_answer=loc_ans,
        subject=subject,
        extra=extra,
        source=row.source,
    )


def is_rome(keys: set[str]) -> bool:
    """True if a record with these keys is in the original ROME CounterFact format."""
    return "requested_rewrite" in keys


load_counterfact = loader(
    "CounterFact, flat or ROME format (auto-detected; JSON, JSONL or CSV for the flat one)",
    choose=lambda first: convert_rome if is_rome(set(first)) else convert_knowedit,
)
