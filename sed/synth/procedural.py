"""Procedural event classes and backgrounds: :class:`ProceduralSoundBank`, the default sound bank.

Every instance is synthesised from the random generator it is given (vectorised numpy, no files),
so the dataset is reproducible from a seed and needs no download. The ten classes have clearly
different spectro-temporal signatures (tonal/noisy, low/high, stationary/impulsive/pulsed/swept),
with random pitch, duration and envelope per instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from sed.synth.dsp import (
    TWO_PI,
    _fades,
    _harmonics,
    _loguniform,
    _noise,
    _nyq,
    _smooth_random,
    _spectral_filter,
    _unit_rms,
    trim_silence,
)

# ----------------------------------------------------------------------------------------------
# procedural event classes
# ----------------------------------------------------------------------------------------------


def _alarm_beeps(rng: np.random.Generator, sr: int, dur: float) -> np.ndarray:
    """Repeated pure-tone beeps (1.8-3.5 kHz), sometimes alternating two tones."""
    n = int(dur * sr)
    t = np.arange(n) / sr
    f1 = float(_nyq(rng.uniform(1800.0, 3500.0), sr))
    f2 = f1 * rng.uniform(0.72, 0.9) if rng.random() < 0.4 else f1
    beep = rng.uniform(0.06, 0.2)
    period = beep * rng.uniform(1.4, 2.8)
    k = np.floor(t / period)
    pos = t - k * period
    ramp = 0.004
    env = np.clip(np.minimum(pos, beep - pos) / ramp, 0.0, 1.0)
    freq = np.where(k % 2 == 0, f1, f2)
    phase = TWO_PI * np.cumsum(freq) / sr
    x = _harmonics(phase, (1.0, 0.25 * rng.random(), 0.15 * rng.random()), max(f1, f2), sr)
    return x * env


def _siren_sweep(rng: np.random.Generator, sr: int, dur: float) -> np.ndarray:
    """Slow (wail) or fast (yelp) sinusoidal frequency sweep around 0.65-1.3 kHz, few harmonics."""
    n = int(dur * sr)
    t = np.arange(n) / sr
    fc = rng.uniform(650.0, 1300.0)
    dev = fc * rng.uniform(0.2, 0.45)
    fm = rng.uniform(2.5, 5.0) if rng.random() < 0.3 else rng.uniform(0.25, 1.2)
    f = fc + dev * np.sin(TWO_PI * fm * t + rng.uniform(0, TWO_PI))
    phase = TWO_PI * np.cumsum(f) / sr
    x = _harmonics(phase, (1.0, rng.uniform(0.2, 0.5), rng.uniform(0.05, 0.25)), fc + dev, sr)
    return x * _fades(n, sr, rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3))


def _harmonic_hum(rng: np.random.Generator, sr: int, dur: float) -> np.ndarray:
    """Long, stationary low-pitched harmonic drone (55-180 Hz fundamental), like a motor or appliance."""
    n = int(dur * sr)
    t = np.arange(n) / sr
    f0 = rng.uniform(55.0, 180.0)
    f = f0 * (1.0 + 0.004 * np.sin(TWO_PI * rng.uniform(3.0, 7.0) * t) + 0.01 * _smooth_random(rng, n, sr, 0.5))
    phase = TWO_PI * np.cumsum(f) / sr
    alpha = rng.uniform(0.7, 1.6)
    n_harm = 18
    amps = (np.arange(1, n_harm + 1) ** -alpha) * rng.uniform(0.4, 1.6, n_harm)
    x = _harmonics(phase, amps, f0 * 1.02, sr)
    x = _unit_rms(x) + 0.15 * _unit_rms(_noise(rng, n, sr, 80.0, 2000.0))
    am = 1.0 + 0.15 * np.sin(TWO_PI * rng.uniform(0.2, 2.0) * t)
    return x * am * _fades(n, sr, rng.uniform(0.1, 0.5), rng.uniform(0.1, 0.5))


def _broadband_burst(rng: np.random.Generator, sr: int, dur: float) -> np.ndarray:
    """Single impact-like noise burst: fast attack, exponential decay, random spectral tilt."""
    n = int(dur * sr)
    t = np.arange(n) / sr
    x = _noise(rng, n, sr, low=100.0, slope=rng.uniform(-0.5, 1.0))
    attack = rng.uniform(0.001, 0.008)
    env = np.minimum(t / attack, 1.0) * np.exp(-t / (dur * rng.uniform(0.15, 0.3)))
    return x * env


def _click_train(rng: np.random.Generator, sr: int, dur: float) -> np.ndarray:
    """Train of very short high-frequency clicks at 6-25 per second (typing, ticking, dishes)."""
    n = int(dur * sr)
    rate = rng.uniform(6.0, 25.0)
    gaps = (1.0 / rate) * rng.uniform(0.7, 1.3, int(dur * rate * 1.5) + 2)
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    idx = (times[times < dur - 0.01] * sr).astype(np.int64)
    impulses = np.zeros(n)
    impulses[idx] = rng.uniform(0.4, 1.0, idx.size) * rng.choice([-1.0, 1.0], idx.size)
    tau = rng.uniform(0.0005, 0.002)
    klen = max(4, int(6 * tau * sr))
    kernel = rng.standard_normal(klen) * np.exp(-np.arange(klen) / (tau * sr))
    x = np.convolve(impulses, kernel)[:n]
    fc = rng.uniform(2500.0, 5500.0)
    return _spectral_filter(x, sr, low=_nyq(fc * 0.6, sr) * 0.9, high=_nyq(fc * 1.6, sr), order=2)


def _chirp(rng: np.random.Generator, sr: int, dur: float) -> np.ndarray:
    """Bird-like series of fast high-pitched (2.5-7 kHz) frequency sweeps."""
    n = int(dur * sr)
    x = np.zeros(n)
    f_start = _loguniform(rng, 2500.0, 6500.0)
    ratio = rng.uniform(0.45, 0.8) if rng.random() < 0.6 else rng.uniform(1.2, 1.6)
    pos = 0
    while pos < n:
        length = int(rng.uniform(0.04, 0.15) * sr)
        length = min(length, n - pos)
        if length < int(0.01 * sr):
            break
        tt = np.arange(length) / length
        f0 = f_start * rng.uniform(0.9, 1.1)
        f = _nyq(f0 * ratio**tt, sr)
        phase = TWO_PI * np.cumsum(f) / sr
        x[pos : pos + length] = np.sin(phase) * np.sin(np.pi * tt) ** 2 * rng.uniform(0.5, 1.0)
        pos += length + int(rng.uniform(0.02, 0.12) * sr)
    return x


def _speech_like(rng: np.random.Generator, sr: int, dur: float) -> np.ndarray:
    """Voiced syllables: harmonic source (90-250 Hz, intonation) shaped by moving vowel formants."""
    n = int(dur * sr)
    t = np.arange(n) / sr
    f0 = rng.uniform(90.0, 250.0)
    f = f0 * (1.0 + 0.12 * _smooth_random(rng, n, sr, 3.0) - 0.1 * t / max(dur, 1e-3))
    phase = TWO_PI * np.cumsum(f) / sr
    # syllables: piecewise formant targets and a raised-cosine envelope each
    bounds = [0.0]
    while bounds[-1] < dur:
        bounds.append(bounds[-1] + rng.uniform(0.12, 0.32))
    bounds = np.minimum(np.asarray(bounds), dur)
    n_syl = len(bounds) - 1
    syl = np.minimum(np.searchsorted(bounds, t, side="right") - 1, n_syl - 1)
    frac = (t - bounds[syl]) / np.maximum(bounds[syl + 1] - bounds[syl], 1e-3)
    voiced = rng.random(n_syl) > 0.12
    voiced[0] = voiced[-1] = True
    env = np.sin(np.pi * np.clip(frac, 0.0, 1.0)) ** 0.7 * voiced[syl]
    # formant tracks at a 200 Hz control rate, smoothed, then per-harmonic gains
    ctl = 200
    m = int(dur * ctl) + 2
    tc = np.arange(m) / ctl
    syl_c = np.minimum(np.searchsorted(bounds, tc, side="right") - 1, n_syl - 1)
    formants = np.stack([rng.uniform(300, 850, n_syl), rng.uniform(850, 2400, n_syl), rng.uniform(2300, 3200, n_syl)])
    kernel = np.hanning(9) / np.hanning(9).sum()
    tracks = np.stack([np.convolve(np.pad(row[syl_c], 4, mode="edge"), kernel, mode="valid") for row in formants])
    f0_c = np.interp(tc, t, f)
    n_harm = int(min(4000.0, 0.45 * sr) / f0)
    k = np.arange(1, n_harm + 1)[:, None]
    hf = k * f0_c[None, :]  # [K, m]
    bw = np.array([80.0, 110.0, 170.0])[:, None, None]
    gain = np.array([1.0, 0.6, 0.3])[:, None, None]
    amp = np.sum(gain / (1.0 + ((hf[None] - tracks[:, None, :]) / bw) ** 2), axis=0) + 0.01  # [K, m]
    amp /= k**0.5
    pos = t * ctl
    i0 = np.minimum(pos.astype(np.int64), m - 2)
    w = pos - i0
    amps = (amp[h, i0] * (1.0 - w) + amp[h, i0 + 1] * w for h in range(n_harm))
    x = _unit_rms(_harmonics(phase, amps, f.max(), sr) * env)
    # occasional fricatives at syllable starts
    noise = None
    for s in np.flatnonzero(rng.random(n_syl) < 0.25):
        a, b = int(bounds[s] * sr), int(min(bounds[s] + rng.uniform(0.04, 0.1), dur) * sr)
        if b - a > 8:
            if noise is None:
                noise = _unit_rms(_noise(rng, n, sr, 3000.0, 7000.0))
            x[a:b] += 0.5 * noise[a:b] * np.hanning(b - a)
    return x


def _water_like(rng: np.random.Generator, sr: int, dur: float) -> np.ndarray:
    """Running water: dense random bubbles (rising damped tones) over fluttering band noise."""
    n = int(dur * sr)
    x = np.zeros(n)
    rate = rng.uniform(30.0, 120.0)
    n_bub = rng.poisson(rate * dur)
    starts = rng.integers(0, max(1, n - int(0.01 * sr)), n_bub)
    f0s = np.exp(rng.uniform(np.log(400.0), np.log(2500.0), n_bub))
    taus = rng.uniform(0.003, 0.015, n_bub)
    rises = rng.uniform(5.0, 40.0, n_bub)
    amps = rng.uniform(0.2, 1.0, n_bub)
    for s, f0, tau, rise, a in zip(starts, f0s, taus, rises, amps):
        length = min(int(5 * tau * sr), n - s)
        tt = np.arange(length) / sr
        fr = _nyq(f0 * (1.0 + rise * tt), sr)
        x[s : s + length] += a * np.sin(TWO_PI * np.cumsum(fr) / sr) * np.exp(-tt / tau)
    flutter = np.clip(1.0 + 0.6 * _smooth_random(rng, n, sr, rng.uniform(10.0, 25.0)), 0.1, None)
    bed = _unit_rms(_noise(rng, n, sr, 300.0, 4000.0)) * flutter
    x = _unit_rms(x) + rng.uniform(0.4, 0.9) * bed
    return x * _fades(n, sr, rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3))


_BELL_RATIOS = np.array([1.0, 2.0, 2.76, 3.0, 4.07, 5.4])


def _bell_ring(rng: np.random.Generator, sr: int, dur: float) -> np.ndarray:
    """Struck bell/chime: inharmonic partials (0.35-1.2 kHz fundamental) with exponential decays."""
    n = int(dur * sr)
    t = np.arange(n) / sr
    f0 = rng.uniform(350.0, 1200.0)
    freqs = f0 * _BELL_RATIOS * rng.uniform(0.99, 1.01, _BELL_RATIOS.size)
    amps = rng.uniform(0.3, 1.0, freqs.size) / _BELL_RATIOS**0.5
    tau0 = rng.uniform(0.3, 1.0)
    taus = tau0 / _BELL_RATIOS**0.7
    n_strikes = int(rng.integers(1, 4))
    strikes = np.sort(np.concatenate([[0.0], rng.uniform(0.2, max(0.25, dur * 0.7), n_strikes - 1)]))
    x = np.zeros(n)
    for st in strikes:
        s = int(st * sr)
        tt = t[: n - s]
        part = np.zeros(n - s)
        for fr, a, tau in zip(freqs, amps, taus):
            if fr < 0.45 * sr:
                part += a * np.sin(TWO_PI * fr * tt) * np.exp(-tt / tau)
        x[s:] += part * np.minimum(tt / 0.002, 1.0)
    return x * _fades(n, sr, 0.001, 0.05)


def _footsteps(rng: np.random.Generator, sr: int, dur: float) -> np.ndarray:
    """Regular steps about two per second: a low thud (60-400 Hz damped tone plus noise) and a heel click."""
    n = int(dur * sr)
    thuds = np.zeros(n)
    clicks = np.zeros(n)
    period = rng.uniform(0.4, 0.7)
    f_thud = rng.uniform(70.0, 160.0)
    tau = rng.uniform(0.015, 0.04)
    tau_click = rng.uniform(0.002, 0.006)
    length = int(6 * tau * sr)
    tt = np.arange(length) / sr
    pos = 0.0
    while pos < dur - 0.05:
        s = int(pos * sr)
        m = min(length, n - s)
        noise = rng.standard_normal(m)
        thud = (np.sin(TWO_PI * f_thud * rng.uniform(0.9, 1.1) * tt[:m]) + 0.5 * noise) * np.exp(-tt[:m] / tau)
        thuds[s : s + m] += thud * rng.uniform(0.6, 1.0)
        clicks[s : s + m] += rng.standard_normal(m) * np.exp(-tt[:m] / tau_click) * rng.uniform(0.5, 1.0)
        pos += period * rng.uniform(0.85, 1.15)
    thuds = _spectral_filter(thuds, sr, low=50.0, high=_nyq(500.0, sr), order=2)
    clicks = _spectral_filter(clicks, sr, low=800.0, high=_nyq(4000.0, sr), order=2)
    return _unit_rms(thuds) + rng.uniform(0.2, 0.4) * _unit_rms(clicks)


@dataclass(frozen=True)
class EventClass:
    """A procedural class: its synthesis function and duration range in seconds."""

    name: str
    synth: Callable[[np.random.Generator, int, float], np.ndarray]
    duration: tuple[float, float]


PROCEDURAL_CLASSES: dict[str, EventClass] = {
    c.name: c
    for c in (
        EventClass("alarm_beeps", _alarm_beeps, (0.6, 3.0)),
        EventClass("siren_sweep", _siren_sweep, (2.0, 8.0)),
        EventClass("harmonic_hum", _harmonic_hum, (3.0, 10.0)),
        EventClass("broadband_burst", _broadband_burst, (0.08, 0.6)),
        EventClass("click_train", _click_train, (0.3, 2.5)),
        EventClass("chirp", _chirp, (0.2, 1.5)),
        EventClass("speech_like", _speech_like, (0.8, 5.0)),
        EventClass("water_like", _water_like, (1.0, 6.0)),
        EventClass("bell_ring", _bell_ring, (0.8, 4.0)),
        EventClass("footsteps", _footsteps, (1.0, 5.0)),
    )
}

DEFAULT_CLASSES: list[str] = list(PROCEDURAL_CLASSES)


# ----------------------------------------------------------------------------------------------
# procedural backgrounds
# ----------------------------------------------------------------------------------------------


def _bg_colored(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Pink-to-brown noise (power ∝ f^-β, β in 0.8-2.2), sometimes low-passed."""
    high = _loguniform(rng, 1500.0, 0.45 * sr) if rng.random() < 0.5 else None
    return _noise(rng, n, sr, low=20.0, high=high, slope=rng.uniform(0.8, 2.2))


