"""Shared helpers of the benchmark scripts: timing, summary lines, machine description, memory, data.

Absolute times on a shared machine are noise, so every benchmark measures a reference in the same
process run, repeats both (interleaved where possible, so a burst of load hits both) and reports
medians and the ratio to the reference. Each figure is one line starting with ``RESULT``; that is
what ``benchmarks/run_all.py`` collects and what ``benchmarks/README.md`` pastes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from a checkout without the editable install
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line(device: str = "cpu") -> str:
    """One line naming what the numbers were measured on."""
    import torch

    from sed.run import allocator

    parts = [
        f"nproc={os.cpu_count()}",
        f"cpu={cpu_model()!r}",
        f"torch={torch.__version__}",
        f"torch_threads={torch.get_num_threads()}",
        f"python={platform.python_version()}",
        f"allocator={allocator.active()}",
    ]
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.append(f"gpu={torch.cuda.get_device_name(0)!r}")
    try:
        parts.append("load1=%.2f" % os.getloadavg()[0])
    except OSError:
        pass
    return "MACHINE " + " ".join(parts)


# --------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def time_call(fn: Callable[[], object], device: str = "cpu") -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1, device: str = "cpu"
) -> dict[str, list[float]]:
    """Time each function ``repeats`` times, round-robin (A B C A B C ...), after ``warmup`` untimed rounds.

    Round-robin order makes a burst of foreign load on a shared machine hit every candidate alike,
    so ratios stay meaningful even when absolute times are not.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_call(fn, device))
    return times


def run_timed(
    args: list[str], reap_timeout: float = 60.0, **kwargs
) -> tuple["subprocess.CompletedProcess", float, float]:
    """Run a command; its result, wall seconds and the CPU seconds of its whole process tree.

    ``RUSAGE_CHILDREN`` counts only descendants that were waited for up a chain that reaches this process. The
    workers of a ``forkserver`` pool (``sed.synth``'s generation, the scoring pool) are children of the forkserver,
    which outlives its parent by a moment and is then reparented to init, so their CPU time was lost: the quick
    start's generation (two workers) looked free. On Linux this process becomes a child subreaper for the call, so
    orphaned descendants are reparented to it and reaped here (waiting up to ``reap_timeout`` seconds).
    """
    import ctypes
    import resource
    import subprocess

    subreaper = False
    if sys.platform.startswith("linux"):
        try:  # PR_SET_CHILD_SUBREAPER
            subreaper = ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):
            subreaper = False
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        proc = subprocess.run(args, **kwargs)
        wall = time.perf_counter() - start
        deadline = time.monotonic() + reap_timeout
        while subreaper and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # nothing left to reap
                break
            if pid == 0:
                time.sleep(0.05)
    finally:
        if subreaper:
            ctypes.CDLL(None).prctl(36, 0, 0, 0, 0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu


# --------------------------------------------------------------------------- output
def result(bench: str, text: str) -> str:
    """Print one summary line (``RESULT <bench>: ...``) and return it."""
    line = f"RESULT {bench}: {text}"
    print(line, flush=True)
    return line


def note(text: str) -> None:
    print(f"  {text}", flush=True)


def fmt_rate(value: float, unit: str) -> str:
    if value >= 100:
        return f"{value:,.0f} {unit}"
    if value >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


# --------------------------------------------------------------------------- memory (no psutil needed)
def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tids = list(task_dir.iterdir())
    except OSError:
        return out
    for tid in tids:
        try:
            out += [int(c) for c in (tid / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def _private_kib(pid: int) -> int:
    """Memory only this process holds (USS: private clean + dirty pages). For a forked DataLoader worker
    this is what it added on top of its parent; pages still shared with the parent are not counted."""
    total, found = 0, False
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
                found = True
    except (OSError, ValueError, IndexError):
        pass
    return total if found else _status_kib(pid, "VmRSS")


def tree_rss_mib(pid: int | None = None) -> float:
    """Memory of a process tree in MiB: the process's resident set plus each descendant's private memory
    (DataLoader workers). Unlike a sum of RSS it does not count the parent's pages once per worker, and
    unlike PSS it does not move when unrelated processes map the same libraries."""
    pid = os.getpid() if pid is None else pid
    total = _status_kib(pid, "VmRSS")
    stack, seen = _children(pid), {pid}
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _private_kib(p)
        stack += _children(p)
    return total / 1024.0


class PeakRSS:
    """Samples :func:`tree_rss_mib` in a background thread; ``peak`` after the ``with`` block."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0.0
        self.samples: list[float] = []

    def __enter__(self) -> "PeakRSS":
        import threading

        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.is_set():
                v = tree_rss_mib()
                self.samples.append(v)
                self.peak = max(self.peak, v)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_mib())


# --------------------------------------------------------------------------- data
def workdir(arg: str | None, prefix: str) -> Path:
    """``--workdir`` if given (kept, reused by later runs), else a temporary folder removed at exit."""
    if arg:
        path = Path(arg)
        path.mkdir(parents=True, exist_ok=True)
        return path
    import atexit
    import shutil

    path = Path(tempfile.mkdtemp(prefix=f"sed_bench_{prefix}_"))
    owner = os.getpid()  # DataLoader workers inherit atexit handlers; only this process removes it
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))
    return path


def generate(out_dir: Path, sizes: Mapping[str, int], sample_rate: int, seed: int = 0) -> "object":
    """A synthetic DCASE-format dataset (``sed.synth``), reused when ``out_dir`` already holds one of that shape."""
    from sed.synth import dataset_layout, generate_dataset

    stamp = out_dir / ".bench_params"
    params = f"{sorted(sizes.items())}|{sample_rate}|{seed}"
    layout = dataset_layout(out_dir)
    if layout.complete() and stamp.is_file() and stamp.read_text() == params:
        return layout
    t0 = time.perf_counter()
    layout = generate_dataset(out_dir, seed=seed, sample_rate=sample_rate, sizes=dict(sizes))
    stamp.write_text(params)
    note(
        f"generated {sum(sizes.values())} clips at {sample_rate} Hz in {time.perf_counter() - t0:.1f}s under {out_dir}"
    )
    return layout


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--workdir", default=None, help="folder for generated data (default: a new temp folder)")
    return parser


def training_device(name: str):
    """``(torch.device(name), is_cuda)``; a clear exit when CUDA is asked for and absent."""
    import torch

    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} but torch.cuda.is_available() is False")
    return device, device.type == "cuda"


def apply_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
