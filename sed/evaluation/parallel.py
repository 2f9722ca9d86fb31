"""Scoring the student and the teacher at the same time, in worker processes.

Scoring is CPU work in Python (sed_scores_eval, sed_eval, pandas): on a GPU the validation of an epoch was mostly
the two models' scoring, one after the other, while the device waited (``benchmarks/gpu_training.py``: 4.2 of
5.6 s of validation against 1.4 s of training). The two calls are independent, so they run in two processes of a
pool that lives as long as the module (started once, with the scoring code imported once). Results are the same
numbers as the serial calls: the same function on the same inputs.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Union

log = logging.getLogger(__name__)


def resolve_workers(setting: Union[int, str], jobs: int = 2) -> int:
    """Processes for ``evaluation.scoring_workers``: ``auto`` is one per job where the machine has at least 4 CPUs
    (a GPU machine), else 0 (serial: on 2 cores a pool's start-up costs more than it saves on short runs)."""
    if setting == "auto":
        return jobs if (os.cpu_count() or 1) >= 4 else 0
    try:
        workers = int(setting)
    except (TypeError, ValueError):
        workers = -1
    if workers < 0:
        raise ValueError(f"evaluation.scoring_workers must be 'auto' or a number >= 0, got {setting!r}")
    return min(workers, jobs)


class ScoringPool:
    """Runs one function over several keyword-argument sets, in worker processes when ``workers > 1``.

    The processes come from a ``forkserver`` (not forked from the training process, whose CUDA context and
    threads a fork would copy) and are kept between calls; :meth:`close` ends them.
    """

    def __init__(self, workers: int, preload: tuple[str, ...] = ("sed.evaluation.scoring",)) -> None:
        self.workers = workers
        self._preload = list(preload)
        self._executor: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[..., Any], jobs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        """``{name: fn(**kwargs)}`` for every ``name, kwargs`` of ``jobs``."""
        if self.workers <= 1 or len(jobs) <= 1:
            return {name: fn(**kwargs) for name, kwargs in jobs.items()}
        if self._executor is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(self._preload)
            self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
            log.info("Scoring the models in %d worker processes (evaluation.scoring_workers)", self.workers)
        futures: dict[str, Future] = {name: self._executor.submit(fn, **kwargs) for name, kwargs in jobs.items()}
        return {name: future.result() for name, future in futures.items()}

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __getstate__(self) -> dict[str, Any]:  # a module pickled with its pool (deepcopy, DDP spawn) gets a new one
        return {**self.__dict__, "_executor": None}
