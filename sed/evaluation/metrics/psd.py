"""Polyphonic sound detection score (PSDS): scenarios, exact PSD-ROC from scores, bootstrap CIs.

Computed with sed_scores_eval, which evaluates every operating point at once (no re-thresholding loop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from sed.evaluation.metrics.ground_truth import _drop_classes_without_events, _prepare

logger = logging.getLogger("sed.evaluation.metrics")  # one logger for the package, named as before the split


# --------------------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class PSDSScenario:
    """Parameters of one PSDS operating scenario (Bilen et al., 2020)."""

    dtc: float
    gtc: float
    cttc: float | None = None
    alpha_ct: float = 0.0
    alpha_st: float = 1.0
    max_efpr: float = 100.0


PSDS1 = PSDSScenario(dtc=0.7, gtc=0.7, cttc=None, alpha_ct=0.0, alpha_st=1.0, max_efpr=100.0)
PSDS2 = PSDSScenario(dtc=0.1, gtc=0.1, cttc=0.3, alpha_ct=0.5, alpha_st=1.0, max_efpr=100.0)
SCENARIOS = {"psds1": PSDS1, "psds2": PSDS2}


class PSDROC(NamedTuple):
    """PSD-ROC of one scenario: effective TPR over effective FPR (per hour), plus per class."""

    etpr: np.ndarray
    efpr: np.ndarray
    per_class: dict  # class -> (tpr, efpr)
    per_class_psds: dict  # class -> single-class PSDS
    scenario: PSDSScenario
    value: float


# --------------------------------------------------------------------------- PSDS
def _psds_call(scores, gt, dur, scenario: PSDSScenario, deltas=None, num_jobs: int = 1):
    from sed_scores_eval import intersection_based

    return intersection_based.psds(
        scores=scores,
        ground_truth=gt,
        audio_durations=dur,
        deltas=deltas,
        dtc_threshold=scenario.dtc,
        gtc_threshold=scenario.gtc,
        cttc_threshold=scenario.cttc,
        alpha_ct=scenario.alpha_ct,
        alpha_st=scenario.alpha_st,
        unit_of_time="hour",
        max_efpr=scenario.max_efpr,
        num_jobs=num_jobs,
    )


def _nan_roc(scenario: PSDSScenario) -> PSDROC:
    return PSDROC(np.zeros(1), np.zeros(1), {}, {}, scenario, float("nan"))


def _roc(result, scenario: PSDSScenario) -> PSDROC:
    value, per_class, (etpr, efpr), per_class_roc = result
    return PSDROC(
        np.asarray(etpr),
        np.asarray(efpr),
        {c: (np.asarray(r[0]), np.asarray(r[1])) for c, r in per_class_roc.items()},
        {c: float(v) for c, v in per_class.items()},
        scenario,
        float(value),
    )


def _psds_impl(
    scores,
    ground_truth,
    durations,
    scenario: PSDSScenario,
    *,
    n_bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    num_jobs: int = 1,
    strict: bool = False,
) -> tuple[float, PSDROC, dict | None]:
    """PSDS, its ROC and (with ``n_bootstrap > 0``) bootstrap statistics from one pass over the clips."""
    from sed_scores_eval import intersection_based

    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    scores, gt, dur = _prepare(scores, ground_truth, durations, strict=strict)
    scores, classes = _drop_classes_without_events(scores, gt)
    nan = float("nan")
    if not classes:
        logger.warning("no ground-truth events at all: PSDS is undefined (NaN)")
        boot = {"psds": nan, "mean": nan, "std": nan, "low": nan, "high": nan} if n_bootstrap else None
        return nan, _nan_roc(scenario), boot
    # Per-clip statistics ("deltas") once; the full-set value and every resample reuse them.
    evaluated = scenario
    if len(classes) == 1 and scenario.cttc is not None:
        # One class has no other to cross-trigger, and sed_scores_eval fails on the empty cross-trigger statistics.
        evaluated = replace(scenario, cttc=None, alpha_ct=0.0)
    deltas = intersection_based.intermediate_statistics_deltas(
        scores=scores,
        ground_truth=gt,
        dtc_threshold=evaluated.dtc,
        gtc_threshold=evaluated.gtc,
        cttc_threshold=evaluated.cttc,
        num_jobs=num_jobs,
    )
    roc = _roc(_psds_call(None, gt, dur, evaluated, deltas=deltas), scenario)
    if not n_bootstrap:
        return roc.value, roc, None
    ids = sorted(deltas)
    rng = np.random.default_rng(seed)
    values = np.empty(n_bootstrap)
    for b in range(n_bootstrap):
        pick = rng.integers(0, len(ids), size=len(ids))
        names = [f"{ids[i]}#{j}" for j, i in enumerate(pick)]  # duplicates need distinct ids
        d_b = {n: deltas[ids[i]] for n, i in zip(names, pick)}
        gt_b = {n: gt[ids[i]] for n, i in zip(names, pick)}
        dur_b = {n: dur[ids[i]] for n, i in zip(names, pick)}
        values[b] = _psds_call(None, gt_b, dur_b, evaluated, deltas=d_b)[0]
    alpha = (1.0 - confidence) / 2.0
    boot = {
        "psds": roc.value,
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if n_bootstrap > 1 else 0.0,
        "low": float(np.percentile(values, 100 * alpha)),
        "high": float(np.percentile(values, 100 * (1 - alpha))),
    }
    return roc.value, roc, boot


def psds(
    scores: Mapping[str, pd.DataFrame],
    ground_truth: pd.DataFrame | Mapping,
    durations: Mapping[str, float],
    scenario: PSDSScenario = PSDS1,
    *,
    num_jobs: int = 1,
    strict: bool = False,
) -> tuple[float, PSDROC]:
    """Exact PSDS from scores with sed_scores_eval (``intersection_based``).

    Every scored clip is evaluated, clips without events included (they only add false
    positives and duration). Ground-truth clips without scores are an error with
    ``strict=True`` and otherwise left out with a warning; scored clips missing from the
    ground truth count as clips without events. Classes with no ground-truth event at all are
    left out (warning; sed_scores_eval cannot rate them); with no events at all the result is NaN.

    Returns:
        ``(psds, roc)``; ``roc`` holds the effective TPR/FPR curve, per-class curves and PSDS.
    """
    value, roc, _ = _psds_impl(scores, ground_truth, durations, scenario, num_jobs=num_jobs, strict=strict)
    return value, roc


def psds_bootstrap(
    scores: Mapping[str, pd.DataFrame],
    ground_truth: pd.DataFrame | Mapping,
    durations: Mapping[str, float],
    scenario: PSDSScenario = PSDS1,
    *,
    n_bootstrap: int = 100,
    confidence: float = 0.95,
    seed: int = 0,
    num_jobs: int = 1,
    strict: bool = False,
) -> dict[str, float]:
    """Bootstrap confidence interval of PSDS: ``n_bootstrap`` resamples of clips with replacement.

    The per-clip statistics are computed once; each resample only re-accumulates them, so this
    costs far less than ``n_bootstrap`` full evaluations.

    Returns:
        ``{"psds", "mean", "std", "low", "high"}``: full-set value, mean and standard deviation
        over resamples, and the percentile bounds of the central ``confidence`` interval.
    """
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    _, _, boot = _psds_impl(
        scores,
        ground_truth,
        durations,
        scenario,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
        num_jobs=num_jobs,
        strict=strict,
    )
    return boot


# --------------------------------------------------------------------------- post-processing independent PSDS
class PostprocessingSweep(NamedTuple):
    """PSDS of one scenario under each of several post-processings of the same outputs, and their piPSDS.

    ``per_class[i]`` holds the single-class PSDS of every class with ground truth under post-processing ``i``;
    ``pipsds`` is the post-processing independent PSDS (Ebbers et al., DCASE 2023) of the whole set: at every eFPR
    each class takes the best TPR any of the post-processings reaches; ``pipsds_per_class`` the same per class.
    """

    psds: list[float]
    per_class: list[dict[str, float]]
    pipsds: float
    pipsds_per_class: dict[str, float]


def psds_sweep(
    scores_sets: Sequence[Mapping[str, pd.DataFrame]],
    ground_truth: pd.DataFrame | Mapping,
    durations: Mapping[str, float],
    scenario: PSDSScenario = PSDS1,
    *,
    num_jobs: int = 1,
) -> PostprocessingSweep:
    """PSDS under each post-processing in ``scores_sets`` (the same clips post-processed differently) and the piPSDS
    over all of them, from one pass of sed_scores_eval's per-clip statistics per set.

    The piPSDS is sed_scores_eval's ``postprocessing_independent_psds_from_postprocessed_scores`` (what its
    ``median_filter_independent_psds`` computes when the sets are median filters); the per-set, per-class values
    are those :func:`psds` gives for each set alone. Classes without ground-truth events are left out, as in
    :func:`psds`; with no event at all every value is NaN.
    """
    from sed_scores_eval.intersection_based import (
        intermediate_statistics_deltas,
        postprocessing_independent_psds_from_postprocessed_scores,
    )
    from sed_scores_eval.intersection_based.psds import psds_from_psd_roc

    if not scores_sets:
        raise ValueError("psds_sweep: no post-processed score sets")
    prepared = []
    for scores in scores_sets:
        scores, gt, dur = _prepare(scores, ground_truth, durations)
        scores, classes = _drop_classes_without_events(scores, gt)
        prepared.append(scores)
    nan = float("nan")
    if not classes:
        logger.warning("no ground-truth events at all: PSDS and piPSDS are undefined (NaN)")
        return PostprocessingSweep([nan] * len(scores_sets), [{} for _ in scores_sets], nan, {})
    evaluated = scenario
    if len(classes) == 1 and scenario.cttc is not None:
        evaluated = replace(scenario, cttc=None, alpha_ct=0.0)  # see _psds_impl
    kwargs = dict(dtc_threshold=evaluated.dtc, gtc_threshold=evaluated.gtc, cttc_threshold=evaluated.cttc)
    deltas = [intermediate_statistics_deltas(scores=s, ground_truth=gt, num_jobs=num_jobs, **kwargs) for s in prepared]
    roc_kwargs = dict(
        alpha_ct=evaluated.alpha_ct, alpha_st=evaluated.alpha_st, unit_of_time="hour", max_efpr=evaluated.max_efpr
    )
    value, pi_per_class, _, _, rocs, single_rocs = postprocessing_independent_psds_from_postprocessed_scores(
        None, gt, dur, deltas=deltas, num_jobs=1, **kwargs, **roc_kwargs
    )
    max_efpr = evaluated.max_efpr
    values = [float(psds_from_psd_roc(etpr, efpr, max_efpr)) for etpr, efpr in rocs]
    per_class = [
        {c: float(psds_from_psd_roc(r[0], r[1], max_efpr)) for c, r in single.items()} for single in single_rocs
    ]
    return PostprocessingSweep(values, per_class, float(value), {c: float(v) for c, v in pi_per_class.items()})
