from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sed.data.encoder import LabelEncoder

CLASSES = ["Alarm", "Blender", "Cat", "Dishes", "Dog", "Frying", "Running_water", "Speech", "Vacuum", "Shaver"]


def test_desed_defaults_give_156_frames():
    enc = LabelEncoder(CLASSES)
    assert enc.n_frames == 156
    assert enc.n_classes == 10
    assert enc.frame_hop_samples == 1024
    assert enc.frame_duration == pytest.approx(0.064)
    ts = enc.frame_timestamps()
    assert ts.shape == (157,) and ts[0] == 0.0 and ts[-1] == pytest.approx(156 * 0.064)
    assert enc.encode_strong([]).shape == (10, 156)
    assert enc.encode_strong([]).dtype == np.float32


def test_time_frame_conversion():
    enc = LabelEncoder(CLASSES)
    assert enc.time_to_frame(0.0) == 0
    assert enc.time_to_frame(0.0639) == 0
    assert enc.time_to_frame(0.064) == 1
    assert enc.time_to_frame(0.192) == 3  # 0.192 * 16000 / 1024 is 2.9999999999999996 in floats
    assert enc.time_to_frame(-1.0) == 0
    assert enc.time_to_frame(100.0) == 156
    assert enc.frame_to_time(10) == pytest.approx(0.64)
    other = LabelEncoder(["a"], sample_rate=22050, hop_length=441, clip_duration=5.0, time_pooling=2)
    assert other.n_frames == (110250 // 441) // 2 == 125
    assert other.frame_duration == pytest.approx(0.04)


def test_encode_strong_frames_and_inputs():
    enc = LabelEncoder(["a", "b"], clip_duration=1.0)  # 15 frames of 64 ms
    assert enc.n_frames == 15
    t = enc.encode_strong([(0.1, 0.3, "a"), (0.9, 5.0, "b")])
    assert np.flatnonzero(t[0]).tolist() == [1, 2, 3, 4]  # floor(0.1/0.064)=1 .. ceil(0.3/0.064)=5
    assert np.flatnonzero(t[1]).tolist() == list(range(14, 15))  # clipped at the clip end
    df = pd.DataFrame(
        {
            "filename": ["x"] * 3,
            "onset": [0.1, np.nan, 0.9],
            "offset": [0.3, np.nan, 5.0],
            "event_label": ["a", "", "b"],
        }
    )
    np.testing.assert_array_equal(enc.encode_strong(df), t)
    # A crop starting at 0.5 s moves events 0.5 s earlier; events left of the crop vanish.
    shifted = enc.encode_strong([(0.1, 0.3, "a"), (0.628, 0.7, "b")], offset=0.5)
    assert not shifted[0].any()
    assert np.flatnonzero(shifted[1]).tolist() == [2, 3]  # [0.128, 0.2] s
    exact = enc.encode_strong([(0.628, 0.692, "b")], offset=0.5)  # exactly frame 2: [0.128, 0.192]
    assert np.flatnonzero(exact[1]).tolist() == [2]
    with pytest.raises(ValueError, match="unknown label 'c'"):
        enc.encode_strong([(0.0, 1.0, "c")])


def test_encode_weak():
    enc = LabelEncoder(["a", "b", "c"])
    np.testing.assert_array_equal(enc.encode_weak(["c", "a"]), [1, 0, 1])
    np.testing.assert_array_equal(enc.encode_weak([]), [0, 0, 0])
    with pytest.raises(ValueError, match="unknown label"):
        enc.encode_weak(["z"])


def test_decode_strong_runs():
    enc = LabelEncoder(["a", "b"], clip_duration=1.0)
    b = np.zeros((2, 15), dtype=bool)
    b[0, 0:3] = True
    b[0, 5:6] = True
    b[1, 10:15] = True
    fd = enc.frame_duration
    assert enc.decode_strong(b) == [("a", 0.0, 3 * fd), ("a", 5 * fd, 6 * fd), ("b", 10 * fd, 15 * fd)]
    assert enc.decode_strong(b.astype(np.float32)) == enc.decode_strong(b)
    assert enc.decode_strong(np.zeros((2, 15))) == []
    with pytest.raises(ValueError, match="expects"):
        enc.decode_strong(np.zeros((3, 15)))


def _random_events(rng: np.random.Generator, enc: LabelEncoder) -> list[tuple[float, float, str]]:
    """Non-overlapping events per class, separated by more than two frames so they stay apart."""
    events = []
    fd, dur = enc.frame_duration, enc.clip_duration
    for label in enc.classes:
        t = rng.uniform(0, 1.0)
        while True:
            onset = t
            offset = onset + rng.uniform(0.001, 2.0)
            if offset > dur:
                if rng.random() < 0.5 and onset < dur - 0.01:
                    events.append((onset, dur, label))  # event running to the clip end
                break
            events.append((onset, offset, label))
            t = offset + 2 * fd + rng.uniform(0.001, 1.5)
    return events


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # DESED defaults
        {"sample_rate": 22050, "hop_length": 441, "clip_duration": 7.3, "time_pooling": 2},
        {"sample_rate": 44100, "hop_length": 512, "clip_duration": 4.0, "time_pooling": 1},
    ],
)
def test_encode_decode_round_trip_within_one_frame(kwargs):
    enc = LabelEncoder(CLASSES[:5], **kwargs)
    fd = enc.frame_duration
    rng = np.random.default_rng(0)
    n_checked = 0
    for _ in range(200):
        events = _random_events(rng, enc)
        decoded = enc.decode_strong(enc.encode_strong(events))
        by_class = lambda evs: sorted((lab, on, off) for on, off, lab in evs)  # noqa: E731
        expected = by_class(events)
        got = sorted(decoded)
        assert len(got) == len(expected)
        for (l1, on1, off1), (l2, on2, off2) in zip(expected, got):
            assert l1 == l2
            assert abs(on1 - on2) <= fd + 1e-9
            assert abs(off1 - off2) <= fd + 1e-9
            assert on2 <= on1 + 1e-9 and off2 >= min(off1, enc.n_frames * fd) - 1e-9  # decoded covers event
            n_checked += 1
    assert n_checked > 500


