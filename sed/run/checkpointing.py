"""Checkpoints a run can always resume from.

- Files are written through a temporary file and a rename, so a crash or SIGKILL mid-save keeps the previous
  checkpoint, and a model whose weights went NaN/Inf is never saved over a good one.
- ``last.ckpt`` is rewritten at the end of every epoch (Lightning's own ``save_last`` only follows top-k saves,
  so it goes stale once the monitored metric stops improving) and, optionally, every N optimiser steps.
- SIGTERM and SIGINT (what SLURM, Kubernetes and Ctrl-C send) stop training after the current step with a fresh
  ``last.ckpt``, and anything else (setup, validation before training, testing) at once (:func:`stop_on_signal`);
  the process then exits with ``128 + signal``.
- :func:`read_checkpoint` opens a checkpoint with one-line errors naming the path.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Checkpoint

from sed.run.config import upgrade_targets
from sed.utils.errors import UserError
from sed.utils.io import atomic_torch_save

log = logging.getLogger(__name__)


class CheckpointError(ValueError, UserError):
    """A checkpoint cannot be used: the message names the path and the reason in one line."""


class NonFiniteWeightsError(RuntimeError, UserError):
    """The model's weights hold NaN/Inf: the checkpoint is not written, the previous one is kept."""


def _non_finite_tensors(state_dict: dict[str, Any]) -> list[str]:
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint I/O, with atomic saves and a refusal to save non-finite weights."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        bad = _non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            raise NonFiniteWeightsError(
                f"not saving {path}: {len(bad)} weight tensor(s) hold NaN/Inf (e.g. {bad[0]}); "
                "the previous checkpoint is kept"
            )
        atomic_torch_save(checkpoint, path)


class RunStopped(SystemExit):
    """A signal stopped the run; exit status ``128 + signal``. ``stage``: what it stopped, as Lightning names it
    (``"train"``, ``"sanity_check"``, ``"validate"``, ``"test"``), or ``"setup"`` before any of them;
    ``checkpoint``: the resumable checkpoint written as training stopped (:class:`ResumeCheckpoint`), if any."""

    def __init__(self, code: int, stage: str = "train", checkpoint: Optional[str] = None) -> None:
        super().__init__(code)
        self.stage = stage
        self.checkpoint = checkpoint


