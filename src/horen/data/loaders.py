"""One entry point for every supported dataset: :func:`load_dataset`.

Dataset names (resolved against a data root, see :func:`data_roots`):

- ``"zsre"``: ``zsre/zsre_mend_edit.json`` + ``zsre/zsre_mend_eval_3k_disjoint.json`` (3601).
- ``"counterfact"``: ``counterfact/counterfact-edit.json`` (or the ROME ``counterfact.json``).
- ``"wikibigedit"``: ``wikibigedit/wikibigedit_horen_n1000.json``;
  ``"wikibigedit_locft"``: ``wikibigedit/wikibigedit_locft_3k.json``.
- ``"knowedit"``: ``knowedit/knowedit_zsre_test_shared.json`` (806 KnowEdit ZsRE test
  records: their locality prompts ask other relations of the same subject).
- ``"unke"``: ``unke/final_data_v2.json`` (or ``final_data_v3.json``).

Any other argument is a file path (``.json`` list, ``.jsonl`` or ``.csv``) whose format is
detected from the keys of its records: ZsRE, CounterFact (ROME), WikiBigEdit (native),
KnowEdit / flat EasyEdit (``"easyedit"``, which also covers flat CounterFact and
WikiBigEdit), UnKE, or plain (``prompt``, ``target``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from horen.data._common import DatasetError, Row, build, read_rows
from horen.data.counterfact import convert_rome, is_rome
from horen.data.knowedit import convert_knowedit, is_knowedit
from horen.data.plain import convert_plain, is_plain
from horen.data.record import EditRecord
from horen.data.unke import convert_unke, is_unke
from horen.data.wikibigedit import convert_wikibigedit, is_wikibigedit
from horen.data.zsre import ZSRE_FILES, _load_zsre_default, convert_zsre, is_zsre

# format name -> (detector on a record's keys, converter); detection tries them in order.
FORMATS: dict[str, tuple[Callable[[set[str]], bool], Callable[[Row], EditRecord]]] = {
    "counterfact_rome": (is_rome, convert_rome),
    "zsre": (is_zsre, convert_zsre),
    "wikibigedit": (is_wikibigedit, convert_wikibigedit),
    "easyedit": (is_knowedit, convert_knowedit),
    "unke": (is_unke, convert_unke),
    "plain": (is_plain, convert_plain),
}

# dataset name -> (sub-folder of the data root, candidate file names, first found wins)
DATASETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "zsre": ("zsre", ZSRE_FILES),
    "counterfact": ("counterfact", ("counterfact-edit.json", "counterfact.json")),
    "wikibigedit": ("wikibigedit", ("wikibigedit_horen_n1000.json",)),
    "wikibigedit_locft": ("wikibigedit", ("wikibigedit_locft_3k.json",)),
    "unke": ("unke", ("final_data_v2.json", "final_data_v3.json")),
    "knowedit": ("knowedit", ("knowedit_zsre_test_shared.json",)),
}


@dataclass
class LoadedDataset:
    """The records of one dataset, with where they came from.

    Attributes:
        records: the edit records, in file order.
        name: the dataset name (``"zsre"``) or the file stem for a path.
        path: the file read (the folder, for the two-file ``"zsre"``).
        skipped: malformed records skipped (only with ``skip_bad=True``).
        format: the detected format (a key of ``FORMATS``).
    """

    records: list[EditRecord]
    name: str
    path: str
    skipped: int = 0
    format: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[EditRecord]:
        return iter(self.records)

    def __getitem__(self, index):
        return self.records[index]


def detect_format(rows: list, path: str | os.PathLike = "<data>") -> str:
    """Names the format of ``rows`` (a key of ``FORMATS``) from the keys of the first records.

    Raises:
        DatasetError: no record, or keys that match no known format.
    """
    keys: set[str] = set()
    for row in [r for r in rows if isinstance(r, dict)][:10]:
        keys |= set(row)
    for name, (detect, _) in FORMATS.items():
        if detect(keys):
            return name
    if not rows:
        raise DatasetError(f"{path}: no records")
    raise DatasetError(
        f"{path}: unknown dataset format (keys: {sorted(keys)}); expected e.g. "
        "'prompt'+'target' (plain), 'src'+'answers' (ZsRE), 'prompt'+'target_new' (EasyEdit)"
    )


def load_file(
    path: str | os.PathLike, format: str | None = None, skip_bad: bool = False, n: int | None = None
) -> LoadedDataset:
    """Loads one file, detecting its format unless ``format`` (a key of ``FORMATS``) is given.

    Raises:
        FileNotFoundError: no such file.
        DatasetError: unreadable file, unknown format, or a malformed record.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    rows = read_rows(path)
    format = format or detect_format(rows, path)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; known: {sorted(FORMATS)}")
    records, skipped = build(rows, path, FORMATS[format][1], skip_bad, n)
    return LoadedDataset(records, path.stem, str(path), skipped, format)


