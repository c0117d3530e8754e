"""horen: lifelong editing of language models with HoReN (Normalized Hopfield Retrieval).

Example:
    >>> import horen
    >>> model, tok = horen.load_model()                      # doctest: +SKIP
    >>> ed = horen.HoReN(model, tok)
    >>> ed.edit("Who leads Zorblat Industries?", "Mira Quell")
    >>> ed.generate("Who is in charge of Zorblat Industries?")
    >>> ed.save("my-edits"); ed = horen.HoReN.load(model, tok, "my-edits")
"""

from .codebook import Codebook
from .data.record import EditRecord
from .editors import (
    FTL,
    FTM,
    GRACE,
    MEMIT,
    MEMOIR,
    METHODS,
    REPAIR,
    ROME,
    WISE,
    AlphaEdit,
    Editor,
    GraceNorm,
    HoReN,
    HoReNConfig,
    HoReNMultiStep,
    HoReNUnnormalized,
    NotConvergedWarning,
    UltraEdit,
    UnKE,
    get_method,
)
from .editset import open_edit_set
from .models import ARCHITECTURES, load_model

__all__ = [
    "ARCHITECTURES",
    "FTL",
    "FTM",
    "GRACE",
    "MEMIT",
    "MEMOIR",
    "METHODS",
    "REPAIR",
    "ROME",
    "WISE",
    "AlphaEdit",
    "Codebook",
    "EditRecord",
    "Editor",
    "GraceNorm",
    "HoReN",
    "HoReNConfig",
    "HoReNMultiStep",
    "HoReNUnnormalized",
    "NotConvergedWarning",
    "UltraEdit",
    "UnKE",
    "get_method",
    "load_model",
    "open_edit_set",
]
__version__ = "0.1.0"
