"""Sliding windows over recordings longer than the training clip, and merging their frame probabilities.

A model trained on clips of ``window_samples`` sees a longer recording as overlapping windows of that length,
``hop_frames`` output frames apart (the last one zero-padded). Every window's frame probabilities land on one
common frame grid; where windows overlap they are averaged. When the model resamples its input
(``features.input_sample_rate``), windows are cut from audio at the input rate: a frame is then a fractional
number of input samples (e.g. 1024 samples at 16 kHz = 2822.4 at 44.1 kHz), kept exact as a ``Fraction``, and
window starts are rounded to the nearest sample (at most half a sample off the frame grid, never accumulating). ``sed.inference.detector.Detector`` and the evaluation step of
``sed.training.module.SEDModule`` both go through :class:`WindowGrid`, so a file gives the same numbers in both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch


@dataclass(frozen=True)
class WindowGrid:
    """Window geometry on the label encoder's frame grid.

    Args:
        window_samples: samples per window (the training clip length at the model's rate).
        window_frames: output frames per window (``LabelEncoder.n_frames``).
        frame_samples: audio samples per output frame (``LabelEncoder.frame_hop_samples``), a ``Fraction`` when the
            audio is at another rate than the model's.
        hop_frames: output frames between window starts, in ``[1, window_frames]``.
    """

    window_samples: int
    window_frames: int
    frame_samples: int | Fraction
    hop_frames: int

    def __post_init__(self) -> None:
        if min(self.window_samples, self.window_frames, self.frame_samples) < 1:
            raise ValueError(f"window geometry must be positive: {self}")
        if not 1 <= self.hop_frames <= self.window_frames:
            raise ValueError(f"hop_frames must lie in [1, {self.window_frames}], got {self.hop_frames}")

    @classmethod
    def from_encoder(cls, encoder, hop_frames: int | None = None, input_rate: int | None = None) -> "WindowGrid":
        """Windows of the encoder's clip length; ``hop_frames`` defaults to half a window. ``input_rate``: the rate of
        the audio windowed when it is not the encoder's (a model that resamples its input)."""
        from sed.features.frontend import input_clip_samples

        frames = int(encoder.n_frames)
        hop = max(frames // 2, 1) if hop_frames is None else int(hop_frames)
        if input_rate is None or int(input_rate) == int(encoder.sample_rate):
            return cls(int(encoder.n_samples), frames, int(encoder.frame_hop_samples), hop)
        n_in = input_clip_samples(encoder.clip_duration, int(input_rate), int(encoder.sample_rate))
        return cls(
            n_in, frames, Fraction(int(encoder.frame_hop_samples) * int(input_rate), int(encoder.sample_rate)), hop
        )

    @property
    def hop_samples(self) -> int | Fraction:
        """Samples between window starts (a ``Fraction`` when a frame is not a whole number of samples)."""
        return self.hop_frames * self.frame_samples

    def starts(self, n_samples: int) -> np.ndarray:
        """Start sample of every window for a recording of ``n_samples``: one window when it fits."""
        extra = max(int(n_samples) - self.window_samples, 0)
        count = 1 + math.ceil(Fraction(extra) / self.hop_samples)
        if isinstance(self.hop_samples, int):
            return np.arange(count, dtype=np.int64) * self.hop_samples
        return np.array([round(k * self.hop_samples) for k in range(count)], dtype=np.int64)

    def total_frames(self, n_samples: int) -> int:
        """Frames covered by all windows of a recording of ``n_samples``."""
        return (len(self.starts(n_samples)) - 1) * self.hop_frames + self.window_frames

    def n_frames(self, n_samples: int) -> int:
        """Frames that start before the end of the recording (a last partial frame included)."""
        return min(self.total_frames(n_samples), math.ceil(Fraction(int(n_samples)) / self.frame_samples))

    def windows(self, audio: torch.Tensor) -> torch.Tensor:
        """``[samples]`` -> ``[n_windows, window_samples]``, zero-padded at the end (a view of the padded audio)."""
        if audio.ndim != 1:
            raise ValueError(f"windows expects [samples], got shape {tuple(audio.shape)}")
        n = int(audio.shape[0])
        if n == 0:
            raise ValueError("empty audio: no samples to analyse")
        starts = self.starts(n)
        padded_len = int(starts[-1]) + self.window_samples
        padded = torch.nn.functional.pad(audio, (0, padded_len - n)) if padded_len > n else audio
        if isinstance(self.hop_samples, int):
            return padded.unfold(0, self.window_samples, self.hop_samples)
        return torch.stack([padded[int(a) : int(a) + self.window_samples] for a in starts])

    def merge(self, probs: torch.Tensor, n_frames: int) -> torch.Tensor:
        """Average the windows' frame probabilities ``[n_windows, C, >= window_frames]`` (in window order) on the
        common grid; return the first ``n_frames`` frames, ``[C, n_frames]`` float32 on the CPU."""
        if probs.ndim != 3 or probs.shape[-1] < self.window_frames:
            raise ValueError(
                f"merge expects [windows, C, >= {self.window_frames} frames], got shape {tuple(probs.shape)}"
            )
        n_windows = probs.shape[0]
        total = (n_windows - 1) * self.hop_frames + self.window_frames
        if not 0 < n_frames <= total:
            raise ValueError(f"n_frames must lie in [1, {total}] for {n_windows} window(s), got {n_frames}")
        probs = probs[..., : self.window_frames].detach().float().cpu().double()
        sums = torch.zeros(probs.shape[1], total, dtype=torch.float64)
        counts = torch.zeros(total, dtype=torch.float64)
        for k in range(n_windows):
            f0 = k * self.hop_frames
            sums[:, f0 : f0 + self.window_frames] += probs[k]
            counts[f0 : f0 + self.window_frames] += 1.0
        return (sums[:, :n_frames] / counts[:n_frames]).to(torch.float32)
