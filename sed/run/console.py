"""A readable console: log lines that do not break the progress bar, and no noise that says nothing about the run.

- :class:`TqdmHandler` (the console handler of ``hydra.job_logging`` in ``conf/config.yaml``) writes through
  ``tqdm.write``, which lifts the progress bar above the line instead of tearing it.
- :func:`quiet_console` drops Lightning's advertising tips, ignores named deprecation warnings of dependencies
  (by message and module, nothing broader), and sends the remaining warnings to the log (console and ``train.log``).
- :class:`ShortEpochLogInterval` lowers ``trainer.log_every_n_steps`` to the number of batches of an epoch
  when epochs are shorter, so short runs still log training curves (and Lightning does not warn).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytorch_lightning as pl
from tqdm import tqdm

# Lightning's rank-zero loggers, where its "💡 Tip: ..." adverts are logged.
_ADVERT_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
_ADVERT_PREFIX = "💡 Tip:"

# (message regex, module regex) of dependency warnings that a user can do nothing about.
DEPENDENCY_NOISE: tuple[tuple[str, str], ...] = (
    # torch 2.10+ deprecates LeafSpec; Lightning's pytree helper still uses it (once per fit/test).
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"pytorch_lightning\.utilities\._pytree"),
    # MLflow metric names cannot hold '@': Lightning drops it (event_f1_macro@0.5 -> event_f1_macro0.5) and warns
    # once per metric name, i.e. dozens of times per run.
    (r"MLFlow only allows '_', '/', '\.' and ' ' special characters in metric name", r"pytorch_lightning\."),
)


class TqdmHandler(logging.StreamHandler):
    """A stream handler that writes through ``tqdm.write``: a line logged while a progress bar is shown appears
    above the bar, and the bar is redrawn below it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's contract: report through handleError, never raise
            self.handleError(record)


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ADVERT_PREFIX)


_DROP_ADVERTS = _DropAdverts()


def quiet_console() -> None:
    """Filter Lightning's adverts and the known dependency deprecations; route warnings to the log. Idempotent."""
    for name in _ADVERT_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP_ADVERTS not in logger.filters:
            logger.addFilter(_DROP_ADVERTS)
    for message, module in DEPENDENCY_NOISE:
        warnings.filterwarnings("ignore", message=message, module=module)
    logging.captureWarnings(True)


class ShortEpochLogInterval(pl.Callback):
    """``trainer.log_every_n_steps = min(configured, training batches per epoch)``: with epochs shorter than the
    interval, Lightning would log the training curves rarely (or never within an epoch) and warn about it."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.datamodule is None:
            return
        try:
            n_batches = len(trainer.datamodule.train_dataloader())
        except TypeError:  # an unsized loader: nothing to adapt to
            return
        limit: Any = trainer.limit_train_batches
        n_batches = min(n_batches, limit) if isinstance(limit, int) else int(n_batches * limit)
        if 0 < n_batches < trainer.log_every_n_steps:
            trainer.log_every_n_steps = n_batches
