"""Where an edit's subject sits in its prompt: the span the entity-anchored keys read.

The datasets name the subject (ZsRE, CounterFact, WikiBigEdit, KnowEdit); a user may pass
``subject=``. Where none is given, :func:`infer_subject` picks one by a documented rule:
the longest run of capitalized words (a word with an upper-case letter or starting with a
digit: "Danielle", "iCloud", "1998"), joined by at most one lowercase linking word ("of",
"de", "the"...), where the prompt's first word counts only if it is not a question or article
word ("Which", "The", "Who"...); with no capitalized word, the longest run of words outside
a small list of function words ("home counties is within" -> "home counties"). Longest means
most characters; ties go to the earlier run. ``horen calibrate --subjects`` measures how
often it agrees with the datasets' subjects.
"""

from __future__ import annotations

import re

LINKS = {"of", "de", "the", "von", "van", "der", "da", "la", "le", "and", "&", "del", "di", "du"}
OPENERS = {
    "a", "an", "the", "who", "what", "which", "when", "where", "why", "how", "whose", "whom",
    "in", "on", "at", "is", "was", "are", "were", "does", "did", "do", "can", "name", "tell",
    "to", "for", "by", "from", "with", "regarding", "about", "this", "that", "these", "those",
}
FUNCTION_WORDS = OPENERS | LINKS | {
    "is", "was", "be", "been", "has", "have", "had", "it", "its", "of", "into", "within",
    "belong", "belongs", "created", "made", "located", "born", "die", "died", "known", "as",
    "type", "kind", "part", "work", "works", "area", "field", "name", "called", "an", "or",
    "which", "whose", "does", "do", "did", "according", "official", "language", "city", "country",
    "capital", "developed", "produced", "founded", "owned", "by", "instance", "appear", "up",
}
_TOKEN = re.compile(r"[\w'’.\-&]+", re.UNICODE)


def _capitalized(word: str) -> bool:
    return any(ch.isupper() for ch in word) or word[:1].isdigit()


def _longest(runs: list[list[tuple[str, int]]]) -> list[tuple[str, int]]:
    return max(runs, key=lambda run: (sum(len(w) for w, _ in run), -run[0][1]))


def infer_subject(prompt: str) -> str:
    """The subject span of ``prompt`` by the rule in the module docstring.

    Example:
        >>> infer_subject("The mother tongue of Danielle Darrieux is")
        'Danielle Darrieux'
        >>> infer_subject("When was the inception of IAAF Combined Events Challenge?")
        'IAAF Combined Events Challenge'
    """
    words = [(m.group().rstrip(".?!,"), m.start()) for m in _TOKEN.finditer(prompt)]
    words = [(w, s) for w, s in words if w]
    runs, current = [], []
    for k, (word, start) in enumerate(words):
        opener = k == 0 and word.lower() in OPENERS
        if _capitalized(word) and not opener or current and word.lower() in LINKS and k + 1 < len(words) and _capitalized(words[k + 1][0]):
            current.append((word, start))
        else:
            if current:
                runs.append(current)
            current = []
    if current:
        runs.append(current)
    if not runs:
        current = []
        for word, start in words:
            if word.lower() in FUNCTION_WORDS:
                runs, current = runs + [current] if current else runs, []
            else:
                current.append((word, start))
        runs += [current] if current else []
    if not runs:
        raise ValueError(f"cannot find a subject in {prompt!r}; pass subject=")
    best = _longest(runs)
    first, last = best[0], best[-1]
    return prompt[first[1] : last[1] + len(last[0])]


def subject_span(prompt: str, subject: str) -> tuple[int, int]:
    """``(start, end)`` character span of ``subject`` in ``prompt`` (its last occurrence;
    case-insensitive where the exact case is absent). A subject that is not in the prompt
    is an error, never a silent fallback."""
    start = prompt.rfind(subject)
    if start < 0:
        start = prompt.lower().rfind(subject.lower())
    if not subject.strip() or start < 0:
        raise ValueError(f"the subject {subject!r} does not occur in the prompt {prompt!r}")
    return start, start + len(subject)


def subject_last_token(tokenizer, text: str, prompt: str, subject: str) -> int:
    """Index, in the tokens of ``text`` (the prompt as the model sees it, maybe inside a chat
    template), of the last token overlapping ``subject`` inside ``prompt``."""
    return subject_tokens(tokenizer, text, prompt, subject)[1]


def subject_tokens(tokenizer, text: str, prompt: str, subject: str) -> tuple[int, int]:
    """``(first, last)`` indices, in the tokens of ``text``, of the tokens overlapping
    ``subject`` inside ``prompt`` (tokenized without special tokens)."""
    start, end = subject_span(prompt, subject)
    offset = text.rfind(prompt)
    if offset < 0:
        raise ValueError(f"the prompt {prompt!r} is not in its formatted text")
    start, end = start + offset, end + offset
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    hits = [i for i, (a, b) in enumerate(enc.offset_mapping) if a < end and b > start]
    if not hits:
        raise ValueError(f"no token of {prompt!r} covers the subject {subject!r}")
    return hits[0], hits[-1]
