"""Ramp-ups shared by the learning rate and the consistency weight, and the learning-rate schedule built on them."""

from __future__ import annotations

import functools
import math

import torch


def exp_rampup(step: int, rampup_steps: int) -> float:
    """Sigmoid-shaped ramp ``exp(-5 (1 - t/T)^2)`` from about 0.007 at step 0 to 1 at ``rampup_steps``."""
    if rampup_steps <= 0 or step >= rampup_steps:
        return 1.0
    phase = 1.0 - step / rampup_steps
    return math.exp(-5.0 * phase * phase)


SCHEDULES = ("constant", "cosine", "quarter_cosine")


def lr_factor(
    step: int, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float, decay_start: int | None = None
) -> float:
    """Learning-rate multiplier: exponential warm-up, then constant, or a decay from ``decay_start`` (default: the end
    of the warm-up) to the end: ``cosine`` down to ``min_ratio`` along half a cosine, ``quarter_cosine`` along a
    quarter cosine floored at ``min_ratio`` (the DCASE 2024 baseline's annealing from epoch 100)."""
    if step < warmup_steps:
        return exp_rampup(step, warmup_steps)
    if schedule == "constant":
        return 1.0
    start = warmup_steps if decay_start is None else max(int(decay_start), warmup_steps)
    if schedule not in SCHEDULES:
        raise ValueError(f"training.schedule must be one of {SCHEDULES}, got {schedule!r}")
    if step < start:
        return 1.0
    progress = min((step - start) / max(total_steps - start, 1), 1.0)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(min_ratio, math.cos(0.5 * math.pi * progress))


def warmup_steps(total_steps: int, steps_per_epoch: int, warmup_epochs: int, warmup_fraction: float | None) -> int:
    """Length of the learning-rate and consistency ramp-up in optimiser steps.

    ``warmup_fraction`` (if set) makes it a share of the run, so that one recipe suits a 20-epoch and a 200-epoch
    budget alike; otherwise ``warmup_epochs`` epochs (the DCASE baseline: 50 of 200).
    """
    if warmup_fraction is not None:
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"training.warmup_fraction must be in [0, 1), got {warmup_fraction}")
        return int(round(warmup_fraction * total_steps))
    return int(warmup_epochs) * int(steps_per_epoch)


def ema_max_factor(total_steps: int, ema_factor: float, ema_horizon: float | None) -> float:
    """The teacher's EMA factor once settled.

    With ``ema_horizon`` set, the teacher averages the students of about the last ``ema_horizon`` of the run:
    ``1 - 1/(ema_horizon * total_steps)``, kept within [0.9, 0.9999]. A fixed 0.999 averages over 1,000 steps,
    which is a fifth of a 5,000-step run but the whole of a short one, where the teacher then lags the student.
    Otherwise ``ema_factor`` (the baseline: 0.999).
    """
    if ema_horizon is None:
        return float(ema_factor)
    if not 0.0 < ema_horizon <= 1.0:
        raise ValueError(f"training.ema_horizon must be in (0, 1], got {ema_horizon}")
    return min(max(1.0 - 1.0 / max(ema_horizon * total_steps, 1.0), 0.9), 0.9999)


def warmup_lambda_lr(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: int,
    warmup_fraction: float | None = None,
    schedule: str = "constant",
    min_lr: float = 1e-5,
    decay_start_epoch: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The DCASE baseline's schedule as a per-step ``LambdaLR`` (``conf/scheduler/exp_warmup.yaml``).

    :func:`lr_factor` of the step: exponential warm-up over :func:`warmup_steps` steps, then constant
    or a decay to ``min_lr`` at ``total_steps`` starting at ``decay_start_epoch`` (default: after the warm-up).
    ``min_lr`` is relative to the optimiser's learning rate; with ``lr=0`` (a frozen student) the ratio does not
    matter.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"training.schedule must be one of {SCHEDULES}, got {schedule!r}")
    lr = optimizer.param_groups[0]["lr"]
    min_ratio = min_lr / lr if lr > 0 else 1.0
    warmup = warmup_steps(total_steps, steps_per_epoch, warmup_epochs, warmup_fraction)
    decay = None if decay_start_epoch is None else int(decay_start_epoch) * int(steps_per_epoch)
    # A group that starts training later (a pretrained encoder fine-tuned from an epoch on: its "start_step")
    # gets its own warm-up from then; the others follow the run's schedule.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [
            functools.partial(
                _group_factor, int(group.get("start_step", 0)), warmup, total_steps, schedule, min_ratio, decay
            )
            for group in optimizer.param_groups
        ],
    )


def _group_factor(
    start: int, warmup: int, total: int, schedule: str, min_ratio: float, decay: int | None, step: int
) -> float:
    """:func:`lr_factor` on the clock of a group that starts at step ``start`` (0: the run's own)."""
    if start == 0:
        return lr_factor(step, warmup, total, schedule, min_ratio, decay)
    return lr_factor(
        max(step - start, 0),
        warmup,
        max(total - start, 1),
        schedule,
        min_ratio,
        None if decay is None else max(decay - start, 0),
    )
