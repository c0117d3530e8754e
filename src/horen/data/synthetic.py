"""Synthetic fictional facts for long edit streams (10K-50K edits).

How a record is made (all from one ``random.Random(seed)``, so a stream is reproducible):

* a relation (leader of an organization, birthplace of a person, capital of a country...),
  each with several paraphrase templates ("Who leads {s}?", "{s} is led by");
* a fictional subject of the relation's kind, built from syllables ("Zorblat Industries",
  "Mira Quellan"); subjects are all distinct, so the edit prompts are too;
* a fictional target of the relation's answer type (person, city, year, language...);
* prompt = one template, rephrase = another template of the same relation;
* the locality probe comes from real data: the ``loc``/``loc_ans`` pairs of ZsRE (cycled, in
  file order) when ``load_dataset("zsre")`` finds it, else a small built-in list.

Example:
    >>> recs = synthetic_stream(3, seed=0)
    >>> len(recs), recs[0].prompt != recs[0].rephrases[0]
    (3, True)
"""

from __future__ import annotations

import os
import random

from horen.data.record import EditRecord

__all__ = ["RELATIONS", "load_synthetic", "synthetic_stream"]

_ONSETS = [
    "b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
    "br", "dr", "gr", "kr", "pl", "st", "tr", "th", "sh", "ch",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "x", "m"]

# relation -> (subject kind, answer kind, paraphrase templates)
RELATIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "leader": ("org", "person", (
        "Who leads {s}?", "Who is in charge of {s}?", "Who is the head of {s}?", "{s} is led by")),
    "headquarters": ("org", "city", (
        "Where is {s} headquartered?", "In which city is the head office of {s}?",
        "The headquarters of {s} are in")),
    "founded": ("org", "year", (
        "When was {s} founded?", "In what year was {s} established?", "{s} was founded in")),
    "birthplace": ("person", "city", (
        "Where was {s} born?", "What is the birthplace of {s}?", "{s} was born in the city of")),
    "native_language": ("person", "language", (
        "What is the native language of {s}?", "Which language does {s} speak natively?",
        "The mother tongue of {s} is")),
    "employer": ("person", "org", (
        "Who employs {s}?", "Which company does {s} work for?", "{s} works for")),
    "capital": ("country", "city", (
        "What is the capital of {s}?", "Which city is the capital of {s}?",
        "The capital city of {s} is")),
    "official_language": ("country", "language", (
        "What is the official language of {s}?", "Which language is official in {s}?",
        "The official language of {s} is")),
    "located_in": ("city", "country", (
        "In which country is {s}?", "Which country is {s} located in?", "{s} is a city in")),
    "author": ("work", "person", (
        "Who wrote {s}?", "Who is the author of {s}?", "{s} was written by")),
    "published": ("work", "year", (
        "When was {s} first published?", "In what year did {s} come out?",
        "{s} was first published in")),
}

_ORG = [
    "Industries", "Group", "Labs", "Holdings", "Systems", "Collective", "Foundation", "Works",
    "Dynamics",
]
_CITY = ["", "", "port", "ford", "holm", "grad", "ville", "burg", "mouth"]
_COUNTRY = ["ia", "land", "stan", "ora", "eth", "istan", "onia"]
_LANG = ["ish", "ese", "ic", "ian", "i", "ol"]
_WORK = ["The {a} of {b}", "{a}", "Songs of {a}", "The Last {a}", "{a} and {b}"]

# used when ZsRE is not available: real, unrelated questions with short answers
_FALLBACK_LOC = [
    ("nq question: what is the capital of france", "Paris"),
    ("nq question: who wrote the novel pride and prejudice", "Jane Austen"),
    ("nq question: how many planets are in the solar system", "eight"),
    ("nq question: what is the chemical symbol for gold", "Au"),
    ("nq question: who painted the mona lisa", "Leonardo da Vinci"),
    ("nq question: what is the largest ocean on earth", "the Pacific Ocean"),
    ("nq question: in which year did world war ii end", "1945"),
    ("nq question: what language is spoken in brazil", "Portuguese"),
]


