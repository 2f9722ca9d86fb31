"""One evaluation set of several datasets scored on its own classes (sed.evaluation.set_scoring)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from sed.data.encoder import LabelEncoder
from sed.evaluation.set_scoring import scoring_jobs, set_evaluation

CLASSES = ["a", "b", "c"]


def _evaluation(windows):
    from sed.run.config import EvaluationConfig

    ev = OmegaConf.structured(EvaluationConfig)
    ev.median_window = windows
    return ev


def test_class_wise_median_windows_follow_the_sets_classes():
    ev = _evaluation([3, 5, 7])
    assert list(set_evaluation(ev, np.array([0, 2], dtype=np.int64), 3).median_window) == [3, 7]
    assert set_evaluation(ev, None, 3) is ev and list(ev.median_window) == [3, 5, 7]
    with pytest.raises(ValueError, match="evaluation.median_window has 2 lengths for the model's 3 classes"):
        set_evaluation(_evaluation([3, 5]), np.array([0]), 3)


def test_an_mpauc_set_is_scored_on_its_classes_only():
    encoder = LabelEncoder(CLASSES, sample_rate=16000, hop_length=400, clip_duration=1.0, time_pooling=1)  # 25-ms
    rng = np.random.default_rng(0)
    probs = {"r.wav": rng.random((3, 400)).astype(np.float32)}  # a 10-s recording
    outputs = {
        "student": probs,
        "teacher": probs,
        "student_weak": {"r.wav": np.zeros(3)},
        "teacher_weak": {"r.wav": np.zeros(3)},
        "weak_targets": {"r.wav": np.zeros(3)},
    }
    gt = pd.DataFrame(
        {
            "filename": ["r.wav", "r.wav"],
            "onset": [1.0, 4.0],
            "offset": [3.0, 6.0],
            "event_label": ["c", "a"],
            "confidence": [0.9, 0.4],
        }
    )
    fn, jobs = scoring_jobs(
        outputs,
        ("student", "teacher"),
        encoder,
        ["a", "c"],
        "mpauc",
        gt,
        {"r.wav": 10.0},
        _evaluation([1, 1, 1]),
        ["mpauc"],
        full=True,
        test=True,
    )
    result = fn(**jobs["teacher"])
    assert list(result.scores_raw["r"].columns[2:]) == ["a", "c"]  # b is not scored on this set
    assert not np.isnan(result.metrics["mpauc/c"]) and np.isnan(result.metrics["mpauc/a"])  # a: confidence 0.4
    assert result.metrics["mpauc"] == result.metrics["mpauc/c"]