def _bg_mains_hum(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Electrical 50/60 Hz hum with harmonics over pink noise."""
    t = np.arange(n) / sr
    f0 = 50.0 if rng.random() < 0.5 else 60.0
    amps = rng.uniform(0.2, 1.0, 10) / np.arange(1, 11)
    hum = _harmonics(TWO_PI * f0 * t + rng.uniform(0, TWO_PI), amps, f0, sr)
    pink = _noise(rng, n, sr, low=20.0, slope=1.0)
    return _unit_rms(hum) + rng.uniform(0.3, 1.0) * _unit_rms(pink)


def _bg_babble(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Babble-like: several talkers of speech-shaped noise, each with its own syllabic modulation.

    Talkers are circular shifts (by at least 50 ms) of one noise: uncorrelated, one FFT.
    """
    voice = _unit_rms(_noise(rng, n, sr, low=rng.uniform(100, 200), high=rng.uniform(600, 1200), order=1))
    x = np.zeros(n)
    min_shift = min(int(0.05 * sr), max(1, n // 8))
    for _ in range(int(rng.integers(3, 7))):
        env = np.clip(_smooth_random(rng, n, sr, rng.uniform(3.0, 6.0)) + rng.uniform(0.0, 0.6), 0.0, None)
        x += np.roll(voice, int(rng.integers(min_shift, max(min_shift + 1, n - min_shift)))) * env
    return x


def _bg_wind(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Wind/ventilation: low-passed noise with slow gusts."""
    x = _noise(rng, n, sr, low=30.0, high=_loguniform(rng, 200.0, 1500.0), order=1)
    gust = 1.0 + rng.uniform(0.2, 0.7) * _smooth_random(rng, n, sr, rng.uniform(0.1, 0.5))
    return x * gust


_BACKGROUNDS = (_bg_colored, _bg_mains_hum, _bg_babble, _bg_wind)


class ProceduralSoundBank:
    """Synthesised event classes (see :data:`DEFAULT_CLASSES`) and synthesised backgrounds."""

    def __init__(self, classes: Sequence[str] | None = None) -> None:
        classes = list(DEFAULT_CLASSES if classes is None else classes)
        unknown = [c for c in classes if c not in PROCEDURAL_CLASSES]
        if unknown or not classes:
            raise ValueError(f"unknown procedural class(es) {unknown}; available: {DEFAULT_CLASSES}")
        self.classes = classes

    def describe(self) -> str:
        return "procedural"

    def event(self, label: str, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
        """One random instance of ``label``: trimmed, unit RMS, float32."""
        spec = PROCEDURAL_CLASSES[label]
        lo, hi = spec.duration
        dur = _loguniform(rng, lo, hi)
        x = trim_silence(spec.synth(rng, sample_rate, dur), sample_rate)
        return _unit_rms(x)

    def background(self, rng: np.random.Generator, n_samples: int, sample_rate: int) -> np.ndarray:
        """A background of ``n_samples``: one or two noise types mixed, with slow level drift."""
        kinds = rng.choice(len(_BACKGROUNDS), size=2, replace=False)
        x = _unit_rms(_BACKGROUNDS[kinds[0]](rng, n_samples, sample_rate))
        if rng.random() < 0.4:
            x = x + rng.uniform(0.2, 0.7) * _unit_rms(_BACKGROUNDS[kinds[1]](rng, n_samples, sample_rate))
        x = x * (1.0 + 0.2 * _smooth_random(rng, n_samples, sample_rate, 0.3))
        return _unit_rms(x)