class _Names:
    """Pronounceable fictional names from syllables, deterministic given the rng."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def word(self, lo: int = 2, hi: int = 3) -> str:
        r = self.rng
        syl = [r.choice(_ONSETS) + r.choice(_VOWELS) for _ in range(r.randint(lo, hi))]
        return ("".join(syl) + r.choice(_CODAS)).capitalize()

    def make(self, kind: str) -> str:
        r, w = self.rng, self.word
        if kind == "person":
            return f"{w(1, 2)} {w(2, 3)}"
        if kind == "org":
            return f"{w()} {r.choice(_ORG)}"
        if kind == "city":
            return w(2, 2) + r.choice(_CITY)
        if kind == "country":
            return w(1, 2) + r.choice(_COUNTRY)
        if kind == "language":
            return w(1, 2) + r.choice(_LANG)
        if kind == "work":
            return r.choice(_WORK).format(a=w(), b=w())
        if kind == "year":
            return str(r.randint(1500, 2024))
        raise ValueError(f"unknown kind {kind!r}")


def _locality_pairs(data_root) -> list[tuple[str, str]]:
    """(prompt, answer) pairs from ZsRE's ``loc``/``loc_ans`` when found, else built-in ones."""
    from horen.data._common import DatasetError
    from horen.data.loaders import load_dataset

    try:
        records = load_dataset("zsre", data_root=data_root).records
    except (FileNotFoundError, DatasetError):
        return list(_FALLBACK_LOC)
    pairs = [(r.locality_prompt, r.locality_answer) for r in records if r.locality_prompt]
    return pairs or list(_FALLBACK_LOC)


def synthetic_stream(
    n: int, seed: int = 0, data_root: str | os.PathLike | None = None
) -> list[EditRecord]:
    """``n`` fictional edits with distinct prompts, a paraphrase each and a locality probe.

    Args:
        n: number of records.
        seed: the stream's seed (same seed, same records).
        data_root: where to look for ZsRE (locality probes); see ``horen.data.data_roots``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    rng = random.Random(seed)
    names = _Names(rng)
    relations = sorted(RELATIONS)
    loc = _locality_pairs(data_root) if n else []
    seen: set[str] = set()
    records = []
    for i in range(n):
        rel = rng.choice(relations)
        subject_kind, answer_kind, templates = RELATIONS[rel]
        subject = names.make(subject_kind)
        while subject in seen:
            subject = names.make(subject_kind)
        seen.add(subject)
        prompt, rephrase = rng.sample(templates, 2)
        loc_prompt, loc_answer = loc[i % len(loc)]
        records.append(
            EditRecord(
                prompt=prompt.format(s=subject),
                target=names.make(answer_kind),
                rephrases=[rephrase.format(s=subject)],
                locality_prompt=loc_prompt,
                locality_answer=loc_answer,
                subject=subject,
                source=f"synthetic:{seed}#{i}:{rel}",
            )
        )
    return records


def load_synthetic(name: str = "synthetic", n: int | None = None, data_root=None):
    """``load_dataset`` entry for ``"synthetic:N"`` or ``"synthetic:N:SEED"`` (N default 10000).

    ``n`` (when given) caps the number of records, as for the other datasets.
    """
    from horen.data.loaders import LoadedDataset

    parts = str(name).lower().split(":")
    if parts[0] != "synthetic" or len(parts) > 3:
        raise ValueError(f"expected 'synthetic:N' or 'synthetic:N:SEED', not {name!r}")
    size = int(parts[1]) if len(parts) > 1 and parts[1] else 10_000
    seed = int(parts[2]) if len(parts) > 2 else 0
    if n is not None:
        size = min(size, n)
    records = synthetic_stream(size, seed=seed, data_root=data_root)
    return LoadedDataset(records, str(name).lower(), f"<synthetic seed={seed}>", 0, "synthetic")
