"""Small vectorised signal helpers of the sound banks: coloured noise, FFT-mask filters, envelopes, trimming.

The underscore names are internal to :mod:`sed.synth`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

TWO_PI = 2.0 * np.pi


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    if rms <= 1e-12:
        return x.astype(np.float32)
    return (x / rms).astype(np.float32)


def _nyq(f: float | np.ndarray, sample_rate: int) -> float | np.ndarray:
    """Keep frequencies below 0.45 * sample_rate (no aliasing at low sample rates)."""
    return np.minimum(f, 0.45 * sample_rate)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _mask(n: int, sample_rate: int, low: float | None, high: float | None, order: int, slope: float) -> np.ndarray:
    """Magnitude mask on the rfft grid: Butterworth-like high/low-pass corners and a 1/f^slope tilt."""
    f = np.fft.rfftfreq(n, 1.0 / sample_rate).astype(np.float32)
    mask = np.ones_like(f)
    if slope:
        mask *= np.exp((-slope / 2.0) * np.log(np.maximum(f, 20.0)))
    for corner, highpass in ((low, True), (high, False)):
        if corner is None:
            continue
        r = corner / np.maximum(f, 1e-3) if highpass else f / corner
        r2 = r * r
        p = r2
        for _ in range(order - 1):
            p = p * r2
        mask /= np.sqrt(1.0 + p)
    mask[0] = 0.0
    return mask


def _spectral_filter(
    x: np.ndarray,
    sample_rate: int,
    low: float | None = None,
    high: float | None = None,
    order: int = 2,
    slope: float = 0.0,
) -> np.ndarray:
    """Zero-phase filter by an FFT magnitude mask.

    ``low``/``high``: Butterworth-like high-pass/low-pass corner (Hz) of ``order``; ``slope``:
    power spectrum exponent (power ∝ f^-slope; 1 = pink, 2 = brown) above 20 Hz.
    """
    n = x.shape[-1]
    return np.fft.irfft(np.fft.rfft(x) * _mask(n, sample_rate, low, high, order, slope), n=n)


def _noise(
    rng: np.random.Generator,
    n: int,
    sample_rate: int,
    low: float | None = None,
    high: float | None = None,
    order: int = 2,
    slope: float = 0.0,
) -> np.ndarray:
    """Coloured Gaussian noise drawn directly in the frequency domain (one inverse FFT), float32."""
    m = n // 2 + 1
    spec = rng.standard_normal(2 * m, dtype=np.float32).view(np.complex64)
    high = None if high is None else float(_nyq(high, sample_rate))
    spec *= _mask(n, sample_rate, low, high, order, slope)
    return np.fft.irfft(spec, n=n)


def _smooth_random(rng: np.random.Generator, n: int, sample_rate: int, rate_hz: float) -> np.ndarray:
    """Random curve in [-1, 1] varying about ``rate_hz`` times a second (cosine-interpolated)."""
    n_points = max(2, int(np.ceil(n / sample_rate * rate_hz)) + 2)
    points = rng.uniform(-1.0, 1.0, n_points)
    ctl = max(4.0 * rate_hz, 50.0)  # evaluate the cosine interpolation at a control rate, then linear
    m = int(np.ceil(n / sample_rate * ctl)) + 2
    pos = np.arange(m) * (rate_hz / ctl)
    i = np.minimum(pos.astype(np.int64), n_points - 2)
    w = 0.5 - 0.5 * np.cos(np.pi * (pos - i))
    curve = points[i] * (1.0 - w) + points[i + 1] * w
    return np.interp(np.arange(n) * (ctl / sample_rate), np.arange(m), curve)


def _fades(n: int, sample_rate: int, fade_in: float, fade_out: float) -> np.ndarray:
    env = np.ones(n)
    a = min(n // 2, max(1, int(fade_in * sample_rate)))
    b = min(n // 2, max(1, int(fade_out * sample_rate)))
    env[:a] = np.sin(0.5 * np.pi * np.arange(a) / a) ** 2
    env[n - b :] = np.cos(0.5 * np.pi * np.arange(1, b + 1) / b) ** 2
    return env


def _harmonics(phase: np.ndarray, amps: Sequence[float], f_inst: np.ndarray | float, sample_rate: int) -> np.ndarray:
    """Sum of ``amps[k-1] * sin(k * phase)``, dropping harmonics above 0.45 * sample_rate.

    ``amps`` entries may be scalars or per-sample arrays. Uses the recurrence
    sin(kθ) = 2cos(θ)·sin((k-1)θ) − sin((k-2)θ): one multiply-add per harmonic instead of a sine.
    """
    f_max = float(np.max(f_inst))
    s_prev = np.zeros_like(phase)
    s_cur = np.sin(phase)
    c2 = 2.0 * np.cos(phase)
    out = np.zeros_like(phase)
    for k, a in enumerate(amps, start=1):
        if k * f_max >= 0.45 * sample_rate:
            break
        out += a * s_cur
        s_prev, s_cur = s_cur, c2 * s_cur - s_prev
    return out


def trim_silence(x: np.ndarray, sample_rate: int, threshold_db: float = -35.0, frame: float = 0.005) -> np.ndarray:
    """Drop leading/trailing frames quieter than ``threshold_db`` relative to the loudest frame.

    So an event's array (hence its annotation) starts and ends where the sound does.
    """
    hop = max(1, int(frame * sample_rate))
    n_frames = x.shape[0] // hop
    if n_frames < 2:
        return x
    energy = np.mean(np.square(x[: n_frames * hop].reshape(n_frames, hop), dtype=np.float64), axis=1)
    peak = energy.max()
    if peak <= 0:
        return x[:0]
    loud = np.flatnonzero(energy >= peak * 10.0 ** (threshold_db / 10.0))
    start = loud[0] * hop
    stop = x.shape[0] if loud[-1] == n_frames - 1 else (loud[-1] + 1) * hop
    return x[start:stop]
