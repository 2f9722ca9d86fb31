"""Run directories: each invocation gets its own, a resume continues its run's, and nothing a finished run
wrote is overwritten.

- A new run claims its directory with an atomic ``mkdir``: two runs started in the same second with the same
  ``exp_name`` get ``<timestamp>`` and ``<timestamp>_1``, never one directory between them.
- ``status.json`` records whether a run is running, finished, stopped (by a signal) or failed.
- Resuming training from a checkpoint continues in the checkpoint's run directory while that run is unfinished;
  a finished run is never reopened: the resumed training gets a new directory and the old results stay.
- A resumed run keeps the configuration of every earlier invocation (``.hydra/``, then ``.hydra/resume_N/``).
- A lock file stops two processes from writing into one run directory at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import IO, Any, Optional

from sed.utils.io import atomic_write_text

STATUS_FILE = "status.json"
_chosen: dict[tuple, str] = {}
_lock: Optional[IO] = None


def claim_new_dir(path: str | os.PathLike) -> Path:
    """Create and return ``path``, or ``path_1``, ``path_2``, ... when taken (atomic: safe between processes)."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for k in range(10_000):
        candidate = base if k == 0 else base.with_name(f"{base.name}_{k}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{base}: no free run directory name (tried 10,000 suffixes)")


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's ``status.json``; a run directory from before status files counts as finished once it has test
    outputs."""
    run_dir = Path(run_dir)
    try:
        return json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"status": "finished"} if (run_dir / "test").is_dir() else {}


def write_status(run_dir: str | os.PathLike, status: str, **details: Any) -> None:
    """Record the run's state (``running``, ``finished``, ``stopped``, ``failed``) atomically."""
    record = {"status": status, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), **details}
    atomic_write_text(Path(run_dir) / STATUS_FILE, json.dumps(record, indent=1, default=str) + "\n")


def is_finished(run_dir: str | os.PathLike) -> bool:
    return read_status(run_dir).get("status") == "finished"


def choose_run_dir(train: bool, ckpt_path: Optional[str], default: str) -> str:
    """Run directory of this invocation (memoised: Hydra resolves it more than once).

    Resuming training from a checkpoint of an unfinished run continues in that run's directory (one log, one
    TensorBoard run); anything else, including a resume from a finished run, claims a new directory.
    """
    key = (bool(train), ckpt_path, default)
    if key not in _chosen:
        chosen = None
        if train and ckpt_path:
            run_dir = Path(ckpt_path).resolve().parent.parent
            if (run_dir / ".hydra").is_dir() and not is_finished(run_dir):
                chosen = str(run_dir)
        _chosen[key] = chosen or str(claim_new_dir(default))
    return _chosen[key]


def requeued_checkpoint(run_dir: str | os.PathLike) -> Optional[str]:
    """``last.ckpt`` of the unfinished run in ``run_dir``, when a sweep job starts in a directory its earlier
    attempt trained in: a job requeued by submitit or SLURM (preemption, a time limit with
    ``hydra.launcher.max_num_timeout``, ``scontrol requeue``) is re-run with its first arguments, and would
    otherwise train again from epoch 0 over its own checkpoints. None when there is nothing to resume."""
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() and not is_finished(run_dir) else None


def new_dir(path: str) -> str:
    """A fresh directory for a sweep (memoised like :func:`choose_run_dir`).

    Registered with ``use_cache=True`` (sed/run/config.py): the launcher process claims the directory once, and
    sweep jobs that run in other processes (hydra-submitit-launcher, locally or on SLURM) re-compose their config
    with the launcher's resolver cache, so they get that directory instead of claiming a new ``_1``.
    """
    key = ("new", path)
    if key not in _chosen:
        _chosen[key] = str(claim_new_dir(path))
    return _chosen[key]


def config_subdir(run_dir: str) -> Optional[str]:
    """Where Hydra saves this invocation's configuration: ``.hydra`` for a new run, ``.hydra/resume_N`` when a
    resume continues a run directory, so that the first invocation's configuration is never overwritten.

    None (not saved) in the extra tasks of a multi-task SLURM job (``SLURM_PROCID`` > 0: one task per GPU, each
    composing the same config): only task 0 writes it, as only it writes the rest of the run directory.
    """
    if os.environ.get("SLURM_PROCID", "0") != "0":
        return None
    key = ("subdir", run_dir)
    if key not in _chosen:
        hydra_dir = Path(run_dir) / ".hydra"
        subdir = ".hydra"
        if (hydra_dir / "config.yaml").is_file():
            n = 1
            while (hydra_dir / f"resume_{n}").exists():
                n += 1
            subdir = f".hydra/resume_{n}"
        _chosen[key] = subdir
    return _chosen[key]


def lock_run_dir(run_dir: str | os.PathLike) -> None:
    """Hold ``<run_dir>/.lock`` for the life of this process; fail if another process holds it."""
    global _lock
    path = Path(run_dir) / ".lock"
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise RuntimeError(
            f"{run_dir} is in use by another process (pid {owner}); wait for it to end, or stop it first"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    if _lock is not None:
        _lock.close()
    _lock = handle


def release_run_dir() -> None:
    """Release the lock :func:`lock_run_dir` holds (at the end of a run, however it ends): its pid is cleared, so
    an empty ``.lock`` is one nobody holds. The file stays (removing a lock file another process may be opening
    would let two processes hold it)."""
    global _lock
    if _lock is None:
        return
    _lock.truncate(0)
    _lock.flush()
    fcntl.flock(_lock, fcntl.LOCK_UN)
    _lock.close()
    _lock = None
