"""Segment-based metrics of soft-labelled long recordings (MAESTRO Real in DCASE 2024 Task 4): mean partial AUROC.

The DCASE 2024 baseline (DESED_task ``recipes/dcase2024_task4_baseline``) scores MAESTRO like this, and so does
:func:`segment_metrics`:

* ground truth: the events whose annotator ``confidence`` is above 0.5, of the evaluated classes only (11 of
  MAESTRO Real's 17), same-class overlaps merged;
* scores: each recording's (post-processed) frame probabilities averaged over 1-s segments, each frame weighted by
  the time it overlaps the segment (the last segment ends at the recording's end);
* ``mpauc``: sed_scores_eval ``segment_based.auroc`` with ``max_fpr=0.1`` (the area under each class's ROC up to a
  false-positive rate of 0.1, divided by 0.1), averaged over the classes; also ``mauc`` (the whole area) and
  ``segment_f1_best`` (``segment_based.best_fscore``, the macro F1 at each class's best threshold: the MAESTRO term
  of the baseline's checkpoint objective).

One difference: the baseline averages 10-s windows' segment scores where windows overlap, whereas here the
windows' frame probabilities are averaged first (:class:`sed.evaluation.windows.WindowGrid`, as ``sed.infer``
does) and the recording is then cut into segments. A class without any ground-truth event in the set is left out
(sed_scores_eval refuses it; one warning per set) and its per-class values are NaN.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from sed.evaluation.metrics.ground_truth import _classes_with_events, _prepare
from sed.evaluation.postprocess import scores_dataframe

#: The 2024 baseline's settings.
SEGMENT_LENGTH = 1.0
MAX_FPR = 0.1
MIN_CONFIDENCE = 0.5


def segment_scores(scores: pd.DataFrame, duration: float, segment_length: float = SEGMENT_LENGTH) -> pd.DataFrame:
    """A frame-level score DataFrame (``onset, offset, *classes``) averaged over segments of ``segment_length``
    seconds from 0 to ``duration``: each frame weighted by the time it overlaps the segment."""
    if segment_length <= 0 or duration <= 0:
        raise ValueError(f"segment_length and duration must be positive, got {segment_length}, {duration}")
    classes = list(scores.columns[2:])
    onset = scores["onset"].to_numpy(np.float64)
    offset = scores["offset"].to_numpy(np.float64)
    probs = scores[classes].to_numpy(np.float64)  # [T, C]
    starts = np.arange(0.0, duration, segment_length)
    bounds = np.append(starts, duration)
    ends = np.minimum(starts + segment_length, duration)
    overlap = np.clip(np.minimum(offset[None, :], ends[:, None]) - np.maximum(onset[None, :], starts[:, None]), 0, None)
    total = overlap.sum(axis=1, keepdims=True)
    means = np.divide(overlap @ probs, total, out=np.zeros((len(starts), len(classes))), where=total > 0)
    return scores_dataframe(means.T, bounds, classes)


def _ground_truth(ground_truth: pd.DataFrame, classes: Sequence[str], min_confidence: float) -> pd.DataFrame:
    """Events above ``min_confidence`` of ``classes``; every clip keeps a (maybe event-less) row."""
    gt = ground_truth
    keep = gt["event_label"].isin(list(classes))
    if "confidence" in gt.columns:
        keep &= gt["confidence"].to_numpy(np.float64) > min_confidence
    events = gt[keep]
    empty = pd.DataFrame(
        {
            "filename": sorted(set(gt["filename"]) - set(events["filename"])),
            "onset": np.nan,
            "offset": np.nan,
            "event_label": "",
        }
    )
    return pd.concat([events[["filename", "onset", "offset", "event_label"]], empty], ignore_index=True)


def segment_metrics(
    scores: Mapping[str, pd.DataFrame],
    ground_truth: pd.DataFrame,
    durations: Mapping[str, float],
    classes: Sequence[str],
    segment_length: float = SEGMENT_LENGTH,
    max_fpr: float = MAX_FPR,
    min_confidence: float = MIN_CONFIDENCE,
    per_class: bool = True,
) -> dict[str, float]:
    """``mpauc``, ``mauc`` and ``segment_f1_best`` (and ``mpauc/<class>``, ``mauc/<class>`` with ``per_class``) of
    frame-level ``scores`` (``{clip: DataFrame}``, post-processed, at least the columns ``classes``) against a
    strong-label ``ground_truth`` with an optional ``confidence`` column; see the module docstring."""
    from sed_scores_eval import segment_based

    classes = list(classes)
    gt = _ground_truth(ground_truth, classes, min_confidence)
    ids, gt_dict, dur = _prepare({k: v[["onset", "offset", *classes]] for k, v in scores.items()}, gt, durations)
    kept = _classes_with_events(classes, gt_dict)
    metrics = {"mpauc": math.nan, "mauc": math.nan, "segment_f1_best": math.nan}
    if kept:
        segments = {k: segment_scores(v[["onset", "offset", *kept]], dur[k], segment_length) for k, v in ids.items()}
        kwargs = dict(segment_length=segment_length)
        partial = segment_based.auroc(segments, gt_dict, dur, max_fpr=max_fpr, **kwargs)[0]
        whole = segment_based.auroc(segments, gt_dict, dur, **kwargs)[0]
        best = segment_based.best_fscore(segments, gt_dict, dur, **kwargs)[0]
        metrics = {
            "mpauc": float(partial["mean"]),
            "mauc": float(whole["mean"]),
            "segment_f1_best": float(best["macro_average"]),
        }
    if per_class:
        for c in classes:
            metrics[f"mpauc/{c}"] = float(partial[c]) if c in kept else math.nan
            metrics[f"mauc/{c}"] = float(whole[c]) if c in kept else math.nan
    return metrics
