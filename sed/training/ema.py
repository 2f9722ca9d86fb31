"""Mean teacher: an exponential moving average of the student's weights *and* BatchNorm statistics."""

from __future__ import annotations

import torch
from torch import nn


def ema_factor(step: int, max_factor: float) -> float:
    """Averaging factor at optimiser step ``step`` (0-based).

    ``min(1 - 1/(step + 1), max_factor)``: the first update copies the student, early updates weigh it heavily
    (a plain mean of all students so far), and the factor settles at ``max_factor`` after ``1/(1-max_factor)``
    steps. This keeps a randomly initialised teacher from dragging the consistency loss for thousands of steps.
    """
    return min(1.0 - 1.0 / (step + 1), max_factor)


@torch.no_grad()
def update_teacher(teacher: nn.Module, student: nn.Module, factor: float, buffers: bool = True) -> None:
    """``teacher = factor * teacher + (1 - factor) * student`` for parameters and, with ``buffers``, floating
    buffers.

    With ``buffers`` the BatchNorm running means and variances are averaged too and integer buffers such as
    ``num_batches_tracked`` copied; without (the DCASE baseline) the teacher keeps the statistics its own
    training-mode forwards accumulate.
    """
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        # A tensor both hold (a shared frozen encoder) or one the student does not train (a pretrained encoder
        # before it is fine-tuned, its frozen lowest layers: equal in both since the copy) has nothing to average.
        if t is not s and s.requires_grad:
            t.lerp_(s.detach(), 1.0 - factor)
    if not buffers:
        return
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        if t is s:
            continue
        if t.dtype.is_floating_point:
            t.lerp_(s, 1.0 - factor)
        else:
            t.copy_(s)
