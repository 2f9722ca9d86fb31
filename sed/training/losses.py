"""Mean-teacher loss terms, computed in float32 from logits.

With several training datasets (``data.datasets``) a clip's dataset may annotate only some of the model's classes:
``class_mask`` ``[B, C]`` (true where the row's dataset annotates the class) takes the other classes out of every
term. This matches the DCASE 2024 Task 4 baseline (DESED_task ``recipes/dcase2024_task4_baseline``): there the
network's outputs and the targets of a clip's unannotated classes are set to 0 before ``BCELoss``/``MSELoss``
average over all elements, so such an element adds 0 to the sum, still counts in the denominator, and passes no
gradient. Here the element's loss is multiplied by 0 before the same all-element mean (the same values and
gradients, from logits). Without ``class_mask`` every term is computed exactly as before it existed.
"""

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


def _element_weights(class_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """``class_mask`` ``[B, C]`` as 0/1 weights broadcast over ``like`` (``[B, C]`` or ``[B, C, T]``)."""
    if class_mask is None:
        return None
    weights = class_mask.to(like.dtype)
    return weights if like.dim() == 2 else weights.view(*weights.shape, *([1] * (like.dim() - 2)))


def _masked_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    class_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean BCE over the elements of the rows where ``rows`` is true; 0 (graph kept: DDP expects every parameter
    to get a gradient) when there is none. Weighted by the mask rather than indexed by it, so that the host never
    waits for the device to know how many rows there are. ``pos_weight`` (broadcast over ``targets``) weights the
    positive term, as in :func:`torch.nn.functional.binary_cross_entropy_with_logits`. ``class_mask`` ``[B, C]``:
    an unannotated class's elements add 0 but still count in the row's mean (see the module docstring)."""
    per_element = F.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), reduction="none", pos_weight=pos_weight
    )
    weights = _element_weights(class_mask, per_element)
    if weights is not None:
        per_element = per_element * weights
    per_row = per_element.flatten(1).mean(1)
    weight = rows.to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


def supervised_losses(
    student: CRNNOutput,
    strong_targets: torch.Tensor,
    weak_targets: torch.Tensor,
    has_strong: torch.Tensor,
    has_weak: torch.Tensor,
    strong_pos_weight: torch.Tensor | None = None,
    class_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Frame-level BCE on the rows with strong labels, clip-level BCE on the rows with weak labels.

    Rows without a label of a kind contribute nothing to that term: a weak row never gets a strong loss.
    ``strong_pos_weight`` ``[C]``: weights of each class's positive frames (:func:`class_balance_weights`).
    ``class_mask`` ``[B, C]``: the classes each row's dataset annotates (the others add 0; module docstring).
    Targets may be soft (in [0, 1]: annotator confidences, mixup).
    """
    pos_weight = None if strong_pos_weight is None else strong_pos_weight[:, None]
    return {
        "strong": _masked_bce(student.strong_logits, strong_targets, has_strong, pos_weight, class_mask),
        "weak": _masked_bce(student.weak_logits, weak_targets, has_weak, class_mask=class_mask),
    }


def _masked_mse(
    student: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor | None, class_mask: torch.Tensor | None
) -> torch.Tensor:
    """MSE to the detached teacher: over every element (no masks, as before they existed), or over the rows where
    ``rows`` is true with the unannotated classes' elements adding 0 (counted in the mean)."""
    student, teacher = student.float(), teacher.detach().float()
    if rows is None and class_mask is None:
        return F.mse_loss(student, teacher)
    per_element = (student - teacher) ** 2
    weights = _element_weights(class_mask, per_element)
    if weights is not None:
        per_element = per_element * weights
    per_row = per_element.flatten(1).mean(1)
    if rows is None:
        return per_row.mean()
    weight = rows.to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


def consistency_losses(
    student: CRNNOutput,
    teacher: CRNNOutput,
    rows: torch.Tensor | None = None,
    class_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """MSE between student and (detached) teacher probabilities, frame- and clip-level, on every row, or on the
    rows where ``rows`` ``[B]`` is true (a dataset can be left out of it: the 2024 baseline leaves out MAESTRO's
    rows). ``class_mask`` ``[B, C]``: unannotated classes add 0 (module docstring)."""
    return {
        "consistency_strong": _masked_mse(student.strong, teacher.strong, rows, class_mask),
        "consistency_weak": _masked_mse(student.weak, teacher.weak, rows, class_mask),
    }
