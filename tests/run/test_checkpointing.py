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
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        callbacks=[ResumeCheckpoint(tmp_path, every_n_train_steps=EVERY), *callbacks],
    )
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


class _SignalAtFirstBatch(Callback):
    """Sends ``signum`` to this process as the first validation or test batch starts."""

    def __init__(self, signum: int):
        self.signum = signum

    def _send(self, batch_idx: int) -> None:
        if batch_idx == 0:
            os.kill(os.getpid(), self.signum)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._send(batch_idx)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._send(batch_idx)


@pytest.mark.parametrize(
    ("stage", "signum"), [("test", signal.SIGTERM), ("validate", signal.SIGINT), ("test", signal.SIGINT)]
)
def test_a_signal_outside_training_stops_with_128_plus_the_signal(tmp_path, stage, signum):
    """SIGTERM or Ctrl-C while testing or validating (outside the training steps, where ResumeCheckpoint stops after
    the step) stops at once as RunStopped(128 + signal) naming the stage. (Lightning turned SIGTERM into an exit
    status of 0 and Ctrl-C into 1: a scheduler recorded a stopped test as a success.)"""
    from sed.run.checkpointing import stop_on_signal

    data = DataLoader(TensorDataset(torch.arange(8, dtype=torch.float32)), batch_size=2)
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_SignalAtFirstBatch(signum)],
    )
    module = _Recording([])
    module.test_step = module.validation_step
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(RunStopped) as stopped, stop_on_signal(lambda: trainer.state.stage.value):
        getattr(trainer, stage)(module, dataloaders=data)
    assert stopped.value.code == 128 + signum and stopped.value.stage == stage
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers restored
