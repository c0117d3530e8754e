"""Edit datasets: the :class:`EditRecord` type and loaders for ZsRE, CounterFact, KnowEdit,
WikiBigEdit, UnKE and plain JSONL/CSV files. Start with :func:`load_dataset`.
"""

from horen.data._common import DatasetError
from horen.data.counterfact import load_counterfact
from horen.data.knowedit import load_knowedit
from horen.data.loaders import (
    DATASETS,
    FORMATS,
    LoadedDataset,
    data_roots,
    detect_format,
    load_dataset,
    load_file,
    resolve_dataset,
)
from horen.data.plain import load_csv, load_jsonl, load_plain
from horen.data.record import EditRecord
from horen.data.synthetic import load_synthetic, synthetic_stream
from horen.data.unke import load_unke
from horen.data.wikibigedit import load_wikibigedit
from horen.data.zsre import load_zsre, load_zsre_default

__all__ = [
    "DATASETS",
    "FORMATS",
    "DatasetError",
    "EditRecord",
    "LoadedDataset",
    "data_roots",
    "detect_format",
    "load_counterfact",
    "load_csv",
    "load_dataset",
    "load_file",
    "load_jsonl",
    "load_knowedit",
    "load_plain",
    "load_synthetic",
    "load_unke",
    "load_wikibigedit",
    "load_zsre",
    "load_zsre_default",
    "resolve_dataset",
    "synthetic_stream",
]
