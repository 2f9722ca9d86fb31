"""Sound Event Bounding Boxes (SEBBs, Ebbers et al., Interspeech 2024; DCASE 2024's post-processing) from the
``sebbs`` package, as an alternative to median filtering.

A change-point detector turns each class's frame scores into candidate events with one confidence each (the mean
score over the box); its hyper-parameters (step-filter length, absolute/relative merge thresholds) are chosen per
class on the validation set by sebbs's grid (that of ``sebbs.csebbs.tune``) and its ``select_best_psds``. The boxes
are written as sed_scores_eval score tables (the box's confidence over its extent, -inf elsewhere), so PSDS, F1 and
event decoding work on them as on median-filtered scores: an event is a box whose confidence is above the threshold.

``sebbs`` is optional (``pip install -e ".[sebbs]"``); this module imports it only when used.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from sed.evaluation.metrics.psd import SCENARIOS

logger = logging.getLogger(__name__)

PARAMETERS = ("step_filter_length", "merge_threshold_abs", "merge_threshold_rel")


def _csebbs():
    try:
        from sebbs import csebbs
    except ImportError as err:
        raise ImportError(
            'evaluation.postprocessing=sebbs needs the sebbs package: pip install -e ".[sebbs]" (or pip install sebbs)'
        ) from err
    return csebbs


@contextlib.contextmanager
def _quiet_progress(module):
    """sebbs draws tqdm bars for every grid point; the run's log says what is tuned instead."""
    original = module.tqdm
    module.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        module.tqdm = original


def predictor(params: Mapping[str, Mapping[str, float]], classes: Sequence[str]):
    """A ``sebbs.csebbs.CSEBBsPredictor`` with class-wise ``params`` (``{parameter: {class: value}}``)."""
    csebbs = _csebbs()
    missing = [(p, c) for p in PARAMETERS for c in classes if c not in params.get(p, {})]
    if missing:
        raise ValueError(f"SEBB parameters lack {missing[:3]} (need {list(PARAMETERS)} for every class)")
    return csebbs.CSEBBsPredictor(
        **{p: {c: float(params[p][c]) for c in classes} for p in PARAMETERS}, sound_classes=list(classes)
    )


def predict_sebbs(
    params: Mapping[str, Mapping[str, float]], scores: Mapping[str, pd.DataFrame]
) -> dict[str, list[tuple[float, float, str, float]]]:
    """``{audio_id: [(onset, offset, class, confidence), ...]}``: the boxes of ``scores`` (raw frame scores)."""
    classes = list(next(iter(scores.values())).columns[2:])
    return predictor(params, classes).predict(dict(scores))


def sebb_scores(
    params: Mapping[str, Mapping[str, float]],
    scores: Mapping[str, pd.DataFrame],
    durations: Mapping[str, float] | None = None,
) -> dict[str, pd.DataFrame]:
    """The SEBBs of ``scores`` as sed_scores_eval score tables (confidence over each box, -inf elsewhere), over the
    clip's duration (``durations`` keyed by audio id; default: the end of its raw scores)."""
    from sebbs.utils import sed_scores_from_sebbs

    classes = list(next(iter(scores.values())).columns[2:])
    boxes = predict_sebbs(params, scores)
    ends = {
        k: float(durations[k]) if durations is not None and k in durations else float(df["offset"].iloc[-1])
        for k, df in scores.items()
    }
    return {k: sed_scores_from_sebbs(boxes[k], classes, audio_duration=ends[k]) for k in scores}


def default_parameters(grid: Mapping[str, Sequence[float]], classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Parameters of a class the validation set cannot tune (no event of it): the middle of each grid."""
    step = sorted(grid["step_filter_lengths"])
    rel = sorted(grid["merge_thresholds_rel"])
    return {
        "step_filter_length": {c: float(step[len(step) // 2]) for c in classes},
        "merge_threshold_abs": {c: math.inf for c in classes},
        "merge_threshold_rel": {c: float(rel[len(rel) // 2]) for c in classes},
    }


def tune_sebbs(
    scores: Mapping[str, pd.DataFrame],
    ground_truth: Mapping[str, list],
    durations: Mapping[str, float],
    grid: Mapping[str, Sequence[float]],
    metric: str = "psds1",
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """SEBB hyper-parameters per class maximising that class's PSDS (``metric``'s scenario) on these scores.

    ``scores`` are raw validation scores keyed by audio id, ``ground_truth`` sed_scores_eval's ``{id: [(onset,
    offset, class)]}`` for the same clips, ``grid`` the candidates (``step_filter_lengths`` in seconds,
    ``merge_thresholds_abs``, ``merge_thresholds_rel``; sebbs tries each merge threshold alone). Classes without a
    ground-truth event keep :func:`default_parameters`. Returns ``(params, {class: best PSDS})``; on a tie the
    earlier candidate (shorter step filter; absolute merge thresholds before relative ones) stays.
    """
    csebbs = _csebbs()
    classes = list(next(iter(scores.values())).columns[2:])
    present = [c for c in classes if any(e[2] == c for events in ground_truth.values() for e in events)]
    params = default_parameters(grid, classes)
    if not present:
        return params, {}
    scenario = SCENARIOS[metric]
    cols = ["onset", "offset", *present]
    scores = {k: v[cols] for k, v in scores.items()}
    # The candidates of sebbs.csebbs.tune (each step-filter length with each merge threshold alone), built here
    # because sebbs 1.0.2's tune() gives its candidates no class list, so they find no box at all; the selection
    # is sebbs's own select_best_psds.
    candidates = []
    merges = [(float(a), math.inf) for a in grid["merge_thresholds_abs"]]
    merges += [(math.inf, float(r)) for r in grid["merge_thresholds_rel"]]
    for step in grid["step_filter_lengths"]:
        for merge_abs, merge_rel in merges:
            candidate = csebbs.CSEBBsPredictor(float(step), merge_abs, merge_rel, sound_classes=present)
            candidates.append((candidate, candidate.predict(scores)))
    with _quiet_progress(csebbs):
        tuned, values = csebbs.select_best_psds(
            candidates,
            dict(ground_truth),
            dict(durations),
            dtc_threshold=scenario.dtc,
            gtc_threshold=scenario.gtc,
            cttc_threshold=scenario.cttc if len(present) > 1 else None,
            alpha_ct=scenario.alpha_ct if len(present) > 1 else 0.0,
            max_efpr=scenario.max_efpr,
        )
    for name in PARAMETERS:
        for c in present:
            params[name][c] = float(getattr(tuned, name)[c])
    return params, {c: float(values[c]) for c in present}


def params_to_json(params: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """JSON-safe copy: an unlimited merge threshold (inf) is written as null."""
    return {
        p: {c: (None if not np.isfinite(v) else float(v)) for c, v in values.items()} for p, values in params.items()
    }


def params_from_json(data: Mapping[str, Any], where: str) -> dict[str, dict[str, float]]:
    """Inverse of :func:`params_to_json`; errors name ``where`` (file and key)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object of SEBB parameters {list(PARAMETERS)}")
    out: dict[str, dict[str, float]] = {}
    for name in PARAMETERS:
        values = data.get(name)
        if not isinstance(values, Mapping):
            raise ValueError(f"{where}: missing SEBB parameter {name!r} ({{class: value}})")
        try:
            out[name] = {str(c): math.inf if v is None else float(v) for c, v in values.items()}
        except (TypeError, ValueError):
            raise ValueError(f"{where}.{name}: values must be numbers or null") from None
    return out
