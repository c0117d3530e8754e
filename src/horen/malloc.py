"""Large temporaries go straight back to the operating system (glibc's mmap threshold).

A long editing stream allocates and frees the same big float64 temporaries at every edit
(MEMIT's ``λC + KKᵀ`` and AlphaEdit's projected system are d_ff × d_ff: 19 MB each on the
embedded model) while it keeps many small tensors alive (every edit's low-rank factors).
glibc raises its mmap threshold each time a block served by mmap is freed, up to 32 MB, so
after the first edit such temporaries come from the heap, where the small long-lived
blocks between them keep the freed space from being trimmed or reused: the process grew by
55-70 MB an edit and reached 23 GB after 450 AlphaEdit edits, with the live tensors holding
under 1 GB. A fixed threshold keeps blocks of 4 MB and more in mmap, released on free: the
same stream then stays flat (``tests/test_malloc.py`` checks where a big temporary comes from).
The weight editors (whose edits allocate such temporaries) set it when they are built; it
changes where memory comes from, never what is computed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MMAP_THRESHOLD = 4 << 20  # bytes: blocks at least this big are mmapped and given back on free
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
_done: bool | None = None


def release_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes, once per process.

    Returns True if set (or already set by this function), False where it does not apply:
    not Linux, a libc without ``mallopt`` (musl), or ``MALLOC_MMAP_THRESHOLD_`` set by the
    user, whose choice is kept.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
        except (OSError, AttributeError):
            return False
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        _done = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    return _done
