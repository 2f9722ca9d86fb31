"""ResumeCheckpoint under Lightning's Trainer: where last.ckpt is written, and that a stop or a crash at the end of an
epoch resumes into that epoch's validation (in process, a tiny model: the train.py runs of tests/reliability are
the end-to-end checks)."""

from __future__ import annotations

import os
import signal

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from sed.run.checkpointing import ResumeCheckpoint, RunStopped

BATCHES = 6  # per epoch
EVERY = 3  # step-interval saves: steps 3 and 6 of every epoch, 6 being its last batch


class _Recording(pl.LightningModule):
    """Records every training step (epoch, step) and every validation (epoch) in ``events``."""

    def __init__(self, events: list):
        super().__init__()
        self.events = events
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        self.events.append(("train", self.current_epoch, self.global_step))
        return ((self.w * batch[0]) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0 and not self.trainer.sanity_checking:
            self.events.append(("validate", self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _SignalAt(Callback):
    """Sends ``signum`` to this process as training step ``step`` starts."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class _CrashInValidation(Callback):
    """Dies (as a SIGKILL would: nothing more is saved) when the validation after ``step`` starts."""

    def __init__(self, step: int):
        self.step = step

    def on_validation_start(self, trainer, *args):
        if trainer.global_step == self.step and not trainer.sanity_checking:
            raise _Crash


class _Crash(Exception):
    pass


def _fit(tmp_path, events: list, callbacks=(), ckpt_path=None) -> None:
    data = DataLoader(TensorDataset(torch.arange(BATCHES * 2, dtype=torch.float32)), batch_size=2)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=True, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
                         callbacks=[ResumeCheckpoint(tmp_path, every_n_train_steps=EVERY), *callbacks])
    trainer.fit(_Recording(events), train_dataloaders=data, val_dataloaders=data, ckpt_path=ckpt_path)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list:
    events: list = []
    _fit(tmp_path_factory.mktemp("uninterrupted"), events)
    return events


def test_sigterm_in_the_last_step_of_an_epoch_stops_after_its_validation(tmp_path, uninterrupted):
    """SIGTERM during an epoch's last step: the run validates that epoch, writes last.ckpt and stops; the resumed run
    goes on with the next epoch. (Stopping before the validation lost it: Lightning resumes a checkpoint of an
    epoch's last step in the next epoch, so the epoch was never validated and its best checkpoint never chosen.)"""
    events: list = []
    with pytest.raises(RunStopped):
        _fit(tmp_path, events, [_SignalAt(BATCHES - 1, signal.SIGTERM)])
    assert events[-1] == ("validate", 0)
    _fit(tmp_path, events, ckpt_path=tmp_path / "last.ckpt")
    assert events == uninterrupted


def test_a_crash_during_validation_resumes_into_that_validation(tmp_path, uninterrupted):
    """Killed while validating the end of an epoch: the step-interval save of the epoch's last step is not written
    (the end-of-epoch save follows the validation), so last.ckpt is the previous step-interval one and the resumed
    run trains the epoch's last steps again, then validates it, as the uninterrupted run did."""
    events: list = []
    with pytest.raises(_Crash):
        _fit(tmp_path, events, [_CrashInValidation(BATCHES)])
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"]
    assert saved == BATCHES - EVERY
    resumed: list = []
    _fit(tmp_path, resumed, ckpt_path=tmp_path / "last.ckpt")
    assert resumed == uninterrupted[saved:]
