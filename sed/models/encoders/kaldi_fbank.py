"""Kaldi's log-mel filterbank, batched: the front-end of encoders pretrained on Kaldi features (BEATs).

It computes what ``torchaudio.compliance.kaldi.fbank`` computes with its default options (povey window,
pre-emphasis 0.97, DC offset removed per frame, frames snipped at the edges, power spectrum on a
power-of-two FFT, triangular filters on Kaldi's mel scale from 20 Hz to Nyquist, natural log floored at the
float32 epsilon, no dither, no energy), but for a whole batch ``[B, N]`` in one call instead of one waveform
at a time, on the device the audio is on. The filters are built once per (rate, size), in float32 with
Kaldi's formulas in torchaudio's order of operations, so they (and the filterbank) are the same numbers.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

_PREEMPHASIS = 0.97
_WINDOW_POWERS = {"povey": 0.85, "hanning": 1.0}  # Kaldi's povey window is the symmetric Hann window ** 0.85
_LOW_HZ = 20.0


def fbank_frames(
    num_samples: int, sample_rate: int, frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0
) -> int:
    """Number of frames Kaldi's framing (``snip_edges``) cuts from ``num_samples`` samples: 0 if shorter than
    one window."""
    window, shift = _window_and_shift(sample_rate, frame_length_ms, frame_shift_ms)
    return 0 if num_samples < window else 1 + (num_samples - window) // shift


def kaldi_fbank(
    audio: Tensor,
    sample_rate: int = 16000,
    n_mels: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    window_type: str = "povey",
) -> Tensor:
    """Log-mel filterbank ``[B, T, n_mels]`` of ``audio [B, N]`` (float32, in the waveform's own scale),
    ``T = fbank_frames(N, ...)``. ``window_type``: ``povey`` (Kaldi's default, BEATs) or ``hanning`` (AST).
    Raises ``ValueError`` when the audio is shorter than one window."""
    if window_type not in _WINDOW_POWERS:
        raise ValueError(f"kaldi_fbank window_type must be one of {sorted(_WINDOW_POWERS)}, got {window_type!r}")
    window, shift = _window_and_shift(sample_rate, frame_length_ms, frame_shift_ms)
    if audio.dim() != 2:
        raise ValueError(f"kaldi_fbank expects audio [batch, samples], got shape {tuple(audio.shape)}")
    if audio.shape[-1] < window:
        raise ValueError(
            f"audio of {audio.shape[-1]} samples is shorter than one {frame_length_ms:g}-ms window "
            f"({window} samples at {sample_rate} Hz)"
        )
    frames = audio.float().unfold(-1, window, shift)  # [B, T, window]
    frames = frames - frames.mean(-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], -1)  # Kaldi repeats the first sample
    frames = frames - _PREEMPHASIS * previous
    frames = frames * torch.hann_window(window, periodic=False, dtype=torch.float32, device=audio.device).pow(
        _WINDOW_POWERS[window_type]
    )
    n_fft = 1 << (window - 1).bit_length()
    power = torch.fft.rfft(F.pad(frames, (0, n_fft - window))).abs().pow(2)  # [B, T, n_fft // 2 + 1]
    filters = _mel_filters(sample_rate, n_fft, n_mels).to(audio.device)
    mel = power @ filters.T
    return mel.clamp_min(torch.finfo(torch.float32).eps).log()


def _window_and_shift(sample_rate: int, frame_length_ms: float, frame_shift_ms: float) -> tuple[int, int]:
    return int(sample_rate * frame_length_ms / 1000), int(sample_rate * frame_shift_ms / 1000)


def _kaldi_mel(hz: float) -> float:
    return 1127.0 * math.log(1.0 + hz / 700.0)


@functools.lru_cache(maxsize=8)
def _mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> Tensor:
    """``[n_mels, n_fft // 2 + 1]`` triangles, equally spaced on Kaldi's mel scale between 20 Hz and Nyquist;
    the Nyquist bin gets no weight (Kaldi's filters cover bins ``0 .. n_fft/2 - 1``)."""
    low, high = _kaldi_mel(_LOW_HZ), _kaldi_mel(sample_rate / 2)
    step = (high - low) / (n_mels + 1)
    k = torch.arange(n_mels, dtype=torch.float32)[:, None]
    left, centre, right = low + k * step, low + (k + 1) * step, low + (k + 2) * step
    hz = torch.arange(n_fft // 2, dtype=torch.float32) * (sample_rate / n_fft)
    bins = 1127.0 * (1.0 + hz / 700.0).log()
    rising, falling = (bins - left) / (centre - left), (right - bins) / (right - centre)
    return F.pad(torch.minimum(rising, falling).clamp_min(0.0), (0, 1))
