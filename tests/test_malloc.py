"""glibc's fixed mmap threshold (horen.malloc): a stream's big temporaries are given back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# After a big block is freed, glibc's adaptive threshold rises above it, and the next big
# temporary (a MEMIT/AlphaEdit d_ff x d_ff system) comes from the heap, where it can be kept
# after it is freed. Prints how many mmapped blocks an 8 MB temporary added (mallinfo2).
PATTERN = """
import ctypes, sys, torch
from horen.malloc import release_large_blocks
print(release_large_blocks() if sys.argv[1] == "fix" else "off")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                 "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
first = torch.ones(4 << 20, dtype=torch.float32)  # 16 MB: mmapped
del first  # freed: the adaptive threshold rises above 16 MB
before = libc.mallinfo2().hblks
system = torch.ones(1 << 20, dtype=torch.float64)  # an 8 MB temporary
print(libc.mallinfo2().hblks - before)
"""


def mmapped_blocks(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True,
                         check=True, env={**env, "OMP_NUM_THREADS": "1"}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_big_temporaries_are_mmapped_after_a_big_block_was_freed():
    assert mmapped_blocks("fix") == ("True", 1)  # mmapped: given back to the OS on free
    assert mmapped_blocks("off") == ("off", 0)  # glibc's default: from the heap


def test_weight_editors_set_it(monkeypatch):
    from conftest import build

    from horen.editors.weights import editor as weights
    from horen.editors.weights.memit import MEMIT

    calls = []
    monkeypatch.setattr(weights, "release_large_blocks", lambda: calls.append(1))
    MEMIT(*build("llama"))
    assert calls == [1]
