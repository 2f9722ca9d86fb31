"""mimalloc under train.py on Linux: the CPU's large tensors reuse freed memory instead of fresh pages.

PyTorch takes each CPU tensor from ``malloc``. glibc serves a block over 32 MiB with a new ``mmap`` and unmaps it on
free, so a training step faults its large temporaries in anew every time and the kernel zeroes each page: 47 % of a
DESED step's CPU samples on the 2-core VM of benchmarks/README.md, where freed pages also go back to the host.
mimalloc with ``MIMALLOC_PURGE_DELAY=-1`` keeps freed memory in the process, so each step reuses the previous
step's pages: the DESED model's step went from 8.19 to 6.30 s at batch 48 (1.3x, ``benchmarks/experiments/cpu_step.py``),
peak memory the same (4.0 GiB; the process holds its peak until it exits). The numbers computed are the same.

The allocator must be loaded before anything else, so ``train.py`` re-executes itself once with mimalloc in
``LD_PRELOAD`` (the library comes from the ``cmeel-mimalloc`` wheel, a dependency on Linux). Child processes
(DataLoader workers, DDP ranks, submitit jobs) inherit it. ``SED_ALLOCATOR=system`` keeps glibc's; a
``MIMALLOC_PURGE_DELAY`` of the user's own wins.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

#: The environment variable that chooses the allocator: ``mimalloc`` (the default where it is installed) or ``system``.
ENV = "SED_ALLOCATOR"
CHOICES = ("mimalloc", "system")
_LIBRARY = Path("cmeel.prefix", "lib", "libmimalloc.so")


def mimalloc_library() -> Path | None:
    """The mimalloc shared library of the ``cmeel-mimalloc`` wheel in this environment, or None."""
    for key in ("platlib", "purelib"):
        path = Path(sysconfig.get_paths()[key]) / _LIBRARY
        if path.is_file():
            return path
    return None


def choice(environ: Mapping[str, str] = os.environ) -> str:
    """``SED_ALLOCATOR`` (default ``mimalloc``); any other value is an error naming the variable."""
    value = environ.get(ENV, "mimalloc").strip().lower() or "mimalloc"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={environ[ENV]!r}: must be one of {', '.join(CHOICES)}")
    return value


def preload_environment(environ: Mapping[str, str], library: Path | None) -> dict[str, str] | None:
    """The environment to re-execute with (``library`` added to ``LD_PRELOAD``), or None when there is nothing to
    do: not Linux, ``SED_ALLOCATOR=system``, no library, or a mimalloc already preloaded (so it runs once)."""
    if choice(environ) == "system" or library is None or not sys.platform.startswith("linux"):
        return None
    preload = environ.get("LD_PRELOAD", "")
    if "libmimalloc" in preload:
        return None
    env = dict(environ)
    env["LD_PRELOAD"] = f"{library}:{preload}" if preload else str(library)
    env.setdefault("MIMALLOC_PURGE_DELAY", "-1")  # never hand freed memory back while the process runs
    return env


def reexec_with_mimalloc() -> None:
    """Replace this process with itself under mimalloc (same PID, arguments and interpreter options) when
    :func:`preload_environment` says so; otherwise return. Call it first thing, before any large import."""
    env = preload_environment(os.environ, mimalloc_library())
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def active() -> str:
    """``mimalloc`` when this process has mimalloc loaded, else ``system``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "mimalloc" if "libmimalloc" in maps else "system"


def describe() -> str:
    """One log line: the allocator in use and how to change it."""
    if active() == "mimalloc":
        return (
            f"Memory allocator: mimalloc (freed memory kept for reuse, MIMALLOC_PURGE_DELAY="
            f"{os.environ.get('MIMALLOC_PURGE_DELAY', 'default')}; {ENV}=system for glibc's)"
        )
    if not sys.platform.startswith("linux"):
        return "Memory allocator: the system's"
    if choice() == "system":
        return f"Memory allocator: glibc's ({ENV}=system)"
    return (
        "Memory allocator: glibc's (cmeel-mimalloc is not installed, or this process was not started by "
        "train.py): CPU training steps run slower (benchmarks/README.md)"
    )