def test_state_dict_round_trip():
    enc = LabelEncoder(["x", "y"], sample_rate=8000, hop_length=128, clip_duration=2.0, time_pooling=2)
    state = enc.state_dict()
    assert state == {
        "classes": ["x", "y"],
        "sample_rate": 8000,
        "hop_length": 128,
        "clip_duration": 2.0,
        "time_pooling": 2,
    }
    again = LabelEncoder.from_dict(state)
    assert again == enc and again.n_frames == enc.n_frames
    assert hash(again) == hash(enc)


def test_bad_arguments():
    with pytest.raises(ValueError, match="duplicate"):
        LabelEncoder(["a", "a"])
    with pytest.raises(ValueError, match="at least one"):
        LabelEncoder([])
    with pytest.raises(ValueError, match="no output frame"):
        LabelEncoder(["a"], clip_duration=0.01)


def test_soft_targets_take_each_event_confidence_and_the_larger_where_they_overlap():
    enc = LabelEncoder(["a", "b"], sample_rate=10, hop_length=1, clip_duration=1.0, time_pooling=1)  # 0.1-s frames
    onset, offset = np.array([0.0, 0.2, 0.5]), np.array([0.4, 0.7, 0.6])
    target = enc.encode_arrays(onset, offset, np.array([0, 0, 1]), values=np.array([0.5, 0.75, 1.0]))
    np.testing.assert_allclose(target[0], [0.5, 0.5, 0.75, 0.75, 0.75, 0.75, 0.75, 0, 0, 0])
    np.testing.assert_allclose(target[1], [0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0])
    hard = enc.encode_arrays(onset, offset, np.array([0, 0, 1]))
    np.testing.assert_array_equal(hard > 0, target > 0)
    assert set(np.unique(hard)) == {0.0, 1.0}
