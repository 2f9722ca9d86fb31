"""Sound event detection metrics: PSDS (exact, from scores), intersection, event and segment F1.

Threshold-free metrics (PSDS1/2) and the intersection F1 are computed from score tables with
sed_scores_eval, which evaluates every operating point at once (no re-thresholding loop).
Event- and segment-based F1 are computed with sed_eval on decoded detections, the way DCASE
reports them. :func:`evaluate` bundles everything into one flat dict per model.

Clip ids: score dicts are keyed by the audio id (filename without extension, as sed_scores_eval
expects); ground truth and durations may use filenames with extension, they are mapped to ids.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from sed.postprocess import audio_id, detections_at_thresholds

logger = logging.getLogger(__name__)

GroundTruth = dict  # {audio_id: [(onset, offset, label), ...]}


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


# --------------------------------------------------------------------------- inputs
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
        logger.info("%d scored clip(s) absent from the ground truth are evaluated as clips without events", len(unknown))
    gt = {k: gt.get(k, []) for k in sorted(ids)}
    dur = None
    if durations is not None:
        dur = _id_keyed(durations)
        no_dur = sorted(ids - set(dur))
        if no_dur:
            raise ValueError(f"{len(no_dur)} scored clip(s) have no duration, e.g. {no_dur[:3]}")
        dur = {k: float(dur[k]) for k in sorted(ids)}
    return scores, gt, dur


def _drop_classes_without_events(scores: dict, gt: GroundTruth) -> tuple[dict, list[str]]:
    """sed_scores_eval refuses classes without any ground-truth event: evaluate without them."""
    first = next(iter(scores.values()))
    classes = list(first.columns[2:])
    present = {e[2] for events in gt.values() for e in events}
    unknown = present - set(classes)
    if unknown:
        raise ValueError(f"ground truth has labels {sorted(unknown)} that are not score columns {classes}")
    absent = [c for c in classes if c not in present]
    if not absent:
        return scores, classes
    kept = [c for c in classes if c in present]
    logger.warning("no ground-truth event for class(es) %s: left out of PSDS / intersection F1", absent)
    if not kept:
        return {}, []
    cols = ["onset", "offset", *kept]
    return {k: v[cols] for k, v in scores.items()}, kept


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
    scores, ground_truth, durations, scenario: PSDSScenario, *, n_bootstrap: int = 0, confidence: float = 0.95,
    seed: int = 0, num_jobs: int = 1, strict: bool = False,
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
    deltas = intersection_based.intermediate_statistics_deltas(
        scores=scores,
        ground_truth=gt,
        dtc_threshold=scenario.dtc,
        gtc_threshold=scenario.gtc,
        cttc_threshold=scenario.cttc,
        num_jobs=num_jobs,
    )
    roc = _roc(_psds_call(None, gt, dur, scenario, deltas=deltas), scenario)
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
        values[b] = _psds_call(None, gt_b, dur_b, scenario, deltas=d_b)[0]
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
        scores, ground_truth, durations, scenario, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed,
        num_jobs=num_jobs, strict=strict,
    )
    return boot


# --------------------------------------------------------------------------- intersection F1
def intersection_f1(
    scores: Mapping[str, pd.DataFrame],
    ground_truth: pd.DataFrame | Mapping,
    thresholds: Sequence[float] = (0.5,),
    *,
    dtc: float = 0.5,
    gtc: float = 0.5,
    num_jobs: int = 1,
    strict: bool = False,
) -> dict[float, dict]:
    """Intersection-based F1 (DCASE: dtc = gtc = 0.5) at each threshold, from scores.

    Uses sed_scores_eval (statistics computed once, then read at each threshold; a frame is
    active when its score is strictly above the threshold, as in :func:`detections_from_scores`).

    Returns:
        ``{threshold: {"f1_macro", "f1_micro", "precision_micro", "recall_micro", "per_class": {class: f1}}}``
    """
    from sed_scores_eval.base_modules.precision_recall import single_fscore_from_intermediate_statistics
    from sed_scores_eval.intersection_based import accumulated_intermediate_statistics

    scores, gt, _ = _prepare(scores, ground_truth, None, strict=strict)
    scores, classes = _drop_classes_without_events(scores, gt)
    out: dict[float, dict] = {}
    if not classes:
        nan = float("nan")
        return {
            float(t): {"f1_macro": nan, "f1_micro": nan, "precision_micro": nan, "recall_micro": nan, "per_class": {}}
            for t in thresholds
        }
    stats, _ = accumulated_intermediate_statistics(
        scores=scores, ground_truth=gt, dtc_threshold=dtc, gtc_threshold=gtc, num_jobs=num_jobs
    )
    for t in thresholds:
        f, p, r, _ = single_fscore_from_intermediate_statistics(stats, threshold=float(t))
        out[float(t)] = {
            "f1_macro": float(f["macro_average"]),
            "f1_micro": float(f["micro_average"]),
            "precision_micro": float(p["micro_average"]),
            "recall_micro": float(r["micro_average"]),
            "per_class": {c: float(f[c]) for c in classes},
        }
    return out


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
                len(extra), sorted(extra)[:3],
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


# --------------------------------------------------------------------------- evaluate
@dataclass
class EvalConfig:
    """What :func:`evaluate` computes. Build from a mapping with :meth:`from_any` (unknown keys are errors)."""

    psds: Sequence[str] = ("psds1", "psds2")  # PSDS scenarios to compute ([] : none)
    psds_on: str = "postprocessed"  # scores used for PSDS: "postprocessed", "raw" or "both"
    bootstrap: int = 0  # bootstrap resamples for PSDS confidence intervals (0: off)
    confidence: float = 0.95
    bootstrap_seed: int = 0
    intersection_f1: bool = True
    intersection_dtc: float = 0.5
    intersection_gtc: float = 0.5
    event_f1: bool = True
    collar: float = 0.2
    percentage_of_length: float = 0.2
    segment_f1: bool = True
    segment_length: float = 1.0
    per_class: bool = True  # also per-class values (keys ``<metric>/<class>``)
    num_jobs: int = 1  # processes for sed_scores_eval

    @classmethod
    def from_any(cls, cfg: "EvalConfig | Mapping | None") -> "EvalConfig":
        if cfg is None:
            cfg = {}
        if isinstance(cfg, EvalConfig):
            cfg = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
        names = {f.name for f in fields(cls)}
        items = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
        unknown = sorted(set(items) - names)
        if unknown:
            raise ValueError(f"unknown evaluation option(s) {unknown}; known: {sorted(names)}")
        out = cls(**items)
        if isinstance(out.psds, bool):
            out.psds = ("psds1", "psds2") if out.psds else ()
        out.psds = tuple(out.psds)
        bad = [p for p in out.psds if p not in SCENARIOS]
        if bad:
            raise ValueError(f"unknown PSDS scenario(s) {bad}; known: {sorted(SCENARIOS)}")
        if out.psds_on not in ("postprocessed", "raw", "both"):
            raise ValueError(f"psds_on must be 'postprocessed', 'raw' or 'both', got {out.psds_on!r}")
        return out


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate_full` produced: the flat metrics, detections and PSD-ROCs."""

    metrics: dict[str, float]
    detections: dict[float, pd.DataFrame] = field(default_factory=dict)
    rocs: dict[str, PSDROC] = field(default_factory=dict)


