from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from sed.data import audio as audio_mod
from sed.data.audio import AudioError, fit_length, read_audio


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


def test_resample_44k_to_16k_keeps_sine_frequency_and_logs_once(tmp_path, caplog):
    audio_mod._logged_rates.clear()
    x = sine(1000.0, 44100, 1.0)
    sf.write(tmp_path / "a.wav", x, 44100, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", x, 44100, subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="sed.data.audio"):
        y = read_audio(tmp_path / "a.wav", 16000)
        read_audio(tmp_path / "b.wav", 16000)
    assert y.dtype == torch.float32 and y.ndim == 1
    assert abs(y.shape[0] - 16000) <= 1
    assert peak_frequency(y.numpy(), 16000) == pytest.approx(1000.0, abs=2.0)
    # Amplitude preserved away from the edges (no aliasing / gain change).
    assert np.abs(y.numpy()[1000:-1000]).max() == pytest.approx(0.5, abs=0.02)
    logs = [r.getMessage() for r in caplog.records if "resampling" in r.getMessage()]
    assert len(logs) == 1 and "44100" in logs[0] and "16000" in logs[0]


def test_no_resampling_when_rates_match(tmp_path, caplog):
    audio_mod._logged_rates.clear()
    x = sine(440.0, 16000, 0.5)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="sed.data.audio"):
        y = read_audio(tmp_path / "a.wav", 16000)
    np.testing.assert_array_equal(y.numpy(), x)
    assert not caplog.records


def test_stereo_to_mono_mean_and_random_channel(tmp_path):
    left = sine(300.0, 16000, 0.25)
    right = -0.5 * left
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    mono = read_audio(tmp_path / "st.wav", 16000)
    np.testing.assert_allclose(mono.numpy(), 0.25 * left, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    picks = {
        "L" if np.allclose(c, left) else "R" if np.allclose(c, right) else "?"
        for c in (read_audio(tmp_path / "st.wav", 16000, channel="random", generator=g).numpy() for _ in range(20))
    }
    assert picks == {"L", "R"}
    with pytest.raises(ValueError, match="channel"):
        read_audio(tmp_path / "st.wav", 16000, channel="left")


def test_fit_length_pad_crop_and_random_crop():
    wav = torch.arange(10, dtype=torch.float32) + 1
    padded, off = fit_length(wav, 15, random_crop=True)
    assert off == 0 and padded.shape == (15,)
    assert padded[:10].tolist() == wav.tolist() and not padded[10:].any()
    cropped, off = fit_length(wav, 4, random_crop=False)
    assert off == 0 and cropped.tolist() == [1, 2, 3, 4]
    same, off = fit_length(wav, 10, random_crop=True)
    assert off == 0 and same is wav
    g = torch.Generator().manual_seed(1)
    starts = set()
    for _ in range(50):
        c, off = fit_length(wav, 4, random_crop=True, generator=g)
        assert 0 <= off <= 6
        assert c.tolist() == wav[off : off + 4].tolist()
        starts.add(off)
    assert len(starts) > 3


def test_missing_and_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="not found") as excinfo:
        read_audio(tmp_path / "missing.wav", 16000)
    assert "missing.wav" in str(excinfo.value)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....this is not audio")
    with pytest.raises(AudioError, match="cannot read") as excinfo:
        read_audio(bad, 16000)
    assert str(bad) in str(excinfo.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_samples_are_refused_naming_the_file(tmp_path, bad):
    x = sine(440.0, 16000, 0.5)
    x[100] = bad
    sf.write(tmp_path / "poisoned.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"poisoned\.wav.*1 non-finite sample"):
        read_audio(tmp_path / "poisoned.wav", 16000)


def test_nonfinite_samples_zeroed_with_a_warning_when_asked(tmp_path, caplog):
    x = sine(440.0, 16000, 0.5)
    x[[3, 7]] = np.nan
    sf.write(tmp_path / "poisoned.wav", x, 16000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="sed.data.audio"):
        y = read_audio(tmp_path / "poisoned.wav", 16000, nonfinite="zero")
    assert torch.isfinite(y).all()
    assert y[3] == 0 and y[7] == 0 and y[4] == pytest.approx(x[4])
    assert any("poisoned.wav" in r.getMessage() and "2 non-finite" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="nonfinite"):
        read_audio(tmp_path / "poisoned.wav", 16000, nonfinite="ignore")
