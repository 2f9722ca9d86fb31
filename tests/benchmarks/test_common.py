"""benchmarks/_common.py: what the benchmarks report about the process they time."""

from __future__ import annotations

import sys
import textwrap

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from _common import run_timed  # noqa: E402

# A parent that, like train.py's dataset generation, does its work in a forkserver pool's worker and exits.
_FORKSERVER_WORK = textwrap.dedent("""
    import multiprocessing, time
    from concurrent.futures import ProcessPoolExecutor

    def burn(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    if __name__ == "__main__":
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
            pool.submit(burn, 1.0).result()
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver and child subreapers are Linux's")
def test_run_timed_counts_the_cpu_time_of_forkserver_workers(tmp_path):
    """The quick start's CPU time (benchmarks/quickstart.py) includes the work done in forkserver workers: 1 s of
    CPU burnt in one was missing from RUSAGE_CHILDREN, which made the quick start look single-core."""
    script = tmp_path / "work.py"
    script.write_text(_FORKSERVER_WORK)
    proc, wall, cpu = run_timed([sys.executable, str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert cpu >= 0.9, f"{cpu:.2f} s of CPU counted for a tree that burnt 1 s in a forkserver worker"
    assert wall > 0
