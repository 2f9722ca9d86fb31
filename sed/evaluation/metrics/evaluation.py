"""Every metric of one model in one pass: :class:`EvalConfig`, :func:`evaluate`, :func:`evaluate_full`."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, fields
from typing import Mapping, Sequence

import pandas as pd

from sed.evaluation.metrics.fscores import event_f1, intersection_f1, segment_f1
from sed.evaluation.metrics.ground_truth import _id_keyed, _prepare
from sed.evaluation.metrics.psd import PSDROC, SCENARIOS, _psds_impl
from sed.evaluation.postprocess import (
    audio_id,
    detections_at_thresholds,
    detections_from_scores,
)

logger = logging.getLogger("sed.evaluation.metrics")  # one logger for the package, named as before the split


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
    detections: bool = True  # decode the event lists (always, for event or segment F1)
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
    detections: dict[float | str, pd.DataFrame] = field(default_factory=dict)  # threshold or "tuned" -> events
    rocs: dict[str, PSDROC] = field(default_factory=dict)


TUNED = "tuned"  # metric-key and file tag of the class-wise thresholds (``event_f1_macro@tuned``, events_tuned.tsv)


def _fmt_threshold(t: float | str) -> str:
    return t if isinstance(t, str) else f"{float(t):g}"


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
    class_thresholds: Mapping[str, float] | None = None,
) -> EvaluationResult:
    """:func:`evaluate` that also returns the detections per threshold and the PSD-ROCs.

    ``filenames`` maps audio id -> filename for the detections' ``filename`` column (default:
    taken from the ground-truth DataFrame, else ``id + '.wav'``). ``rocs`` keys are
    ``psds1``, ``psds2`` (and ``psds1_raw``, ``psds2_raw``). ``class_thresholds`` (``{class: threshold}``, e.g.
    tuned on validation) adds every F1 metric at those thresholds under the tag ``tuned``
    (``event_f1_macro@tuned``, ``event_f1@tuned/<c>``, ...) and their detections under the key ``"tuned"``.
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
                    sc,
                    gt,
                    durations,
                    scenario,
                    n_bootstrap=cfg.bootstrap,
                    confidence=cfg.confidence,
                    seed=cfg.bootstrap_seed,
                    num_jobs=cfg.num_jobs,
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
            scores_post,
            gt,
            thresholds,
            dtc=cfg.intersection_dtc,
            gtc=cfg.intersection_gtc,
            classwise=class_thresholds,
        )
        for t, res in inter.items():
            ts = _fmt_threshold(t)
            metrics[f"intersection_f1_macro@{ts}"] = res["f1_macro"]
            metrics[f"intersection_f1_micro@{ts}"] = res["f1_micro"]
            if cfg.per_class:
                for c in classes:
                    metrics[f"intersection_f1@{ts}/{c}"] = res["per_class"].get(c, float("nan"))
        tick("intersection_f1", t0)

    detections: dict = {}
    if cfg.detections or cfg.event_f1 or cfg.segment_f1:
        t0 = time.perf_counter()
        detections = detections_at_thresholds(scores_post, thresholds, filenames=filenames)
        if class_thresholds is not None:
            detections[TUNED] = detections_from_scores(
                scores_post, {c: float(class_thresholds[c]) for c in classes}, filenames=filenames
            )
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
        len(scores_post),
        time.perf_counter() - started,
        ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()),
    )
    metrics = {k: (float(v) if v is not None else math.nan) for k, v in metrics.items()}
    return EvaluationResult(metrics=metrics, detections=detections, rocs=rocs)
