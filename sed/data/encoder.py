"""Label encoder: the single owner of the time <-> frame mapping of the network output.

One output frame covers ``hop_length * time_pooling`` samples, i.e. ``frame_duration`` seconds;
frame ``f`` spans ``[f * frame_duration, (f + 1) * frame_duration)``. An event is encoded on
every frame it touches (onset floored, offset ceiled), so decoding gives back onset and offset
to within one frame.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

_EPS = 1e-9  # absorbs float noise such as 0.192 * 16000 / 1024 = 2.9999999999999996


class LabelEncoder:
    """Encode strong / weak labels to ``[C, T]`` / ``[C]`` targets and decode frames to events."""

    def __init__(
        self,
        classes: Sequence[str],
        sample_rate: int = 16000,
        hop_length: int = 256,
        clip_duration: float = 10.0,
        time_pooling: int = 4,
    ) -> None:
        classes = [str(c) for c in classes]
        if not classes:
            raise ValueError("LabelEncoder needs at least one class")
        if len(set(classes)) != len(classes):
            dup = sorted({c for c in classes if classes.count(c) > 1})
            raise ValueError(f"duplicate class names: {dup}")
        if sample_rate <= 0 or hop_length <= 0 or time_pooling <= 0 or clip_duration <= 0:
            raise ValueError("sample_rate, hop_length, time_pooling and clip_duration must be positive")
        self.classes = classes
        self.sample_rate = int(sample_rate)
        self.hop_length = int(hop_length)
        self.clip_duration = float(clip_duration)
        self.time_pooling = int(time_pooling)
        self._index = {c: i for i, c in enumerate(classes)}
        self.n_samples = int(round(self.clip_duration * self.sample_rate))
        self.n_frames = (self.n_samples // self.hop_length) // self.time_pooling
        if self.n_frames < 1:
            raise ValueError(
                f"clip_duration={clip_duration}s gives no output frame with hop_length={hop_length} "
                f"and time_pooling={time_pooling} at {sample_rate} Hz"
            )

    # --- geometry ---------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def frame_hop_samples(self) -> int:
        """Audio samples per output frame."""
        return self.hop_length * self.time_pooling

    @property
    def frame_duration(self) -> float:
        """Seconds per output frame."""
        return self.frame_hop_samples / self.sample_rate

    def class_index(self, label: str) -> int:
        try:
            return self._index[label]
        except KeyError:
            raise ValueError(f"unknown label {label!r}; known: {self.classes}") from None

    def _frames(self, t: np.ndarray) -> np.ndarray:
        return np.asarray(t, dtype=np.float64) * self.sample_rate / self.frame_hop_samples

    def time_to_frame(self, t: float) -> int:
        """Index of the frame containing time ``t`` (floor), clipped to ``[0, n_frames]``."""
        f = math.floor(float(self._frames(t)) + _EPS)
        return int(min(max(f, 0), self.n_frames))

    def frame_to_time(self, f: float) -> float:
        """Start time (seconds) of frame ``f``."""
        return float(f) * self.frame_duration

    def frame_timestamps(self, n_frames: int | None = None) -> np.ndarray:
        """Frame boundaries in seconds, length ``n_frames + 1`` (for sed_scores_eval); ``n_frames`` defaults to a
        clip's, more for a longer recording on the same grid."""
        n = self.n_frames if n_frames is None else int(n_frames)
        return np.arange(n + 1, dtype=np.float64) * self.frame_duration

    # --- encoding ---------------------------------------------------------------------
    def _event_arrays(
        self, events: pd.DataFrame | Iterable[tuple[float, float, str]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if isinstance(events, pd.DataFrame):
            onset = events["onset"].to_numpy(dtype=np.float64)
            offset = events["offset"].to_numpy(dtype=np.float64)
            labels = list(events["event_label"])
        else:
            rows = list(events)
            onset = np.array([r[0] for r in rows], dtype=np.float64)
            offset = np.array([r[1] for r in rows], dtype=np.float64)
            labels = [r[2] for r in rows]
        valid = ~(np.isnan(onset) | np.isnan(offset))
        idx = np.array([self.class_index(label) for label, v in zip(labels, valid) if v], dtype=np.int64)
        return onset[valid], offset[valid], idx

    def encode_arrays(
        self,
        onset: np.ndarray,
        offset: np.ndarray,
        class_idx: np.ndarray,
        shift: float = 0.0,
        n_frames: int | None = None,
        values: np.ndarray | None = None,
    ) -> np.ndarray:
        """Vectorised core of :meth:`encode_strong` (times in seconds, class indices); ``n_frames`` defaults to
        a clip's (a whole recording longer than a clip has more). ``values`` (one per event, in [0, 1]: annotator
        confidences) make soft targets: an event's frames take its value, the largest where events of one class
        overlap; without them every event's frames are 1."""
        n = self.n_frames if n_frames is None else int(n_frames)
        target = np.zeros((self.n_classes, n), dtype=np.float32)
        if len(onset) == 0:
            return target
        start = np.floor(self._frames(np.asarray(onset) - shift) + _EPS)
        stop = np.ceil(self._frames(np.asarray(offset) - shift) - _EPS)
        start = np.clip(start, 0, n).astype(np.int64)
        stop = np.clip(stop, 0, n).astype(np.int64)
        if values is None:
            for c, a, b in zip(class_idx, start, stop):
                if b > a:
                    target[c, a:b] = 1.0
            return target
        for c, a, b, v in zip(class_idx, start, stop, np.asarray(values, dtype=np.float32)):
            if b > a:
                np.maximum(target[c, a:b], v, out=target[c, a:b])
        return target

    def encode_strong(
        self, events: pd.DataFrame | Iterable[tuple[float, float, str]], offset: float = 0.0
    ) -> np.ndarray:
        """Events -> ``[C, T]`` float32 target.

        ``events`` is a strong DataFrame (``onset, offset, event_label``) or ``(onset, offset,
        label)`` tuples; NaN rows (clips without events) are ignored. ``offset`` is the start
        (seconds) of the audio crop: events are shifted by ``-offset`` and clipped to the clip.
        """
        on, off, idx = self._event_arrays(events)
        return self.encode_arrays(on, off, idx, shift=offset)

    def encode_weak(self, labels: Iterable[str]) -> np.ndarray:
        """Labels -> ``[C]`` float32 multi-hot vector."""
        target = np.zeros(self.n_classes, dtype=np.float32)
        for label in labels:
            target[self.class_index(label)] = 1.0
        return target

    # --- decoding ---------------------------------------------------------------------
    def decode_strong(self, binary: np.ndarray) -> list[tuple[str, float, float]]:
        """``[C, T]`` thresholded frames (bool or 0/1; > 0.5 is active) -> ``(label, onset, offset)``.

        Each run of active frames becomes one event, sorted by onset then class order.
        """
        b = np.asarray(binary)
        if b.ndim != 2 or b.shape[0] != self.n_classes:
            raise ValueError(f"decode_strong expects [{self.n_classes}, T], got shape {tuple(b.shape)}")
        active = b > 0.5
        padded = np.zeros((b.shape[0], b.shape[1] + 2), dtype=np.int8)
        padded[:, 1:-1] = active
        change = np.diff(padded, axis=1)
        cls_on, f_on = np.nonzero(change == 1)
        _, f_off = np.nonzero(change == -1)  # same row-major order: pairs with the onsets
        fd = self.frame_duration
        events = [(self.classes[c], float(a) * fd, float(e) * fd) for c, a, e in zip(cls_on, f_on, f_off)]
        events.sort(key=lambda ev: (ev[1], self._index[ev[0]]))
        return events

    # --- (de)serialisation ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "sample_rate": self.sample_rate,
            "hop_length": self.hop_length,
            "clip_duration": self.clip_duration,
            "time_pooling": self.time_pooling,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "LabelEncoder":
        return cls(**state)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelEncoder) and self.state_dict() == other.state_dict()

    def __hash__(self) -> int:
        return hash(tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in self.state_dict().items()))

    def __repr__(self) -> str:
        return (
            f"LabelEncoder({self.n_classes} classes, {self.sample_rate} Hz, hop {self.hop_length}, "
            f"{self.clip_duration} s, pooling {self.time_pooling} -> {self.n_frames} frames)"
        )
