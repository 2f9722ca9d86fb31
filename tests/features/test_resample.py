"""Resample: accuracy on sines against the analytic signal, gradients, lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sed.features.resample import Resample, fft_resample

# Bounds on |resampled - analytic sine| (unit amplitude), ignoring the first and last 2 % of the
# output (edge effects: zero padding for sinc, periodic wrap for FFT):
# * sinc (Hann window, 6 zero crossings, rolloff 0.99), tones up to 3 kHz with a 16 kHz side:
#   measured <= 1.3e-3 -> bound 2e-3 (tones above ~0.8 x Nyquist fall in the rolloff band and
#   are attenuated by more, which is intended).
# * fft, tone with an integer number of periods in the clip (periodic, band-limited): exact up to
#   float64 rounding, measured ~5e-12 -> bound 1e-9.
# * fft, non-integer number of periods (not periodic): ringing decays away from the ends;
#   measured <= 6e-4 beyond 2 % -> bound 1.5e-3.
SINC_BOUND = 2e-3
FFT_PERIODIC_BOUND = 1e-9
FFT_APERIODIC_BOUND = 1.5e-3

RATE_PAIRS = [(44100, 16000), (16000, 44100), (22050, 16000), (48000, 16000)]


def _sine(freq: float, rate: int, n: int, phase: float = 0.3) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(n) / rate + phase)


def _max_error(method: str, orig: int, new: int, freq: float) -> float:
    n = orig // 2  # 0.5 s
    x = torch.tensor(_sine(freq, orig, n), dtype=torch.float64)
    y = Resample(orig, new, method)(x).numpy()
    assert len(y) == Resample(orig, new).output_length(n) == int(np.ceil(n * new / orig))
    edge = int(0.02 * new)
    return float(np.abs(y - _sine(freq, new, len(y)))[edge:-edge].max())


@pytest.mark.parametrize("orig, new", RATE_PAIRS)
@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_sinc_accuracy_on_sine(orig: int, new: int, freq: float) -> None:
    assert _max_error("sinc", orig, new, freq) < SINC_BOUND


@pytest.mark.parametrize("orig, new", RATE_PAIRS)
def test_fft_accuracy_on_periodic_and_aperiodic_sine(orig: int, new: int) -> None:
    assert _max_error("fft", orig, new, 1000.0) < FFT_PERIODIC_BOUND  # 500 periods in 0.5 s
    assert _max_error("fft", orig, new, 1234.5) < FFT_APERIODIC_BOUND


@pytest.mark.parametrize("n_in, n_out", [(100, 60), (101, 60), (100, 61), (60, 100), (61, 100), (60, 101)])
def test_fft_resample_matches_scipy(n_in: int, n_out: int) -> None:
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(0).standard_normal((2, n_in))
    np.testing.assert_allclose(
        fft_resample(torch.tensor(x), n_out).numpy(), signal.resample(x, n_out, axis=-1), atol=1e-12
    )


@pytest.mark.parametrize("method", ["sinc", "fft"])
@pytest.mark.parametrize("orig, new", [(5, 3), (3, 5)])
def test_gradcheck(method: str, orig: int, new: int) -> None:
    x = torch.randn(1, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    assert torch.autograd.gradcheck(Resample(orig, new, method), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["sinc", "fft"])
def test_batch_shapes_and_identity(method: str) -> None:
    x = torch.randn(3, 2, 441)
    assert Resample(44100, 16000, method)(x).shape == (3, 2, 160)
    assert Resample(16000, 16000, method)(x) is x


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="method"):
        Resample(16000, 8000, method="linear")
    with pytest.raises(ValueError, match="positive"):
        Resample(0, 8000)
