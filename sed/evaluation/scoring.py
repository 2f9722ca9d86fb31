"""From one model's frame probabilities on an evaluation set to every metric: the single function that the
training module calls once for the student and once for the teacher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import multilabel_f1_score

from sed.data.encoder import LabelEncoder
from sed.evaluation.metrics import PSDROC, evaluate_full
from sed.evaluation.postprocess import audio_id, batch_to_scores
from sed.evaluation.tuning import (
    PostprocessingSettings,
    median_filter_clips,
    median_window_sweep,
)

#: The thresholded F1 families :func:`score_model` can compute.
F1_KINDS = ("intersection", "event", "segment")


@dataclass
class ModelScores:
    """Metrics of one model plus what the test outputs are written from."""

    metrics: dict[str, float]
    probabilities: dict[str, np.ndarray]  # filename -> [C, T] post-processed
    scores_raw: dict[str, pd.DataFrame]
    scores_postprocessed: dict[str, pd.DataFrame]
    detections: dict[float | str, pd.DataFrame]  # threshold, or "tuned" (class-wise thresholds) -> events
    psd_rocs: dict[str, PSDROC]


def weak_f1(weak_probs: Mapping[str, np.ndarray], weak_targets: Mapping[str, np.ndarray], n_classes: int) -> float:
    """Macro F1 of clip-level predictions at 0.5 (torchmetrics), over the clips of ``weak_probs``."""
    filenames = sorted(weak_probs)
    preds = torch.from_numpy(np.stack([weak_probs[f] for f in filenames]))
    targets = torch.from_numpy(np.stack([weak_targets[f] for f in filenames]) > 0.5).long()
    return float(multilabel_f1_score(preds, targets, num_labels=n_classes, average="macro"))


def score_model(
    strong_probs: Mapping[str, np.ndarray],
    weak_probs: Mapping[str, np.ndarray],
    weak_targets: Mapping[str, np.ndarray],
    encoder: LabelEncoder,
    ground_truth: pd.DataFrame,
    durations: Mapping[str, float],
    evaluation: Any,
    bootstrap: int = 0,
    per_class: bool = False,
    psds: tuple[str, ...] = ("psds1", "psds2"),
    f1: tuple[str, ...] = F1_KINDS,
    settings: Optional[PostprocessingSettings] = None,
    pipsds_windows: Sequence[int] = (),
) -> ModelScores:
    """Post-process, tabulate and score one model's outputs (keyed by filename).

    ``strong_probs`` are ``[C, T]`` per clip on the encoder's frame grid: ``T`` is the encoder's ``n_frames``
    for a clip, more for a clip evaluated over a longer whole length. ``evaluation`` carries ``median_window``
    and ``thresholds`` (the ``evaluation`` config group); ``psds`` names the PSDS scenarios to compute (PSDS2
    costs about three times PSDS1). ``settings`` (tuned on validation, :mod:`sed.evaluation.tuning`) replace the
    configured median filter, and their class-wise thresholds add the F1 metrics ``...@tuned``.
    ``pipsds_windows`` adds ``pipsds1`` (``pipsds1/<class>``), the post-processing independent PSDS1 over median
    filters of those lengths applied to the raw outputs. ``f1`` names the thresholded F1 families to compute
    (:data:`F1_KINDS`); without event and segment F1 no detections are decoded either.
    Metrics: ``weak_f1`` (macro F1 of clip-level predictions at 0.5, torchmetrics) and everything
    :func:`sed.evaluation.metrics.evaluate` computes (``psds1``, ``psds2``, ``event_f1_macro@t``, ...).
    """
    filenames = sorted(strong_probs)
    raw = [np.asarray(strong_probs[f]) for f in filenames]
    timestamps = [encoder.frame_timestamps(p.shape[-1]) for p in raw]
    classes = list(encoder.classes)
    scores_raw = batch_to_scores(raw, filenames, timestamps, classes, durations)
    if settings is None:
        windows = list(evaluation.median_window)
        post = median_filter_clips(raw, windows[0] if len(windows) == 1 else windows)
        scores_post = batch_to_scores(post, filenames, timestamps, classes, durations)
    else:
        if settings.classes != classes:
            raise ValueError(f"post-processing settings are for classes {settings.classes}, the model has {classes}")
        scores_post = settings.apply(scores_raw, durations)
        post = [scores_post[audio_id(f)][classes].to_numpy().T for f in filenames]  # SEBBs: box confidences
    gt = ground_truth[ground_truth["filename"].isin(filenames)]
    result = evaluate_full(
        scores_raw,
        scores_post,
        gt,
        durations,
        classes,
        list(evaluation.thresholds),
        {
            "bootstrap": bootstrap,
            "per_class": per_class,
            "psds": list(psds),
            **{f"{kind}_f1": kind in f1 for kind in F1_KINDS},
            "detections": bool({"event", "segment"} & set(f1)),
        },
        class_thresholds=None if settings is None else settings.thresholds,
    )
    metrics = {"weak_f1": weak_f1(weak_probs, weak_targets, len(classes))}
    metrics.update(result.metrics)
    if pipsds_windows:
        sweep = median_window_sweep(scores_raw, gt, durations, list(pipsds_windows))
        metrics["pipsds1"] = sweep.pipsds
        if per_class:
            metrics.update({f"pipsds1/{c}": sweep.pipsds_per_class.get(c, float("nan")) for c in classes})
    return ModelScores(
        metrics=metrics,
        probabilities=dict(zip(filenames, post)),
        scores_raw=scores_raw,
        scores_postprocessed=scores_post,
        detections=result.detections,
        psd_rocs=result.rocs,
    )


def score_segment_model(
    strong_probs: Mapping[str, np.ndarray],
    encoder: LabelEncoder,
    ground_truth: pd.DataFrame,
    durations: Mapping[str, float],
    evaluation: Any,
    min_confidence: float = 0.5,
    per_class: bool = False,
) -> ModelScores:
    """:func:`score_model` of a soft-labelled set of long recordings (``metrics: mpauc``): the frame probabilities
    median-filtered as configured (``evaluation.median_window``), then ``mpauc``, ``mauc`` and ``segment_f1_best``
    (:func:`sed.evaluation.metrics.mpauc.segment_metrics`, the 2024 baseline's settings); no detections."""
    from sed.evaluation.metrics.mpauc import segment_metrics

    filenames = sorted(strong_probs)
    raw = [np.asarray(strong_probs[f]) for f in filenames]
    timestamps = [encoder.frame_timestamps(p.shape[-1]) for p in raw]
    classes = list(encoder.classes)
    windows = list(evaluation.median_window)
    post = median_filter_clips(raw, windows[0] if len(windows) == 1 else windows)
    scores_raw = batch_to_scores(raw, filenames, timestamps, classes, durations)
    scores_post = batch_to_scores(post, filenames, timestamps, classes, durations)
    gt = ground_truth[ground_truth["filename"].isin(filenames)]
    metrics = segment_metrics(scores_post, gt, durations, classes, min_confidence=min_confidence, per_class=per_class)
    return ModelScores(metrics, dict(zip(filenames, post)), scores_raw, scores_post, {}, {})


OBJECTIVE_TERMS = ("weak_f1", "psds1", "psds2", "intersection_f1", "event_f1", "mpauc", "mauc", "segment_f1_best")


def objective_terms(spec: str) -> list[str]:
    """The terms of ``spec`` (``evaluation.obj_metric``), checked against :data:`OBJECTIVE_TERMS`; a term may name
    the dataset whose validation set gives it (``maestro.mpauc``)."""
    terms = [term.strip() for term in spec.split("+")]
    for term in terms:
        if term.rsplit(".", 1)[-1] not in OBJECTIVE_TERMS:
            raise ValueError(
                f"evaluation.obj_metric: unknown term {term!r}; use '+'-joined terms of {OBJECTIVE_TERMS}, "
                "each preceded by 'DATASET.' with several datasets"
            )
    return terms


def assign_objective(spec: str, val_sets: Mapping[str, str]) -> dict[str, list[str]]:
    """The terms of ``spec`` per validation set, from ``val_sets`` (``{dataset: validation set}``): with one
    validation set every term is its own (named by its dataset or not); with several each term must name its
    dataset (``desed.psds1+maestro.mpauc``)."""
    out: dict[str, list[str]] = {name: [] for name in val_sets.values()}
    for term in objective_terms(spec):
        dataset, _, metric = term.rpartition(".")
        if not dataset and len(val_sets) == 1:
            dataset = next(iter(val_sets))
        if dataset not in val_sets:
            raise ValueError(
                f"evaluation.obj_metric: term {term!r} must name one of the datasets with a validation set "
                f"({', '.join(sorted(val_sets))}), e.g. {next(iter(sorted(val_sets)))}.{metric}"
            )
        out[val_sets[dataset]].append(metric)
    return out


def term_value(metrics: Mapping[str, float], term: str) -> float:
    """One objective term's value (NaN counts 0); ``intersection_f1`` and ``event_f1`` are the macro F1 at the first
    decision threshold."""
    if term in ("intersection_f1", "event_f1"):
        key = next((k for k in metrics if k.startswith(f"{term}_macro@")), None)
        if key is None:
            raise ValueError(f"evaluation.obj_metric uses {term} but no threshold produced it")
        value = metrics[key]
    elif term not in metrics:
        raise ValueError(
            f"evaluation.obj_metric uses {term}, which this validation set's metrics do not have "
            f"(psds sets: weak_f1, psds1, psds2, intersection_f1, event_f1; mpauc sets: mpauc, mauc, "
            "segment_f1_best)"
        )
    else:
        value = metrics[term]
    return 0.0 if np.isnan(value) else float(value)


def objective(metrics: Mapping[str, float], spec: str) -> float:
    """Checkpoint-selection value of one validation set: the sum of the ``+``-joined terms of ``spec``
    (``evaluation.obj_metric``; :func:`term_value`)."""
    return sum(term_value(metrics, term.rsplit(".", 1)[-1]) for term in objective_terms(spec))
