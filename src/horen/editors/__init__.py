"""Editing methods, one module each, registered by name in :data:`METHODS`."""

from .base import METHODS, Editor, EditorConfig, get_method, register
from .grace import GRACE, GRACEConfig
from .horen import GraceNorm, HoReN, HoReNConfig, HoReNMultiStep, HoReNUnnormalized

__all__ = [
    "GRACE",
    "GRACEConfig",
    "METHODS",
    "Editor",
    "EditorConfig",
    "GraceNorm",
    "HoReN",
    "HoReNConfig",
    "HoReNMultiStep",
    "HoReNUnnormalized",
    "get_method",
    "register",
]
