"""Faults injected into ``python train.py`` at a chosen point, so a test stops a run exactly where it means to.

Added to a run with ``+callbacks.fault._target_=faults.SignalAt +callbacks.fault.step=N ...`` (this folder on
PYTHONPATH: :data:`ENV`). The signal is a real one, sent to the process itself and handled as one from SLURM or a
user would be.
"""

from __future__ import annotations

import os
import signal as signals
from pathlib import Path

from pytorch_lightning.callbacks import Callback

#: What a ``train.py`` subprocess needs in its environment to find this module.
ENV = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}


def overrides(step: int, signal: str = "SIGTERM", stage: str = "train") -> list[str]:
    """The command-line overrides that add a :class:`SignalAt` fault."""
    return [
        "+callbacks.fault._target_=faults.SignalAt",
        f"+callbacks.fault.step={step}",
        f"+callbacks.fault.signal={signal}",
        f"+callbacks.fault.stage={stage}",
    ]


class SignalAt(Callback):
    """Sends ``signal`` to this process when ``stage`` reaches ``step``.

    ``stage="train"``: as training step ``step`` (0-based optimiser step) starts; ``"validation"``: as the validation
    after ``step`` steps starts; ``"test"``: as the first test batch starts (``step`` is not used).
    """

    def __init__(self, step: int = 0, signal: str = "SIGTERM", stage: str = "train") -> None:
        if stage not in ("train", "validation", "test"):
            raise ValueError(f"stage must be train, validation or test, got {stage!r}")
        self.step, self.signum, self.stage = int(step), getattr(signals, signal), stage

    def _send(self) -> None:
        os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer, *args) -> None:
        if self.stage == "train" and trainer.global_step == self.step:
            self._send()

    def on_validation_start(self, trainer, *args) -> None:
        if self.stage == "validation" and trainer.global_step == self.step and not trainer.sanity_checking:
            self._send()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.stage == "test" and batch_idx == 0 and dataloader_idx == 0:
            self._send()
