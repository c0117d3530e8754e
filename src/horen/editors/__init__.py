"""Editing methods, one module each, registered by name in :data:`METHODS`."""

from .alphaedit import AlphaEdit, AlphaEditConfig
from .anchor import EntityConfig, EntityHoReN
from .base import METHODS, Editor, EditorConfig, NotConvergedWarning, get_method, register
from .ft import FTL, FTM, FTConfig
from .grace import GRACE, GRACEConfig
from .horen import GraceNorm, HoReN, HoReNConfig, HoReNMultiStep, HoReNUnnormalized
from .memit import MEMIT, MEMITConfig
from .memoir import MEMOIR, MEMOIRConfig
from .rome import ROME, ROMEConfig
from .ultraedit import UltraEdit, UltraEditConfig
from .unedited import Unedited
from .wise import WISE, WISEConfig

__all__ = [
    "FTL",
    "FTM",
    "GRACE",
    "MEMIT",
    "MEMOIR",
    "METHODS",
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
    "ROMEConfig",
    "UltraEdit",
    "UltraEditConfig",
    "Unedited",
    "WISEConfig",
    "get_method",
    "register",
]
