"""UnKE / UnKEBench (unstructured knowledge editing), e.g. ``final_data_v2.json``.

Each record: ``question`` (prompt), ``para_question`` (rephrase), ``answer`` (target, a
paragraph), ``sub_question`` / ``sub_answer`` (parallel lists -> ``extra["sub_question"]``).
There is no locality probe.
"""

from __future__ import annotations

from horen.data._common import Row, loader
from horen.data.record import EditRecord


def convert_unke(row: Row) -> EditRecord:
    """Converts one UnKE record."""
    questions = row.str_list("sub_question")
    answers = row.str_list("sub_answer")
    if len(questions) != len(answers):
        raise row.error("sub_answer", f"{len(answers)} answers for {len(questions)} sub_questions")
    extra = {}
    if questions:
        extra["sub_question"] = [
            {"prompt": q, "answer": a.strip()} for q, a in zip(questions, answers)
        ]
    return EditRecord(
        prompt=row.req_str("question"),
        target=row.req_str("answer").strip(),
        rephrases=row.str_list("para_question"),
        extra=extra,
        source=row.source,
    )


def is_unke(keys: set[str]) -> bool:
    """True if a record with these keys looks like UnKE."""
    return "question" in keys and "answer" in keys


load_unke = loader("an UnKE file (JSON, JSONL or CSV)", convert_unke)
