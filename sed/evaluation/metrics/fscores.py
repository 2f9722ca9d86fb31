"""Threshold-based F1 scores: intersection F1 from scores (as sed_scores_eval counts it), event/segment F1 (sed_eval).

Event- and segment-based F1 are computed on decoded detections, the way DCASE reports them.
"""

from __future__ import annotations

import logging
import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from sed.evaluation.metrics.ground_truth import (
    _classes_with_events,
    _id_keyed,
    _prepare,
)
from sed.evaluation.postprocess import _runs, _score_arrays, audio_id

logger = logging.getLogger("sed.evaluation.metrics")  # one logger for the package, named as before the split


# --------------------------------------------------------------------------- intersection F1
def intersection_f1(
    scores: Mapping[str, pd.DataFrame],
    ground_truth: pd.DataFrame | Mapping,
    thresholds: Sequence[float] = (0.5,),
    *,
    dtc: float = 0.5,
    gtc: float = 0.5,
    strict: bool = False,
    classwise: Mapping[str, float] | None = None,
) -> dict[float | str, dict]:
    """Intersection-based F1 (DCASE: dtc = gtc = 0.5) at each threshold, from scores.

    Equal to sed_scores_eval's ``intersection_based.fscore`` (tested), computed at the asked thresholds only: a
    frame is active when its score is strictly above the threshold (as in :func:`detections_from_scores`), active
    frames form detections, and each clip and class with both detections and ground truth is counted by
    sed_scores_eval's own ``statistics_fn``. sed_scores_eval's ``fscore`` first computes the statistics at every
    distinct score of every clip (a PSD-ROC's worth of work) and reads one point off them: the default validation
    objective needs one threshold, and this is 8x faster (1,000 clips: 0.21 vs 1.74 s, ``benchmarks/scoring.py``).
    ``classwise`` (``{class: threshold}``) adds the F1 at those class-wise thresholds under the key ``"tuned"``.

    Returns:
        ``{threshold: {"f1_macro", "f1_micro", "precision_micro", "recall_micro", "per_class": {class: f1}}}``
    """
    from sed_scores_eval.intersection_based.intermediate_statistics import statistics_fn

    scores, gt, _ = _prepare(scores, ground_truth, None, strict=strict)
    keys, all_classes, arrays = _score_arrays(scores)
    classes = _classes_with_events(all_classes, gt)
    keyed: list[tuple[float | str, np.ndarray]] = [(float(t), np.full(len(classes), float(t))) for t in thresholds]
    if classwise is not None:
        keyed.append(("tuned", np.array([float(classwise[c]) for c in classes])))
    if not classes:
        nan = float("nan")
        return {
            key: {"f1_macro": nan, "f1_micro": nan, "precision_micro": nan, "recall_micro": nan, "per_class": {}}
            for key, _ in keyed
        }
    column = {c: i for i, c in enumerate(classes)}
    kept = [all_classes.index(c) for c in classes]
    tps = np.zeros((len(keyed), len(classes)), dtype=np.int64)
    fps = np.zeros_like(tps)
    n_ref = np.zeros(len(classes), dtype=np.int64)
    for key, (onsets, offsets, values) in zip(keys, arrays):
        timestamps = np.append(onsets, offsets[-1])  # sed_scores_eval's frame boundaries
        targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for c in {column[e[2]] for e in gt[key]}:
            times = np.array([(e[0], e[1]) for e in gt[key] if column[e[2]] == c], dtype=np.float64)
            targets[c] = (times[:, 0], times[:, 1])
            n_ref[c] += len(times)
        values = values[:, kept]
        for k, (_, thr) in enumerate(keyed):
            cls, start, stop = _runs(values > thr)
            if len(cls) == 0:
                continue
            det_on, det_off = timestamps[start], timestamps[stop]
            bounds = np.searchsorted(cls, np.arange(len(classes) + 1))  # _runs sorts by class
            for c in np.flatnonzero(np.diff(bounds)):
                if c not in targets:
                    fps[k, c] += bounds[c + 1] - bounds[c]
                    continue
                rows = slice(bounds[c], bounds[c + 1])
                stats = statistics_fn(
                    det_on[None, rows],
                    det_off[None, rows],
                    *targets[c],
                    {},
                    {},
                    dtc_threshold=dtc,
                    gtc_threshold=gtc,
                    cttc_threshold=None,
                )
                tps[k, c] += stats["tps"][0]
                fps[k, c] += stats["fps"][0]
    out: dict[float | str, dict] = {}
    for k, (key, _) in enumerate(keyed):
        f, p, r = _fscore(tps[k], fps[k], n_ref)
        f_micro, p_micro, r_micro = _fscore(tps[k].sum(), fps[k].sum(), n_ref.sum())
        out[key] = {
            "f1_macro": float(np.mean(f)),
            "f1_micro": float(f_micro),
            "precision_micro": float(p_micro),
            "recall_micro": float(r_micro),
            "per_class": {c: float(f[i]) for i, c in enumerate(classes)},
        }
    return out


