"""Ground truth and input alignment for the metrics.

Score dicts are keyed by the audio id (filename without extension, as sed_scores_eval expects);
ground truth and durations may use filenames with extension, they are mapped to ids.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from sed.evaluation.postprocess import audio_id

logger = logging.getLogger("sed.evaluation.metrics")  # one logger for the package, named as before the split

GroundTruth = dict  # {audio_id: [(onset, offset, label), ...]}


def _id_keyed(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {audio_id(k): v for k, v in mapping.items()}


def ground_truth_dict(df: pd.DataFrame | Mapping, clips: Sequence[str] | None = None) -> GroundTruth:
    """Strong-label DataFrame -> ``{audio_id: [(onset, offset, label), ...]}`` for sed_scores_eval.

    No-event rows (NaN times / empty label) give the clip an empty list, so it still counts.
    Same-class overlapping or touching events of a clip are merged into their union (sed_scores_eval
    rejects them); a warning says how many. ``clips`` (ids or filenames) adds clips absent from
    ``df`` with no events. A dict input (already in this format) is checked and merged the same way.
    """
    gt: dict[str, list] = {}
    if isinstance(df, Mapping):
        for key, events in df.items():
            gt[audio_id(key)] = [(float(a), float(b), str(c)) for a, b, c in events]
    else:
        missing = [c for c in ("filename", "onset", "offset", "event_label") if c not in df.columns]
        if missing:
            raise ValueError(f"ground truth DataFrame lacks column(s) {missing}")
        names = df["filename"].astype(str).to_numpy()
        on = pd.to_numeric(df["onset"], errors="coerce").to_numpy(dtype=np.float64)
        off = pd.to_numeric(df["offset"], errors="coerce").to_numpy(dtype=np.float64)
        labels = df["event_label"].to_numpy()
        for name, a, b, lab in zip(names, on, off, labels):
            events = gt.setdefault(audio_id(name), [])
            if np.isnan(a) or np.isnan(b) or not isinstance(lab, str) or lab == "":
                continue
            events.append((float(a), float(b), lab))
    for c in clips or ():
        gt.setdefault(audio_id(c), [])
    n_merged = 0
    for key, events in gt.items():
        merged, n = _merge_events(events)
        gt[key] = merged
        n_merged += n
    if n_merged:
        logger.warning("ground truth: merged %d overlapping/touching same-class event(s) into their union", n_merged)
    return gt


def _merge_events(events: list) -> tuple[list, int]:
    if len(events) < 2:
        return list(events), 0
    out: list = []
    n = 0
    for on, off, lab in sorted(events, key=lambda e: (e[2], e[0], e[1])):
        if out and out[-1][2] == lab and on <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], off), lab)
            n += 1
        else:
            out.append((on, off, lab))
    out.sort(key=lambda e: (e[0], e[1], e[2]))
    return out, n


def _prepare(
    scores: Mapping[str, pd.DataFrame],
    ground_truth: pd.DataFrame | Mapping,
    durations: Mapping[str, float] | None,
    strict: bool = False,
) -> tuple[dict, GroundTruth, dict | None]:
    """Align scores, ground truth and durations on the scored clips; see :func:`psds` for rules."""
    if not scores:
        raise ValueError("no scores to evaluate (empty score dict)")
    scores = _id_keyed(scores)
    gt = ground_truth_dict(ground_truth)
    ids = set(scores)
    unscored = sorted(set(gt) - ids)
    if unscored:
        msg = f"{len(unscored)} ground-truth clip(s) have no scores, e.g. {unscored[:3]}"
        if strict:
            raise ValueError(msg)
        logger.warning("%s; evaluating the %d scored clips only", msg, len(ids))
    unknown = sorted(ids - set(gt))
    if len(unknown) == len(ids):
        raise ValueError(
            f"none of the {len(ids)} scored clips (e.g. {unknown[:3]}) is in the ground truth "
            f"(e.g. {sorted(gt)[:3]}): filenames do not match"
        )
    if unknown:
        logger.info(
            "%d scored clip(s) absent from the ground truth are evaluated as clips without events", len(unknown)
        )
    gt = {k: gt.get(k, []) for k in sorted(ids)}
    dur = None
    if durations is not None:
        dur = _id_keyed(durations)
        no_dur = sorted(ids - set(dur))
        if no_dur:
            raise ValueError(f"{len(no_dur)} scored clip(s) have no duration, e.g. {no_dur[:3]}")
        dur = {k: float(dur[k]) for k in sorted(ids)}
    return scores, gt, dur


_warned_absent: dict[tuple, None] = {}  # (absent classes, clip set) already warned about, oldest first


def _warn_absent_once(absent: list[str], gt: GroundTruth) -> None:
    """Warn about classes without ground truth once per evaluation set and process: every PSDS scenario and
    intersection F1, of the student and of the teacher, at every validation, would otherwise repeat it."""
    key = (tuple(absent), hash(frozenset(gt)))
    if key in _warned_absent:
        return
    _warned_absent[key] = None
    while len(_warned_absent) > 64:
        del _warned_absent[next(iter(_warned_absent))]
    logger.warning(
        "no ground-truth event for class(es) %s in this set of %d clips: left out of PSDS / "
        "intersection F1 (said once per set)",
        absent,
        len(gt),
    )


def _classes_with_events(classes: Sequence[str], gt: GroundTruth) -> list[str]:
    """The score columns ``classes`` that have a ground-truth event (warning once about the others); an error
    names ground-truth labels that are not score columns."""
    present = {e[2] for events in gt.values() for e in events}
    unknown = present - set(classes)
    if unknown:
        raise ValueError(f"ground truth has labels {sorted(unknown)} that are not score columns {list(classes)}")
    absent = [c for c in classes if c not in present]
    if absent:
        _warn_absent_once(absent, gt)
    return [c for c in classes if c in present]


def _drop_classes_without_events(scores: dict, gt: GroundTruth) -> tuple[dict, list[str]]:
    """sed_scores_eval refuses classes without any ground-truth event: evaluate without them."""
    classes = list(next(iter(scores.values())).columns[2:])
    kept = _classes_with_events(classes, gt)
    if kept == classes:
        return scores, classes
    if not kept:
        return {}, []
    cols = ["onset", "offset", *kept]
    return {k: v[cols] for k, v in scores.items()}, kept
