"""Mean-teacher loss terms, computed in float32 from logits."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sed.models.crnn import CRNNOutput


def class_balance_weights(active_fractions: np.ndarray, power: float) -> np.ndarray:
    """Weights of each class's positive frames in the strong loss: ``(median fraction / fraction) ** power``, at
    least 1, so that a class active in few frames (short or rare events) is not drowned by its negatives while the
    others keep weight 1. ``active_fractions``: per class, the share of training frames where it is active (a class
    never active gets the largest weight of the others). ``power`` 0 gives all ones."""
    frac = np.asarray(active_fractions, dtype=np.float64)
    present = frac > 0
    if power == 0 or not present.any():
        return np.ones_like(frac)
    weights = np.ones_like(frac)
    weights[present] = np.maximum(np.median(frac[present]) / frac[present], 1.0) ** power
    weights[~present] = weights[present].max()
    return weights


def _masked_bce(
    logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean BCE over the elements of the rows where ``rows`` is true; 0 (graph kept: DDP expects every parameter
    to get a gradient) when there is none. Weighted by the mask rather than indexed by it, so that the host never
    waits for the device to know how many rows there are. ``pos_weight`` (broadcast over ``targets``) weights the
    positive term, as in :func:`torch.nn.functional.binary_cross_entropy_with_logits`."""
    per_row = F.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), reduction="none", pos_weight=pos_weight
    ).flatten(1).mean(1)
    weight = rows.to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


def supervised_losses(
    student: CRNNOutput,
    strong_targets: torch.Tensor,
    weak_targets: torch.Tensor,
    has_strong: torch.Tensor,
    has_weak: torch.Tensor,
    strong_pos_weight: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Frame-level BCE on the rows with strong labels, clip-level BCE on the rows with weak labels.

    Rows without a label of a kind contribute nothing to that term: a weak row never gets a strong loss.
    ``strong_pos_weight`` ``[C]``: weights of each class's positive frames (:func:`class_balance_weights`).
    """
    pos_weight = None if strong_pos_weight is None else strong_pos_weight[:, None]
    return {
        "strong": _masked_bce(student.strong_logits, strong_targets, has_strong, pos_weight),
        "weak": _masked_bce(student.weak_logits, weak_targets, has_weak),
    }


def consistency_losses(student: CRNNOutput, teacher: CRNNOutput) -> dict[str, torch.Tensor]:
    """MSE between student and (detached) teacher probabilities, frame- and clip-level, on every row."""
    return {
        "consistency_strong": F.mse_loss(student.strong.float(), teacher.strong.detach().float()),
        "consistency_weak": F.mse_loss(student.weak.float(), teacher.weak.detach().float()),
    }