def _fmt_threshold(t: float) -> str:
    return f"{float(t):g}"


def evaluate(
    scores_raw: Mapping[str, pd.DataFrame] | None,
    scores_post: Mapping[str, pd.DataFrame],
    ground_truth: pd.DataFrame | Mapping,
    durations: Mapping[str, float],
    classes: Sequence[str],
    thresholds: Sequence[float] = (0.5,),
    cfg: EvalConfig | Mapping | None = None,
) -> dict[str, float]:
    """Every metric of one model as one flat ``{name: float}`` dict.

    Detections are decoded from ``scores_post`` at each threshold ``t`` (score > t). Keys
    (``t`` formatted with ``:g``, e.g. ``0.5``; ``<c>`` a class name):

    - ``psds1``, ``psds2`` (those in ``cfg.psds``): PSDS scenario 1 / 2 on post-processed scores; ``psds1_raw``,
      ``psds2_raw`` on raw scores when ``cfg.psds_on`` is ``"raw"``/``"both"`` (with ``"raw"``
      only the ``_raw`` keys exist). Per class: ``psds1/<c>``, ``psds2/<c>`` (single-class PSDS).
    - with ``cfg.bootstrap = n > 0``: ``psds1_ci_low``, ``psds1_ci_high``, ``psds1_boot_mean``,
      ``psds1_boot_std`` (and the same for ``psds2``, and ``psds*_raw_ci_*`` when raw is used).
    - ``intersection_f1_macro@t``, ``intersection_f1_micro@t``, ``intersection_f1@t/<c>``
      (sed_scores_eval, dtc = gtc = 0.5).
    - ``event_f1_macro@t``, ``event_f1_micro@t``, ``event_precision_micro@t``,
      ``event_recall_micro@t``, ``event_error_rate@t``, ``event_f1@t/<c>`` (sed_eval, collar 0.2 s,
      20 % of length, onset and offset).
    - ``segment_f1_macro@t``, ``segment_f1_micro@t``, ``segment_precision_micro@t``,
      ``segment_recall_micro@t``, ``segment_error_rate@t``, ``segment_f1@t/<c>`` (1 s segments).

    Per-class keys are present only with ``cfg.per_class`` (default True). Undefined values
    (e.g. a class without reference events) are NaN.

    Args:
        scores_raw: ``{audio_id: score DataFrame}`` before post-processing (only used when
            ``cfg.psds_on`` includes raw; may be None otherwise).
        scores_post: post-processed scores, same keys.
        ground_truth: strong-label DataFrame (``sed.data.tsv.read_strong``) or ground-truth dict.
        durations: clip durations in seconds keyed by filename or audio id.
        classes: class names in score-column order.
        thresholds: decision thresholds for the F1 metrics.
        cfg: :class:`EvalConfig`, a mapping of its fields, or None for defaults.
    """
    return evaluate_full(scores_raw, scores_post, ground_truth, durations, classes, thresholds, cfg).metrics


