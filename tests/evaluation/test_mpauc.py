"""mpAUC of soft-labelled long recordings: hand-computed values and sed_scores_eval called directly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sed.evaluation.metrics.mpauc import segment_metrics, segment_scores
from sed.evaluation.postprocess import scores_dataframe


def _frames(segment_values: np.ndarray, per_segment: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame probabilities ``[C, T]`` holding each 1-s segment's value on its ``per_segment`` frames."""
    probs = np.repeat(np.asarray(segment_values, dtype=np.float64), per_segment, axis=-1)
    return probs, np.arange(probs.shape[-1] + 1) / per_segment


def test_hand_computed_partial_auroc():
    # One 12-s recording, class a positive in segments 0 and 5 (ranked 1st and 3rd among 12), negatives in the
    # other 10: ROC (0, .5) -> (.1, .5) -> (.1, 1). Partial area up to FPR 0.1: 0.5 * 0.1, over 0.1: 0.5. Whole
    # area: 1 - 0.5 * 0.1 = 0.95. Class c has no event above confidence 0.5: left out (NaN), not in the mean.
    a = [0.9, 0.8, 0.1, 0.15, 0.2, 0.7, 0.25, 0.3, 0.35, 0.4, 0.45, 0.05]
    probs, ts = _frames(np.array([a, np.linspace(0, 1, 12)]), per_segment=2)
    scores = {"rec": scores_dataframe(probs, ts, ["a", "c"])}
    gt = pd.DataFrame(
        {
            "filename": ["rec.wav"] * 4,
            "onset": [0.0, 5.0, 8.0, 2.0],
            "offset": [1.0, 6.0, 9.0, 3.0],
            "event_label": ["a", "a", "a", "c"],
            "confidence": [0.8, 0.6, 0.5, 0.4],  # 0.5 is not above the threshold: segment 8 is a negative
        }
    )
    got = segment_metrics(scores, gt, {"rec.wav": 12.0}, ["a", "c"])
    assert got["mpauc"] == pytest.approx(0.5) and got["mpauc/a"] == pytest.approx(0.5)
    assert got["mauc"] == pytest.approx(0.95)
    assert np.isnan(got["mpauc/c"])
    # Best segment F1 of a: threshold between 0.7 and 0.45 catches both positives and one negative: 2 / (2 + 0.5).
    assert got["segment_f1_best"] == pytest.approx(0.8)


def test_equals_sed_scores_eval_on_segment_means():
    from sed_scores_eval import segment_based

    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    durations = {"r1.wav": 7.5, "r2.wav": 9.0}
    frames = {k: rng.random((3, int(d * 4))) for k, d in durations.items()}  # 0.25-s frames
    scores = {k[:-4]: scores_dataframe(p, np.arange(p.shape[1] + 1) / 4, classes) for k, p in frames.items()}
    gt = pd.DataFrame(
        {
            "filename": ["r1.wav", "r1.wav", "r2.wav", "r2.wav", "r2.wav", "r2.wav"],
            "onset": [0.3, 4.0, 1.0, 2.5, 6.2, 0.0],
            "offset": [2.2, 6.9, 2.0, 4.0, 8.8, 9.0],
            "event_label": ["a", "b", "a", "c", "b", "c"],
            "confidence": [1.0, 0.75, 0.9, 0.6, 1.0, 0.25],
        }
    )
    got = segment_metrics(scores, gt, durations, classes)

    # Reference: 1-s segment means written out here (the last segment of r1 is 0.5 s long), then sed_scores_eval.
    ref_scores = {}
    for k, p in frames.items():
        n = p.shape[1]
        starts = np.arange(0, n, 4)
        means = np.stack([p[:, s : s + 4].mean(axis=1) for s in starts], axis=1)
        bounds = np.append(starts / 4, durations[k])
        ref_scores[k[:-4]] = scores_dataframe(means, bounds, classes)
    ref_gt = {"r1": [(0.3, 2.2, "a"), (4.0, 6.9, "b")], "r2": [(1.0, 2.0, "a"), (2.5, 4.0, "c"), (6.2, 8.8, "b")]}
    ref_dur = {k[:-4]: d for k, d in durations.items()}
    partial = segment_based.auroc(ref_scores, ref_gt, ref_dur, segment_length=1.0, max_fpr=0.1)[0]
    whole = segment_based.auroc(ref_scores, ref_gt, ref_dur, segment_length=1.0)[0]
    best = segment_based.best_fscore(ref_scores, ref_gt, ref_dur, segment_length=1.0)[0]
    assert got["mpauc"] == pytest.approx(partial["mean"])
    assert got["mauc"] == pytest.approx(whole["mean"])
    assert got["segment_f1_best"] == pytest.approx(best["macro_average"])
    for c in classes:
        assert got[f"mpauc/{c}"] == pytest.approx(partial[c])


def test_segment_scores_weight_frames_by_their_overlap():
    # 0.64-s frames over a 2-s recording: segment [0, 1) holds frame 0 whole and 0.36 s of frame 1.
    probs = np.array([[1.0, 0.0, 0.5, 0.25]])
    ts = np.array([0.0, 0.64, 1.28, 1.92, 2.0])
    seg = segment_scores(scores_dataframe(probs, ts, ["a"]), duration=2.0)
    assert seg["onset"].tolist() == [0.0, 1.0] and seg["offset"].tolist() == [1.0, 2.0]
    assert seg["a"].iloc[0] == pytest.approx(0.64 / 1.0)
    assert seg["a"].iloc[1] == pytest.approx((0.0 * 0.28 + 0.5 * 0.64 + 0.25 * 0.08) / 1.0)
