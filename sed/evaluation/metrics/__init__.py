"""Sound event detection metrics: PSDS (exact, from scores), intersection, event and segment F1.

- :mod:`~sed.evaluation.metrics.ground_truth`: strong labels -> sed_scores_eval ground truth; input alignment.
- :mod:`~sed.evaluation.metrics.psd`: PSDS scenarios, PSD-ROC, bootstrap confidence intervals.
- :mod:`~sed.evaluation.metrics.fscores`: intersection F1 (sed_scores_eval), event/segment F1 (sed_eval).
- :mod:`~sed.evaluation.metrics.evaluation`: :func:`evaluate` bundles everything into one flat dict per model.
- :mod:`~sed.evaluation.metrics.mpauc`: segment-based mean partial AUROC of soft-labelled long recordings.

All log to the ``sed.evaluation.metrics`` logger.
"""

from __future__ import annotations

from sed.evaluation.metrics.evaluation import (
    EvalConfig,
    EvaluationResult,
    evaluate,
    evaluate_full,
)
from sed.evaluation.metrics.fscores import event_f1, intersection_f1, segment_f1
from sed.evaluation.metrics.ground_truth import GroundTruth, ground_truth_dict
from sed.evaluation.metrics.mpauc import segment_metrics
from sed.evaluation.metrics.psd import (
    PSDROC,
    PSDS1,
    PSDS2,
    SCENARIOS,
    PSDSScenario,
    psds,
    psds_bootstrap,
)

__all__ = [
    "PSDROC",
    "PSDS1",
    "PSDS2",
    "SCENARIOS",
    "EvalConfig",
    "EvaluationResult",
    "GroundTruth",
    "PSDSScenario",
    "evaluate",
    "evaluate_full",
    "event_f1",
    "ground_truth_dict",
    "intersection_f1",
    "psds",
    "psds_bootstrap",
    "segment_f1",
    "segment_metrics",
]
