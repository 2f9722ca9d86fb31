from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.ndimage
import torch
from sed_scores_eval.base_modules.detection import scores_to_event_list
from sed_scores_eval.base_modules.scores import (
    create_score_dataframe,
    validate_score_dataframe,
)

from sed.evaluation.postprocess import (
    audio_id,
    batch_to_scores,
    detections_at_thresholds,
    detections_from_scores,
    median_filter,
    scores_dataframe,
)

CLASSES = ["alarm", "dog", "speech", "water", "cat"]


def _reference_median(x: np.ndarray, windows) -> np.ndarray:
    """scipy.ndimage.median_filter, one class row at a time."""
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        w = windows if np.isscalar(windows) else windows[idx[-1]]
        out[idx] = scipy.ndimage.median_filter(x[idx], size=int(w), mode="nearest")
    return out


@pytest.mark.parametrize("window", [1, 2, 3, 5, 8, [1, 2, 3, 4, 7], [7, 7, 1, 7, 31]])
def test_median_filter_matches_scipy_per_row(window):
    rng = np.random.default_rng(0)
    x = rng.random((len(CLASSES), 40)).astype(np.float32)
    np.testing.assert_array_equal(median_filter(x, window), _reference_median(x, window))
    batch = rng.random((3, len(CLASSES), 40))
    np.testing.assert_array_equal(median_filter(batch, window), _reference_median(batch, window))


@pytest.mark.parametrize("window", [4, [1, 3, 6, 2, 9]])
def test_median_filter_torch_same_values_type_and_device(window):
    x = torch.rand(2, len(CLASSES), 33, dtype=torch.float64)
    out = median_filter(x, window)
    assert isinstance(out, torch.Tensor) and out.dtype == x.dtype and out.device == x.device and out.shape == x.shape
    np.testing.assert_array_equal(out.numpy(), _reference_median(x.numpy(), window))


def test_median_filter_window_one_is_identity_and_input_untouched():
    x = np.random.default_rng(1).random((len(CLASSES), 20))
    before = x.copy()
    out = median_filter(x, [1] * len(CLASSES))
    np.testing.assert_array_equal(out, x)
    median_filter(x, 5)
    np.testing.assert_array_equal(x, before)


def test_median_filter_rejects_bad_windows():
    x = np.zeros((len(CLASSES), 10))
    with pytest.raises(ValueError, match="5 classes"):
        median_filter(x, [3, 3])
    with pytest.raises(ValueError, match=">= 1"):
        median_filter(x, 0)
    with pytest.raises(ValueError, match=r"\[C, T\]"):
        median_filter(np.zeros(10), 3)


def test_scores_dataframe_is_sed_scores_eval_format():
    probs = np.random.default_rng(2).random((len(CLASSES), 6))
    ts = np.arange(7) * 0.5
    df = scores_dataframe(probs, ts, CLASSES)
    timestamps, classes = validate_score_dataframe(df)
    assert classes == CLASSES
    np.testing.assert_allclose(timestamps, ts)
    pd.testing.assert_frame_equal(df, create_score_dataframe(probs.T, ts, CLASSES))


def test_batch_to_scores_keys_and_cropping_to_duration():
    probs = np.random.default_rng(3).random((2, len(CLASSES), 10))
    ts = np.arange(11) * 0.2
    scores = batch_to_scores(probs, ["a.wav", "b.flac"], ts, CLASSES, durations={"a.wav": 2.0, "b": 1.1})
    assert sorted(scores) == ["a", "b"]
    assert len(scores["a"]) == 10
    b = scores["b"]
    validate_score_dataframe(b)
    assert len(b) == 6 and b["offset"].iloc[-1] == pytest.approx(1.1)  # frame 1.0-1.2 cut at 1.1
    np.testing.assert_allclose(b[CLASSES].to_numpy(), probs[1, :, :6].T)
    assert audio_id("dir.x/clip.1.wav") == "dir.x/clip.1"


def test_audio_id_keeps_dots_of_desed_names():
    name = "Y00pbt6aJV8_30.000_40.000"
    assert audio_id(name + ".wav") == name
    assert audio_id(name) == name  # an id maps to itself
    assert audio_id("clip.FLAC") == "clip"


def _reference_detections(scores: dict, thresholds: dict, ext=".wav") -> pd.DataFrame:
    """Frame-by-frame walk: the obvious way to turn scores into events."""
    rows = []
    for key, df in scores.items():
        for c in CLASSES:
            start = None
            values = df[c].to_numpy()
            for i, v in enumerate(values):
                active = v > thresholds[c]
                if active and start is None:
                    start = i
                if not active and start is not None:
                    rows.append((key + ext, df["onset"].iloc[start], df["offset"].iloc[i - 1], c))
                    start = None
            if start is not None:
                rows.append((key + ext, df["onset"].iloc[start], df["offset"].iloc[len(values) - 1], c))
    out = pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label"])
    return out.sort_values(["filename", "onset", "event_label"], kind="stable").reset_index(drop=True)


def _random_scores(seed=4, n_clips=6, n_frames=50):
    rng = np.random.default_rng(seed)
    ts = np.arange(n_frames + 1) * 0.128
    scores = {}
    for n in range(n_clips):
        # Smooth-ish random curves so that events of several frames occur, plus edge-active frames.
        raw = scipy.ndimage.uniform_filter1d(rng.random((n_frames, len(CLASSES))), 5, axis=0)
        raw[0, 0] = raw[-1, 1] = 0.99
        scores[f"clip{n}"] = create_score_dataframe(raw, ts, CLASSES)
    return scores


@pytest.mark.parametrize("threshold", [0.5, {"alarm": 0.45, "dog": 0.5, "speech": 0.55, "water": 0.6, "cat": 0.52}])
def test_detections_from_scores_matches_reference(threshold):
    scores = _random_scores()
    det = detections_from_scores(scores, threshold)
    thr = threshold if isinstance(threshold, dict) else {c: threshold for c in CLASSES}
    ref = _reference_detections(scores, thr)
    assert len(det) > 10
    pd.testing.assert_frame_equal(det, ref, check_dtype=False)
    # ... and sed_scores_eval's own decoder agrees, clip by clip.
    by_clip = scores_to_event_list(
        scores, thresholds=np.array([thr[c] for c in CLASSES]) if isinstance(threshold, dict) else threshold
    )
    for key, events in by_clip.items():
        mine = det[det["filename"] == key + ".wav"]
        assert sorted(zip(mine["onset"], mine["offset"], mine["event_label"])) == sorted(events)


def test_detections_filenames_thresholds_and_empty():
    scores = _random_scores(n_clips=2)
    det = detections_from_scores(scores, 0.5, filenames={"clip0": "clip0.flac"})
    assert set(det["filename"]) == {"clip0.flac", "clip1.wav"}
    many = detections_at_thresholds(scores, [0.3, 0.5])
    pd.testing.assert_frame_equal(many[0.5], detections_from_scores(scores, 0.5))
    assert len(many[0.3]) >= 1
    empty = detections_from_scores(scores, 1.0)
    assert list(empty.columns) == ["filename", "onset", "offset", "event_label"] and len(empty) == 0
    with pytest.raises(ValueError, match="lacks classes"):
        detections_from_scores(scores, {"alarm": 0.5})
