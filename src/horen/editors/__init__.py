"""Editing methods, registered by name in :data:`METHODS`.

Editors that keep the base model frozen live in :mod:`.codebook` (HoReN, horen-entity, GRACE
and the ablations) and :mod:`.memory` (WISE, MEMOIR, REPAIR); editors that rewrite the weights in
:mod:`.weights` (ROME, MEMIT, AlphaEdit, FT-L/FT-M, UltraEdit, UnKE).
"""

from .base import METHODS, Editor, EditorConfig, NotConvergedWarning, get_method, register
from .codebook.entity import EntityConfig, EntityHoReN
from .codebook.grace import GRACE, GRACEConfig
from .codebook.horen import GraceNorm, HoReN, HoReNConfig, HoReNMultiStep, HoReNUnnormalized
from .memory.memoir import MEMOIR, MEMOIRConfig
from .memory.repair import REPAIR, REPAIRConfig
from .memory.wise import WISE, WISEConfig
from .unedited import Unedited
from .weights.alphaedit import AlphaEdit, AlphaEditConfig
from .weights.ft import FTL, FTM, FTConfig
from .weights.memit import MEMIT, MEMITConfig
from .weights.rome import ROME, ROMEConfig
from .weights.ultraedit import UltraEdit, UltraEditConfig
from .weights.unke import UnKE, UnKEConfig

__all__ = [
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
    "AlphaEditConfig",
    "Editor",
    "EditorConfig",
    "EntityConfig",
    "EntityHoReN",
    "FTConfig",
    "GRACEConfig",
    "GraceNorm",
    "HoReN",
    "HoReNConfig",
    "HoReNMultiStep",
    "HoReNUnnormalized",
    "MEMITConfig",
    "MEMOIRConfig",
    "NotConvergedWarning",
    "REPAIRConfig",
    "ROMEConfig",
    "UltraEdit",
    "UltraEditConfig",
    "UnKE",
    "UnKEConfig",
    "Unedited",
    "WISEConfig",
    "get_method",
    "register",
]