def evaluate_full(
    scores_raw: Mapping[str, pd.DataFrame] | None,
    scores_post: Mapping[str, pd.DataFrame],
    ground_truth: pd.DataFrame | Mapping,
    durations: Mapping[str, float],
    classes: Sequence[str],
    thresholds: Sequence[float] = (0.5,),
    cfg: EvalConfig | Mapping | None = None,
    filenames: Mapping[str, str] | None = None,
) -> EvaluationResult:
    """:func:`evaluate` that also returns the detections per threshold and the PSD-ROCs.

    ``filenames`` maps audio id -> filename for the detections' ``filename`` column (default:
    taken from the ground-truth DataFrame, else ``id + '.wav'``). ``rocs`` keys are
    ``psds1``, ``psds2`` (and ``psds1_raw``, ``psds2_raw``).
    """
    cfg = EvalConfig.from_any(cfg)
    classes = list(classes)
    thresholds = [float(t) for t in thresholds]
    started = time.perf_counter()
    if not scores_post:
        raise ValueError("evaluate: no post-processed scores")
    score_cols = list(next(iter(scores_post.values())).columns[2:])
    if score_cols != classes:
        raise ValueError(f"score columns {score_cols} differ from classes {classes}")
    if filenames is None and isinstance(ground_truth, pd.DataFrame):
        filenames = {audio_id(f): f for f in ground_truth["filename"].astype(str).unique()}
    # Align once (warnings about unscored clips appear once); inner calls get matching inputs.
    scores_post, gt, durations = _prepare(scores_post, ground_truth, durations)
    if scores_raw is not None:
        scores_raw = _id_keyed(scores_raw)
    metrics: dict[str, float] = {}
    rocs: dict[str, PSDROC] = {}
    timings: dict[str, float] = {}

    def tick(name: str, t0: float) -> None:
        timings[name] = time.perf_counter() - t0

    if cfg.psds:
        sources = []
        if cfg.psds_on in ("postprocessed", "both"):
            sources.append(("", scores_post))
        if cfg.psds_on in ("raw", "both"):
            if scores_raw is None:
                raise ValueError("evaluate: psds_on includes 'raw' but scores_raw is None")
            sources.append(("_raw", scores_raw))
        for suffix, sc in sources:
            for name in cfg.psds:
                scenario = SCENARIOS[name]
                t0 = time.perf_counter()
                key = name + suffix
                value, roc, boot = _psds_impl(
                    sc, gt, durations, scenario, n_bootstrap=cfg.bootstrap, confidence=cfg.confidence,
                    seed=cfg.bootstrap_seed, num_jobs=cfg.num_jobs,
                )
                metrics[key] = value
                if boot is not None:
                    metrics[f"{key}_ci_low"] = boot["low"]
                    metrics[f"{key}_ci_high"] = boot["high"]
                    metrics[f"{key}_boot_mean"] = boot["mean"]
                    metrics[f"{key}_boot_std"] = boot["std"]
                rocs[key] = roc
                if cfg.per_class:
                    for c in classes:
                        metrics[f"{key}/{c}"] = roc.per_class_psds.get(c, float("nan"))
                tick(key, t0)

    if cfg.intersection_f1 and thresholds:
        t0 = time.perf_counter()
        inter = intersection_f1(
            scores_post, gt, thresholds, dtc=cfg.intersection_dtc, gtc=cfg.intersection_gtc, num_jobs=cfg.num_jobs
        )
        for t, res in inter.items():
            ts = _fmt_threshold(t)
            metrics[f"intersection_f1_macro@{ts}"] = res["f1_macro"]
            metrics[f"intersection_f1_micro@{ts}"] = res["f1_micro"]
            if cfg.per_class:
                for c in classes:
                    metrics[f"intersection_f1@{ts}/{c}"] = res["per_class"].get(c, float("nan"))
        tick("intersection_f1", t0)

    t0 = time.perf_counter()
    detections = detections_at_thresholds(scores_post, thresholds, filenames=filenames)
    tick("decode", t0)
    clips = sorted(audio_id(k) for k in scores_post)
    for kind, enabled in (("event", cfg.event_f1), ("segment", cfg.segment_f1)):
        if not enabled:
            continue
        t0 = time.perf_counter()
        for t, det in detections.items():
            if kind == "event":
                res = event_f1(det, gt, classes, cfg.collar, cfg.percentage_of_length, filenames=clips)
            else:
                res = segment_f1(det, gt, classes, cfg.segment_length, filenames=clips, durations=durations)
            ts = _fmt_threshold(t)
            metrics[f"{kind}_f1_macro@{ts}"] = res["f1_macro"]
            metrics[f"{kind}_f1_micro@{ts}"] = res["f1_micro"]
            metrics[f"{kind}_precision_micro@{ts}"] = res["precision_micro"]
            metrics[f"{kind}_recall_micro@{ts}"] = res["recall_micro"]
            metrics[f"{kind}_error_rate@{ts}"] = res["error_rate"]
            if cfg.per_class:
                for c in classes:
                    metrics[f"{kind}_f1@{ts}/{c}"] = res["per_class"][c]
        tick(f"{kind}_f1", t0)

    logger.info(
        "evaluated %d clips in %.2fs (%s)",
        len(scores_post), time.perf_counter() - started,
        ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()),
    )
    metrics = {k: (float(v) if v is not None else math.nan) for k, v in metrics.items()}
    return EvaluationResult(metrics=metrics, detections=detections, rocs=rocs)
