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
_locked_dir: Optional[Path] = None  # the .lock file _lock holds


class RunDirError(SystemExit):
    """The run directory cannot be made or used; the message (``error: ...``) names the key, the path and why.

    A SystemExit (exit status 1, the message printed to stderr), because it is raised while Hydra resolves its own
    run directory: OmegaConf and Hydra pass it through, where an ordinary exception ended in 100 lines of Hydra
    failing to format it."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


def claim_new_dir(path: str | os.PathLike, key: str = "") -> Path:
    """Create and return ``path``, or ``path_1``, ``path_2``, ... when taken (atomic: safe between processes).
    ``key`` (e.g. ``paths.exp_dir=exp``) names what the user set in the :class:`RunDirError` raised when it cannot
    be created (a file in the way, a read-only file system, no permission)."""
    base = Path(path)
    try:
        return _claim(base)
    except OSError as err:
        reason = err.strerror or str(err)
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(base) else ""
        raise RunDirError(
            f"{key + ': ' if key else ''}cannot create the run directory {base}: {reason}{where}"
        ) from None


def _claim(base: Path) -> Path:
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


def is_main_process() -> bool:
    """Not one of the extra processes a distributed launch starts (they share the main process's directory)."""
    return all(os.environ.get(var, "0") == "0" for var in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def is_finished(run_dir: str | os.PathLike) -> bool:
    return read_status(run_dir).get("status") == "finished"


def choose_run_dir(train: bool, ckpt_path: Optional[str], default: str, exp_dir: Optional[str] = None) -> str:
    """Run directory of this invocation (memoised: Hydra resolves it more than once).

    Resuming training from a checkpoint of an unfinished run continues in that run's directory (one log, one
    TensorBoard run), whose lock it takes now: a run directory in use by a live process is refused before Hydra
    writes anything into it (its configuration, its log). Anything else, including a resume from a finished run,
    claims a new directory (under ``exp_dir``, named in errors).
    """
    key = (bool(train), ckpt_path, default)
    if key not in _chosen:
        chosen = None
        if train and ckpt_path:
            run_dir = Path(ckpt_path).resolve().parent.parent
            if (run_dir / ".hydra").is_dir() and not is_finished(run_dir):
                if is_main_process():  # the extra processes of a distributed run share the main process's
                    try:
                        lock_run_dir(run_dir)
                    except RuntimeError as err:
                        raise RunDirError(f"ckpt_path={ckpt_path}: {err}") from None
                chosen = str(run_dir)
        _chosen[key] = chosen or str(claim_new_dir(default, f"paths.exp_dir={exp_dir}" if exp_dir else ""))
    return _chosen[key]


def requeued_checkpoint(run_dir: str | os.PathLike) -> Optional[str]:
    """``last.ckpt`` of the unfinished run in ``run_dir``, when a sweep job starts in a directory its earlier
    attempt trained in: a job requeued by submitit or SLURM (preemption, a time limit with
    ``hydra.launcher.max_num_timeout``, ``scontrol requeue``) is re-run with its first arguments, and would
    otherwise train again from epoch 0 over its own checkpoints. None when there is nothing to resume."""
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() and not is_finished(run_dir) else None


def new_dir(path: str, exp_dir: Optional[str] = None) -> str:
    """A fresh directory for a sweep (memoised like :func:`choose_run_dir`).

    Registered with ``use_cache=True`` (sed/run/config.py): the launcher process claims the directory once, and
    sweep jobs that run in other processes (hydra-submitit-launcher, locally or on SLURM) re-compose their config
    with the launcher's resolver cache, so they get that directory instead of claiming a new ``_1``.
    """
    key = ("new", path)
    if key not in _chosen:
        _chosen[key] = str(claim_new_dir(path, f"paths.exp_dir={exp_dir}" if exp_dir else ""))
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
    """Hold ``<run_dir>/.lock`` for the life of this process (or until :func:`release_run_dir`); fail if another
    process holds it. Holding it already is fine."""
    global _lock, _locked_dir
    path = Path(run_dir) / ".lock"
    if _lock is not None and _locked_dir == path.resolve():
        return
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
    _lock, _locked_dir = handle, path.resolve()


def release_run_dir() -> None:
    """Release the lock :func:`lock_run_dir` holds (at the end of a run, however it ends): its pid is cleared, so
    an empty ``.lock`` is one nobody holds. The file stays (removing a lock file another process may be opening
    would let two processes hold it)."""
    global _lock, _locked_dir
    if _lock is None:
        return
    _lock.truncate(0)
    _lock.flush()
    fcntl.flock(_lock, fcntl.LOCK_UN)
    _lock.close()
    _lock = _locked_dir = None