def _fscore(tps, fps, n_ref) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F1, precision and recall from counts, with sed_scores_eval's guards against empty denominators (its
    precision of a class without detections is 1, not 0, but the F1 is 0 either way: recall is 0)."""
    tps, fps, n_ref = (np.asarray(x, dtype=np.float64) for x in (tps, fps, n_ref))
    p = tps / np.maximum(tps + fps, 1)
    r = tps / np.maximum(n_ref, 1)
    return 2 * p * r / np.maximum(p + r, 1e-15), p, r


# --------------------------------------------------------------------------- sed_eval metrics
def _sed_eval():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import sed_eval
    return sed_eval


def _events_by_clip(df: pd.DataFrame | Mapping) -> dict[str, list[dict]]:
    """Strong DataFrame or ground-truth dict -> ``{audio_id: [sed_eval event dict, ...]}``.

    No-event rows are dropped but their clip gets an (empty) entry.
    """
    out: dict[str, list[dict]] = {}
    if isinstance(df, Mapping):
        for key, events in df.items():
            out[audio_id(key)] = [
                {"filename": key, "event_label": lab, "onset": float(a), "offset": float(b)} for a, b, lab in events
            ]
        return out
    if df is None or len(df) == 0:
        return out
    names = df["filename"].astype(str).to_numpy()
    on = pd.to_numeric(df["onset"], errors="coerce").to_numpy(dtype=np.float64)
    off = pd.to_numeric(df["offset"], errors="coerce").to_numpy(dtype=np.float64)
    labels = df["event_label"].to_numpy()
    for name, a, b, lab in zip(names, on, off, labels):
        key = audio_id(name)
        events = out.setdefault(key, [])
        if np.isnan(a) or np.isnan(b) or not isinstance(lab, str) or lab == "":
            continue
        events.append({"filename": name, "event_label": lab, "onset": float(a), "offset": float(b)})
    return out


def _clip_list(filenames, gt_events, det_events) -> list[str]:
    if filenames is None:
        clips = sorted(gt_events)
        extra = set(det_events) - set(gt_events)
        if extra:
            logger.warning(
                "%d clip(s) with detections are not in the ground truth and are not evaluated, e.g. %s",
                len(extra),
                sorted(extra)[:3],
            )
        return clips
    return sorted({audio_id(f) for f in filenames})


def _summary(metric, classes: Sequence[str]) -> dict:
    overall = metric.results_overall_metrics()
    average = metric.results_class_wise_average_metrics()
    per_class = metric.results_class_wise_metrics()
    return {
        "f1_macro": float(average["f_measure"]["f_measure"]),
        "precision_macro": float(average["f_measure"]["precision"]),
        "recall_macro": float(average["f_measure"]["recall"]),
        "f1_micro": float(overall["f_measure"]["f_measure"]),
        "precision_micro": float(overall["f_measure"]["precision"]),
        "recall_micro": float(overall["f_measure"]["recall"]),
        "error_rate": float(overall["error_rate"]["error_rate"]),
        "per_class": {c: float(per_class[c]["f_measure"]["f_measure"]) for c in classes},
    }


def event_f1(
    detections: pd.DataFrame,
    ground_truth: pd.DataFrame | Mapping,
    classes: Sequence[str],
    collar: float = 0.2,
    percentage_of_length: float = 0.2,
    filenames: Sequence[str] | None = None,
    *,
    evaluate_onset: bool = True,
    evaluate_offset: bool = True,
) -> dict:
    """Event-based F1 with ``sed_eval.sound_event.EventBasedMetrics`` (DCASE settings by default).

    Each clip in ``filenames`` (ids or filenames; default: every clip of the ground truth,
    no-event rows included) is evaluated, whether or not it has detections or events; clips
    are matched by audio id, so ``.wav``/``.flac`` differences do not matter. Empty system
    output scores 0 (``empty_system_output_handling='zero_score'``).

    Returns:
        ``{"f1_macro", "precision_macro", "recall_macro", "f1_micro", "precision_micro",
        "recall_micro", "error_rate", "per_class": {class: f1}}`` (a class without reference
        events has NaN F1 and is left out of the macro average, as in sed_eval).
    """
    sed_eval = _sed_eval()
    gt_events = _events_by_clip(ground_truth)
    det_events = _events_by_clip(detections)
    metric = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=list(classes),
        t_collar=float(collar),
        percentage_of_length=float(percentage_of_length),
        evaluate_onset=evaluate_onset,
        evaluate_offset=evaluate_offset,
        empty_system_output_handling="zero_score",
    )
    for clip in _clip_list(filenames, gt_events, det_events):
        metric.evaluate(reference_event_list=gt_events.get(clip, []), estimated_event_list=det_events.get(clip, []))
    return _summary(metric, classes)


def segment_f1(
    detections: pd.DataFrame,
    ground_truth: pd.DataFrame | Mapping,
    classes: Sequence[str],
    segment: float = 1.0,
    filenames: Sequence[str] | None = None,
    durations: Mapping[str, float] | None = None,
) -> dict:
    """Segment-based F1 with ``sed_eval.sound_event.SegmentBasedMetrics`` (``segment`` seconds).

    Clips are chosen as in :func:`event_f1`. With ``durations`` each clip is evaluated over its
    full length (otherwise up to its last reference or detected offset, sed_eval's default).

    Returns:
        Same keys as :func:`event_f1`.
    """
    sed_eval = _sed_eval()
    gt_events = _events_by_clip(ground_truth)
    det_events = _events_by_clip(detections)
    dur = _id_keyed(durations) if durations is not None else {}
    metric = sed_eval.sound_event.SegmentBasedMetrics(
        event_label_list=list(classes),
        time_resolution=float(segment),
    )
    metric.empty_system_output_handling = "zero_score"  # its constructor does not take the option
    for clip in _clip_list(filenames, gt_events, det_events):
        metric.evaluate(
            reference_event_list=gt_events.get(clip, []),
            estimated_event_list=det_events.get(clip, []),
            evaluated_length_seconds=dur.get(clip),
        )
    return _summary(metric, classes)