@contextmanager
def stop_on_signal(stage: Callable[[], Optional[str]]) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT raise :class:`RunStopped` (``128 + signal``, the stage ``stage()``
    names, ``"setup"`` when None) at once; a second Ctrl-C then aborts as Python does.

    For everything but the training steps, where :class:`ResumeCheckpoint` (whose handler replaces this one from
    the start of training to its end) stops after the current step with a checkpoint instead. Lightning's own
    handling would end a test or a validation stopped by SIGTERM with exit status 0, and one stopped by Ctrl-C
    with 1: a scheduler would record a stopped run as a success or a failure. Lightning's SIGTERM handler, which
    it installs for every stage, calls this one after its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts while this one unwinds
        raise RunStopped(128 + signum, stage() or "setup")

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class ResumeCheckpoint(Checkpoint):
    """Keeps ``<dirpath>/last.ckpt`` the latest state of the run.

    Written at the end of every epoch (after validation and after the best-checkpoint callback, which
    Lightning runs before this one), every ``every_n_train_steps`` optimiser steps when set (except at an
    epoch's last step: the end-of-epoch save follows its validation), and when a SIGTERM/SIGINT arrives:
    training then stops after the current step (in an epoch's last step: after the epoch's validation), and
    the process exits non-zero.
    A second Ctrl-C aborts at once. A checkpoint written mid-epoch resumes exactly where it stopped (the
    data module records how many batches of the epoch were trained on).
    """

    def __init__(
        self, dirpath: str | os.PathLike, every_n_train_steps: Optional[int] = None, resume_hint: str = ""
    ) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(
                f"callbacks.checkpoint.every_n_train_steps must be >= 1 or null, got {every_n_train_steps}"
            )
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_train_steps = every_n_train_steps
        self.resume_hint = resume_hint
        self._signal: Optional[int] = None
        self._previous: dict[int, Any] = {}
        self._saved_step = -1

    # ------------------------------------------------------------------ saving
    def save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the full state (saying so keeps Lightning quiet)
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # The epoch's end: its validation comes first, then on_validation_end / on_train_epoch_end save (and
            # stop). Lightning resumes a checkpoint of an epoch's last step in the next epoch, so one written here
            # would skip the validation of this epoch and the best-checkpoint choice made by it.
            return
        if self._stop_requested(trainer):
            self._stop(trainer)
        every = self.every_n_train_steps
        if every and trainer.global_step % every == 0 and trainer.global_step != self._saved_step:
            self.save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.training:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # end of the epoch, after its validation
            self.save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved_step != trainer.global_step:  # no validation ran at the end of this epoch
            self.save(trainer)
        if self._stop_requested(trainer):
            self._stop(trainer)

    # ------------------------------------------------------------------ signals
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Installed after Lightning's own SIGTERM handler (which would abort a validation with exit status 0 and
        # no checkpoint) and replacing it.
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self._signal = signum
        log.warning(
            "Received %s: stopping after the current training step and writing %s%s",
            signal.Signals(signum).name,
            self.path,
            " (Ctrl-C again aborts at once)" if signum == signal.SIGINT else "",
        )

    def _stop_requested(self, trainer: pl.Trainer) -> bool:
        local = self._signal is not None
        if trainer.world_size > 1:  # every rank stops at the same step, whichever received the signal
            return bool(trainer.strategy.reduce_boolean_decision(local, all=False))
        return local

    def _stop(self, trainer: pl.Trainer) -> None:
        if self._saved_step != trainer.global_step:
            self.save(trainer)
        signum = self._signal if self._signal is not None else signal.SIGTERM
        log.warning(
            "Training stopped by %s at epoch %d, step %d; resumable checkpoint: %s%s",
            signal.Signals(signum).name,
            trainer.current_epoch,
            trainer.global_step,
            self.path,
            f"\nResume with: {self.resume_hint} ckpt_path={self.path}" if self.resume_hint else "",
        )
        raise RunStopped(128 + signum, "train", checkpoint=str(self.path))

    def state_dict(self) -> dict[str, Any]:
        return {}


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint of this pipeline onto the CPU; any problem is a :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"ckpt_path={path}: empty file (0 bytes), not a checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - truncated zip, pickle or EOF errors all mean the same to a user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"ckpt_path={path}: unreadable checkpoint (truncated or corrupt: {reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"ckpt_path={path}: not a Lightning checkpoint (no state_dict)")
    hparams = checkpoint.get("hyper_parameters") or {}
    if "classes" not in hparams or "config" not in hparams:
        raise CheckpointError(f"ckpt_path={path}: not a checkpoint of this pipeline (no classes/config saved in it)")
    return checkpoint


def check_resumable(
    path: str | os.PathLike, checkpoint: dict[str, Any], config: dict[str, Any], classes: list[str]
) -> None:
    """Refuse to resume a run whose classes, model, features or scaler differ from this configuration's (the
    output heads would silently change meaning, or loading would fail with a wall of shape mismatches)."""
    saved_classes = list(checkpoint["hyper_parameters"]["classes"])
    if saved_classes != list(classes):
        raise CheckpointError(
            f"ckpt_path={path} was trained on classes {saved_classes}, this run's data has {list(classes)}: "
            "resuming would change what each output means (class list and order must be the same)"
        )
    saved = upgrade_targets(checkpoint["hyper_parameters"]["config"])
    differing = [
        f"{group}.{key}"
        for group in ("model", "features", "scaler")
        for key in sorted(set(saved.get(group, {})) | set(config.get(group, {})))
        if key != "path" and saved.get(group, {}).get(key) != config.get(group, {}).get(key)
    ]
    if differing:
        shown = ", ".join(f"{k}={_get(saved, k)!r} in the checkpoint, {_get(config, k)!r} now" for k in differing[:4])
        raise CheckpointError(
            f"ckpt_path={path} was trained with another model/front-end ({shown}"
            f"{', ...' if len(differing) > 4 else ''}): resume with the run's own settings, or evaluate it with train=false"
        )


def _get(tree: dict[str, Any], dotted: str) -> Any:
    group, key = dotted.split(".", 1)
    return tree.get(group, {}).get(key)
