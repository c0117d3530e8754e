"""glibc's fixed mmap threshold (horen.malloc): a stream's big temporaries are given back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# What a MEMIT/AlphaEdit stream does: a d x d float64 temporary per step (8 MB here) freed
# again, while small tensors of every step stay alive. Prints the growth of the process, MB.
PATTERN = """
import sys, torch
from horen.malloc import release_large_blocks
print(release_large_blocks() if sys.argv[1] == "fix" else "off")
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
keep, start = [], rss()
for _ in range(60):
    k = torch.randn(1024, 1, dtype=torch.float64)
    system = k @ k.T + 1.0
    keep += [k.clone(), torch.randn(576, 1, dtype=torch.float64)]
    del system
print(round(rss() - start))
"""


def growth(mode: str) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True,
                         check=True, env={**env, "OMP_NUM_THREADS": "1"}).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_fixed_mmap_threshold_stops_the_heap_from_growing():
    state, fixed = growth("fix")
    assert state == "True"
    _, default = growth("off")
    assert fixed < 100 < default  # default glibc: the freed temporaries stay in the heap


def test_weight_editors_set_it(monkeypatch):
    from conftest import build

    from horen.editors import weights
    from horen.editors.memit import MEMIT

    calls = []
    monkeypatch.setattr(weights, "release_large_blocks", lambda: calls.append(1))
    MEMIT(*build("llama"))
    assert calls == [1]
