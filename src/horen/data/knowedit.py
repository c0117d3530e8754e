"""EasyEdit-style flat records and KnowEdit records (the same converter reads both).

Flat (CounterFact ``counterfact-edit.json``, WikiBigEdit ``wikibigedit_locft_3k.json``):
``prompt``, ``target_new``, ``subject``, ``rephrase_prompt``, ``locality_prompt``,
``locality_ground_truth`` (``ground_truth``, the old answer, is ignored).

KnowEdit: ``prompt``, ``target_new``, ``subject``, ``rephrase_prompt`` (or ``rephrase``;
a string or a list), and ``locality`` / ``portability`` objects of named probe sets. A
probe set is ``{"prompt": str|list, "ground_truth": str|list}`` or a list of such objects;
a ground truth that is a list of lists of aliases is flattened to its first string.
"""

from __future__ import annotations

from typing import Any

from horen.data._common import Probe, Row, loader
from horen.data.record import EditRecord


def _first_str(value: Any) -> Any:
    """Flattens ``[["a", "b"], ["c"]]`` (or ``["a"]``) to ``"a"``; other values pass through."""
    while isinstance(value, list) and value:
        value = value[0]
    return value


def _probe_set(row: Row, field: str, entry: Any) -> list[Probe]:
    """Reads one named probe set (``{"prompt", "ground_truth"}`` or a list of them)."""
    entries = entry if isinstance(entry, list) else [entry]
    probes = []
    for item in entries:
        if not isinstance(item, dict) or "prompt" not in item:
            raise row.error(field, "expected {'prompt', 'ground_truth'} objects")
        prompts, truths = item.get("prompt"), item.get("ground_truth")
        if isinstance(prompts, list):  # parallel lists: one ground truth per prompt
            if not isinstance(truths, list) or len(truths) != len(prompts):
                raise row.error(field, "'prompt' and 'ground_truth' lists differ in length")
            pairs = list(zip(prompts, truths))
        else:  # one prompt; a list ground truth holds alternatives
            pairs = [(prompts, truths)]
        for prompt, truth in pairs:
            prompt = row.as_str(prompt, f"{field}.prompt")
            truth = row.as_str(_first_str(truth), f"{field}.ground_truth")
            probes.append({"prompt": prompt, "answer": truth.strip()})
    return probes


def _probe_sets(row: Row, key: str) -> dict[str, list[Probe]]:
    """Reads the ``locality`` or ``portability`` object into ``{"<key>:<name>": probes}``."""
    value = row.data.get(key)
    if not value:
        return {}
    if not isinstance(value, dict):
        raise row.error(key, f"expected an object of named probe sets, got {type(value).__name__}")
    return {f"{key}:{name}": _probe_set(row, f"{key}.{name}", v) for name, v in value.items()}


def convert_knowedit(row: Row) -> EditRecord:
    """Converts one flat EasyEdit or KnowEdit record."""
    loc, loc_ans = row.pair("locality_prompt", "locality_ground_truth")
    extra = _probe_sets(row, "locality")
    if loc is None:
        first = next((probes[0] for probes in extra.values() if probes), None)
        if first:
            loc, loc_ans = first["prompt"], first["answer"]
    extra.update(_probe_sets(row, "portability"))
    rephrase_key = "rephrase_prompt" if "rephrase_prompt" in row.data else "rephrase"
    return EditRecord(
        prompt=row.req_str("prompt"),
        target=row.req_str("target_new").strip(),
        rephrases=row.str_list(rephrase_key),
        locality_prompt=loc,
        locality_answer=loc_ans,
        subject=row.opt_str("subject"),
        extra=extra,
        source=row.source,
    )


def is_knowedit(keys: set[str]) -> bool:
    """True if a record with these keys looks like a flat EasyEdit / KnowEdit record."""
    return "prompt" in keys and "target_new" in keys


load_knowedit = loader("a KnowEdit or flat EasyEdit file (JSON, JSONL or CSV)", convert_knowedit)
