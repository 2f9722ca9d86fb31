"""Mean-teacher loss terms, computed in float32 from logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sed.models.crnn import CRNNOutput


def _masked_bce(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    if not bool(rows.any()):
        return logits.sum() * 0.0  # keeps the graph (DDP expects every parameter to get a gradient)
    return F.binary_cross_entropy_with_logits(logits[rows].float(), targets[rows].float())


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
