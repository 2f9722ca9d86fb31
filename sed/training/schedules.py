"""Ramp-ups shared by the learning rate and the consistency weight, and the learning-rate schedule built on them."""

from __future__ import annotations

import math

import torch


def exp_rampup(step: int, rampup_steps: int) -> float:
    """Sigmoid-shaped ramp ``exp(-5 (1 - t/T)^2)`` from about 0.007 at step 0 to 1 at ``rampup_steps``."""
    if rampup_steps <= 0 or step >= rampup_steps:
        return 1.0
    phase = 1.0 - step / rampup_steps
    return math.exp(-5.0 * phase * phase)


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier: exponential warm-up, then constant or cosine decay to ``min_ratio``."""
    if step < warmup_steps:
        return exp_rampup(step, warmup_steps)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        progress = min((step - warmup_steps) / span, 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"training.schedule must be 'constant' or 'cosine', got {schedule!r}")


def warmup_lambda_lr(
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: int,
    schedule: str = "constant",
    min_lr: float = 1e-5,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The DCASE baseline's schedule as a per-step ``LambdaLR`` (``conf/scheduler/exp_warmup.yaml``).

    :func:`lr_factor` of the step: exponential warm-up over ``warmup_epochs * steps_per_epoch`` steps, then constant
    or cosine decay to ``min_lr`` at ``total_steps``. ``min_lr`` is relative to the optimiser's learning rate; with
    ``lr=0`` (a frozen student) the ratio does not matter.
    """
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"training.schedule must be 'constant' or 'cosine', got {schedule!r}")
    lr = optimizer.param_groups[0]["lr"]
    min_ratio = min_lr / lr if lr > 0 else 1.0
    warmup = warmup_epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total_steps, schedule, min_ratio)
    )
