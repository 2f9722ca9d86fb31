"""Mean-teacher loss terms, computed in float32 from logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sed.models.crnn import CRNNOutput


def _masked_bce(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the elements of the rows where ``rows`` is true; 0 (graph kept: DDP expects every parameter
    to get a gradient) when there is none. Weighted by the mask rather than indexed by it, so that the host never
    waits for the device to know how many rows there are."""
    per_row = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").flatten(1).mean(1)
    weight = rows.to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


def supervised_losses(
    student: CRNNOutput,
    strong_targets: torch.Tensor,
    weak_targets: torch.Tensor,
    has_strong: torch.Tensor,
    has_weak: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Frame-level BCE on the rows with strong labels, clip-level BCE on the rows with weak labels.

    Rows without a label of a kind contribute nothing to that term: a weak row never gets a strong loss.
    """
    return {
        "strong": _masked_bce(student.strong_logits, strong_targets, has_strong),
        "weak": _masked_bce(student.weak_logits, weak_targets, has_weak),
    }


def consistency_losses(student: CRNNOutput, teacher: CRNNOutput) -> dict[str, torch.Tensor]:
    """MSE between student and (detached) teacher probabilities, frame- and clip-level, on every row."""
    return {
        "consistency_strong": F.mse_loss(student.strong.float(), teacher.strong.detach().float()),
        "consistency_weak": F.mse_loss(student.weak.float(), teacher.weak.detach().float()),
    }