def _repo_root() -> Path | None:
    """The checkout holding this file (the first parent with a pyproject.toml), if any."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return None


def data_roots(data_root: str | os.PathLike | None = None) -> list[Path]:
    """Where dataset names are looked up, in order.

    ``data_root`` if given; else ``$HOREN_DATA`` if set; else ``../shared/data`` relative
    to the current directory, then relative to the repository root.
    """
    if data_root is not None:
        return [Path(data_root)]
    if os.environ.get("HOREN_DATA"):
        return [Path(os.environ["HOREN_DATA"])]
    roots = [Path.cwd() / ".." / "shared" / "data"]
    repo = _repo_root()
    if repo is not None:
        roots.append(repo.parent / "shared" / "data")
    unique: list[Path] = []
    for root in roots:
        if root.resolve() not in unique:
            unique.append(root.resolve())
    return unique


def resolve_dataset(name: str, data_root: str | os.PathLike | None = None) -> list[Path]:
    """The file(s) of a named dataset (two for ``"zsre"``, else one).

    Raises:
        KeyError: unknown name.
        FileNotFoundError: not found under any data root; the message says how to fix it.
    """
    folder, candidates = DATASETS[name.lower()]
    tried = []
    for root in data_roots(data_root):
        base = root / folder
        if name.lower() == "zsre":
            files = [base / f for f in candidates]
            if all(f.is_file() for f in files):
                return files
            tried += [str(f) for f in files]
            continue
        for candidate in candidates:
            if (base / candidate).is_file():
                return [base / candidate]
            tried.append(str(base / candidate))
    raise FileNotFoundError(
        f"dataset {name!r} not found; looked for: {', '.join(tried)}. Pass data_root=<folder "
        f"holding {folder}/>, set the HOREN_DATA environment variable, or pass a file path."
    )


def load_dataset(
    name_or_path: str | os.PathLike,
    n: int | None = None,
    skip_bad: bool = False,
    data_root: str | os.PathLike | None = None,
) -> LoadedDataset:
    """Loads a named dataset or a file.

    Args:
        name_or_path: a dataset name (``"zsre"``, ``"counterfact"``, ``"wikibigedit"``,
            ``"wikibigedit_locft"``, ``"unke"``) or a path to a ``.json``/``.jsonl``/``.csv``
            file of any supported format (auto-detected).
        n: load at most this many records (the first ``n`` good ones).
        skip_bad: skip malformed records (counted in ``skipped``, with a warning)
            instead of raising.
        data_root: the folder holding the named datasets' sub-folders (default: see
            :func:`data_roots`).

    Returns:
        A :class:`LoadedDataset`.

    Raises:
        FileNotFoundError: the dataset or file cannot be found.
        DatasetError: unreadable file, unknown format, or (without ``skip_bad``) a
            malformed record; the message names the file, record index and field.
    """
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    key = str(name_or_path).lower()
    if (key == "synthetic" or key.startswith("synthetic:")) and not Path(name_or_path).is_file():
        from .synthetic import load_synthetic  # lazy: only when asked for

        return load_synthetic(key, n=n, data_root=data_root)
    if key in DATASETS and not Path(name_or_path).is_file():
        files = resolve_dataset(key, data_root)
        if key == "zsre":
            records, skipped = _load_zsre_default(files[0].parent, skip_bad=skip_bad, n=n)
            return LoadedDataset(records, key, str(files[0].parent), skipped, "zsre")
        loaded = load_file(files[0], skip_bad=skip_bad, n=n)
        loaded.name = key
        return loaded
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(name_or_path)!r} is neither a dataset name ({', '.join(DATASETS)}) "
            "nor an existing file"
        )
    return load_file(path, skip_bad=skip_bad, n=n)
