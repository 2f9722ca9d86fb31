"""What importing ``sed`` sets up for the process: CPU threading and large tensors in huge pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Run in a fresh interpreter: the settings take effect before the first large allocation. Reports the settings and
# /proc/self/smaps' THPeligible of the region holding a 64 MiB tensor.
_SCRIPT = r"""
import json, os
import sed
import torch
block = torch.ones(16 << 20)
ptr, eligible = block.data_ptr(), None
inside = False
for line in open("/proc/self/smaps"):
    head = line.split()[0]
    if "-" in head and not head.endswith(":"):
        lo, hi = (int(v, 16) for v in head.split("-"))
        inside = lo <= ptr < hi
    elif inside and head == "THPeligible:":
        eligible = int(line.split()[1])
print(json.dumps({"omp": os.environ.get("OMP_WAIT_POLICY"), "thp": os.environ.get("THP_MEM_ALLOC_ENABLE"),
                  "eligible": eligible}))
"""
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _run(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "THP_MEM_ALLOC_ENABLE")}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not _THP_MODE.exists() or "[madvise]" not in _THP_MODE.read_text(),
    reason="needs Linux with transparent huge pages on request (madvise)",
)
def test_large_cpu_tensors_live_in_huge_pages_unless_the_user_says_otherwise():
    got = _run()
    assert got == {"omp": "PASSIVE", "thp": "1", "eligible": 1}
    off = _run(THP_MEM_ALLOC_ENABLE="0", OMP_WAIT_POLICY="ACTIVE")
    assert off == {"omp": "ACTIVE", "thp": "0", "eligible": 0}
