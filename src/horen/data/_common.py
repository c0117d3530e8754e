"""Shared plumbing for the dataset loaders: file reading, field checks, skipping bad rows.

Readers: JSON (a list of objects), JSONL (one object per line) and CSV (a header row).
Every converter receives a :class:`Row`, whose accessors raise :class:`DatasetError` with
the file, the record index and the field in the message.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from horen.data.record import EditRecord

log = logging.getLogger(__name__)

Probe = dict[str, str]


class DatasetError(ValueError):
    """A dataset file or one of its records is malformed."""


class Row:
    """One raw record plus where it came from, with checked field accessors.

    Args:
        data: the raw record (a dict).
        path: the file it was read from.
        index: its 0-based position in that file.
    """

    def __init__(self, data: dict[str, Any], path: Path, index: int) -> None:
        self.data = data
        self.path = path
        self.index = index

    @property
    def source(self) -> str:
        """The ``EditRecord.source`` tag, ``"<filename>#<index>"``."""
        return f"{self.path.name}#{self.index}"

    def error(self, field: str, problem: str) -> DatasetError:
        """Builds (does not raise) an error naming the file, record index and field."""
        return DatasetError(f"{self.path}: record {self.index}: field '{field}': {problem}")

    def req_str(self, key: str) -> str:
        """A required non-empty string field."""
        if key not in self.data or self.data[key] is None:
            raise self.error(key, "missing")
        return self.as_str(self.data[key], key)

    def opt_str(self, key: str) -> str | None:
        """An optional string field; missing, null or blank gives None."""
        value = self.data.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return self.as_str(value, key)

    def as_str(self, value: Any, field: str) -> str:
        """Checks that ``value`` (taken from ``field``) is a non-empty string."""
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise self.error(field, "empty string")
        return value

    def str_list(self, key: str, required: bool = False) -> list[str]:
        """A field holding a string or a list of strings (blank entries dropped)."""
        value = self.data.get(key)
        if value is None or value == "" or value == []:
            if required:
                raise self.error(key, "missing or empty")
            return []
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise self.error(key, f"expected a string or a list, got {type(value).__name__}")
        for item in items:
            if not isinstance(item, str):
                raise self.error(key, f"expected strings, got {type(item).__name__}")
        return [s for s in items if s.strip()]

    def pair(self, prompt_key: str, answer_key: str) -> tuple[str | None, str | None]:
        """Two optional fields that must be present together (e.g. locality prompt/answer)."""
        prompt, answer = self.opt_str(prompt_key), self.opt_str(answer_key)
        if prompt is not None and answer is None:
            raise self.error(answer_key, f"missing although '{prompt_key}' is given")
        if answer is not None and prompt is None:
            raise self.error(prompt_key, f"missing although '{answer_key}' is given")
        return prompt, answer.strip() if answer is not None else None


def read_json(path: Path) -> list[Any]:
    """Reads a JSON file holding a list of records."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e})") from e
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def read_jsonl(path: Path) -> list[Any]:
    """Reads a JSON Lines file (blank lines ignored)."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    rows.append(json.loads(line))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: line {lineno}: not valid JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e})") from e
    return rows


def read_csv(path: Path) -> list[Any]:
    """Reads a CSV file with a header row; empty cells become None."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise DatasetError(f"{path}: empty CSV file (no header row)")
            return [{k: (v if v != "" else None) for k, v in r.items() if k} for r in reader]
    except (csv.Error, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: unreadable CSV ({e})") from e


def read_rows(path: Path) -> list[Any]:
    """Reads records from ``path`` by extension: ``.jsonl``, ``.csv``, else JSON."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return read_jsonl(path)
    if suffix == ".csv":
        return read_csv(path)
    return read_json(path)


def build(
    rows: Iterable[Any],
    path: Path,
    convert: Callable[[Row], EditRecord],
    skip_bad: bool = False,
    n: int | None = None,
) -> tuple[list[EditRecord], int]:
    """Converts raw rows to records.

    Args:
        rows: raw records, in file order.
        path: the file they came from (for messages and ``source``).
        convert: turns one :class:`Row` into an ``EditRecord``.
        skip_bad: skip malformed records (with a warning) instead of raising.
        n: stop after this many good records.

    Returns:
        The records and the number of skipped malformed rows.
    """
    records: list[EditRecord] = []
    skipped, first_error = 0, None
    for index, data in enumerate(rows):
        if n is not None and len(records) >= n:
            break
        try:
            if not isinstance(data, dict):
                raise DatasetError(
                    f"{path}: record {index}: expected an object, got {type(data).__name__}"
                )
            row = Row(data, path, index)
            try:
                records.append(convert(row))
            except DatasetError:
                raise
            except ValueError as e:  # EditRecord's own validation
                raise DatasetError(f"{path}: record {index}: {e}") from e
        except DatasetError as e:
            if not skip_bad:
                raise
            skipped += 1
            first_error = first_error or str(e)
            log.info("skipping malformed record: %s", e)
    if skipped:
        warnings.warn(
            f"{path}: skipped {skipped} malformed record(s); first: {first_error}", stacklevel=3
        )
    return records, skipped


Converter = Callable[[Row], EditRecord]


def loader(
    what: str,
    convert: Converter | None = None,
    choose: Callable[[dict], Converter] | None = None,
    read: Callable[[Path], list] = read_rows,
) -> Callable[..., list[EditRecord]]:
    """Makes the ``load_<format>(path, skip_bad=False, n=None)`` function of one format.

    Args:
        what: what the file holds, for the docstring (``"an UnKE file"``).
        convert: the format's :class:`Row` converter; or
        choose: for a file in one of several formats, picks the converter from the first
            record (a dict; ``{}`` if there is none).
        read: the reader (:func:`read_rows` picks JSON / JSONL / CSV by extension).

    Example:
        >>> load_unke = loader("an UnKE file", convert_unke)  # doctest: +SKIP
    """
    if (convert is None) == (choose is None):
        raise ValueError("pass exactly one of convert and choose")

    def load(path, skip_bad: bool = False, n: int | None = None) -> list[EditRecord]:
        path = Path(path)
        rows = read(path)
        first = next((r for r in rows if isinstance(r, dict)), {})
        return build(rows, path, convert or choose(first), skip_bad, n)[0]

    load.__doc__ = f"""Loads {what}.

    Args:
        path: the file (str or PathLike).
        skip_bad: skip malformed records with a warning instead of raising.
        n: load at most this many records.

    Raises:
        DatasetError: a malformed file or record (file, index and field are named).
    """
    return load
