"""FrontEnd: log-mel against an independent numpy/librosa computation, shapes, signatures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sed.features.frontend import FrontEnd

librosa = pytest.importorskip("librosa")

SR = 16000
# Float32 torch STFT vs float64 numpy reference, compared in dB after the clamp. For signals at
# ordinary levels the measured max error is about 2e-4 dB: tolerance TOL_DB = 1e-3 dB. Float32
# error is relative to the loudest bin of a frame, so frames that span the whole clamp range
# (+80 dB next to bins near -50 dB) are compared with TOL_DB_LOUD = 1e-2 dB (measured ~3e-3 dB).
TOL_DB = 1e-3
TOL_DB_LOUD = 1e-2


def _test_signal(n: int = SR * 2, seed: int = 0, loud: bool = False) -> np.ndarray:
    """Tones + noise and a silent stretch (hits the -50 dB floor); ``loud``: a last quarter at +80 dB."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * 3000 * t)
    x[n // 4 : n // 2] = 0.0
    if loud:
        x[3 * n // 4 :] += 60.0 * np.sin(2 * np.pi * 1000 * t[3 * n // 4 :])
    return x


def _stft_mag(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT| [n_fft//2+1, T], centred frames, reflect padding, symmetric Hamming window (float64)."""
    xp = np.pad(x, n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft)[::hop]
    return np.abs(np.fft.rfft(frames * np.hamming(n_fft), axis=1)).T


def _to_db(mag: np.ndarray, amin: float = 1e-5, lo: float = -50.0, hi: float = 80.0) -> np.ndarray:
    return np.clip(20.0 * np.log10(np.maximum(mag, amin)), lo, hi)


def _mel_reference(x: np.ndarray, n_fft=2048, hop=256, n_mels=128, fmin=0.0, fmax=8000.0) -> np.ndarray:
    # torchaudio's MelSpectrogram defaults: HTK mel scale, no filter normalisation.
    mel = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=True, norm=None)
    return _to_db(mel @ _stft_mag(x, n_fft, hop))


def test_logmel_matches_numpy_librosa_reference() -> None:
    x = _test_signal()
    ours = FrontEnd()(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
    ref = _mel_reference(x)
    assert ours.shape == ref.shape == (128, 1 + len(x) // 256)
    assert ours.min() == -50.0  # clamp floor exercised
    assert np.abs(ours - ref).max() < TOL_DB


def test_logmel_full_clamp_range_matches_reference() -> None:
    x = _test_signal(loud=True)
    ours = FrontEnd()(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
    ref = _mel_reference(x)
    assert ours.min() == -50.0 and ours.max() == 80.0  # both clamp ends exercised
    assert np.abs(ours - ref).max() < TOL_DB_LOUD


def test_logmel_matches_librosa_melspectrogram_other_params() -> None:
    x = _test_signal(SR, seed=1)[: SR - 123]
    fe = FrontEnd(n_fft=1024, win_length=1024, hop_length=320, n_mels=64, f_min=50.0, f_max=7000.0)
    ours = fe(torch.tensor(x, dtype=torch.float32))  # 1-D input -> [F, T]
    mel = librosa.feature.melspectrogram(
        y=x,
        sr=SR,
        n_fft=1024,
        hop_length=320,
        win_length=1024,
        window=np.hamming(1024),
        center=True,
        pad_mode="reflect",
        power=1.0,
        n_mels=64,
        fmin=50.0,
        fmax=7000.0,
        htk=True,
        norm=None,
    )
    ref = _to_db(mel)
    assert ours.shape == ref.shape == (64, fe.n_frames(len(x)))
    assert np.abs(ours.numpy() - ref).max() < TOL_DB


def test_stft_frontend_matches_reference() -> None:
    x = _test_signal(SR // 2)
    fe = FrontEnd(kind="stft", n_fft=510, win_length=510, hop_length=256)
    ours = fe(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
    ref = _to_db(_stft_mag(x, 510, 256))
    assert ours.shape == ref.shape == (fe.n_features, 1 + len(x) // 256) and fe.n_features == 256
    assert np.abs(ours - ref).max() < TOL_DB


def test_mfcc_is_orthonormal_dct_of_clamped_logmel() -> None:
    x = _test_signal(SR // 2)
    fe = FrontEnd(kind="mfcc", n_mfcc=20)
    ours = fe(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
    logmel = _mel_reference(x)
    from scipy.fft import dct

    ref = dct(logmel, type=2, norm="ortho", axis=0)[:20]
    assert ours.shape == (20, logmel.shape[1]) and fe.n_features == 20
    # DCT of 128 bands: error grows at most by sqrt(128) over the per-band dB error.
    assert np.abs(ours - ref).max() < TOL_DB * np.sqrt(128)


def test_frames_and_batch_shapes() -> None:
    fe = FrontEnd()
    wav = torch.randn(3, SR * 10) * 0.1
    out = fe(wav)
    assert out.shape == (3, 128, 626) and out.dtype == torch.float32
    assert fe.n_frames(SR * 10) == 626
    # Batch items are independent.
    assert torch.allclose(fe(wav[1:2])[0], out[1], atol=1e-4)


def test_double_input_is_computed_in_float32() -> None:
    wav = torch.randn(1, SR // 2) * 0.1
    fe = FrontEnd()
    assert torch.allclose(fe(wav.double()), fe(wav), atol=1e-4)


def test_signature_contents_and_changes() -> None:
    sig = FrontEnd().signature()
    for key in (
        "kind",
        "sample_rate",
        "n_fft",
        "win_length",
        "hop_length",
        "n_mels",
        "f_min",
        "f_max",
        "db_range",
        "amin",
        "n_features",
    ):
        assert key in sig
    assert sig == FrontEnd().signature()
    assert FrontEnd(hop_length=320).signature()["hop_length"] == 320
    assert FrontEnd(db_range=(-80, 80)).signature()["db_range"] == [-80.0, 80.0]
    assert "n_mfcc" in FrontEnd(kind="mfcc").signature() and "n_mels" not in FrontEnd(kind="stft").signature()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="cqt"), "kind"),
        (dict(win_length=4096), "win_length"),
        (dict(f_max=9000.0), "f_max"),
        (dict(db_range=(80.0, -50.0)), "db_range"),
        (dict(kind="mfcc", n_mfcc=200), "n_mfcc"),
    ],
)
def test_bad_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FrontEnd(**kwargs)


def test_too_short_or_bad_shape_input_raises() -> None:
    fe = FrontEnd()
    with pytest.raises(ValueError, match="n_fft"):
        fe(torch.zeros(1, 500))
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        fe(torch.zeros(1, 1, 4000))


# --------------------------------------------------------------------------- resampling inside the model
# features.input_sample_rate: the front-end takes 44.1 kHz audio and resamples it to the model's 16 kHz itself.
NATIVE = 44100


def _native_clip(seconds: float = 2.0, seed: int = 1) -> torch.Tensor:
    """Tones (one above the model's Nyquist, which resampling must remove) + noise + a silent stretch, at 44.1 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * NATIVE)
    t = np.arange(n) / NATIVE
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t) + 0.2 * np.sin(2 * np.pi * 12000 * t)
    x += 0.05 * rng.standard_normal(n)
    x[n // 4 : n // 2] = 0.0
    return torch.from_numpy(x.astype(np.float32))


def test_gradient_reaches_the_input_through_the_in_model_resampler() -> None:
    fe = FrontEnd(input_sample_rate=NATIVE)
    wav = _native_clip().reshape(2, -1).clone().requires_grad_(True)
    fe(wav).sum().backward()
    assert wav.grad is not None and wav.grad.shape == wav.shape
    assert torch.isfinite(wav.grad).all() and wav.grad.abs().sum() > 0
    # The gradient is that of the chain resampler -> STFT: the vector-Jacobian product of the resampler with the
    # gradient the same front-end gets at the model's rate (computed in float64 to compare the float32 chain).
    resampled = fe.resample(wav.detach()).requires_grad_(True)
    FrontEnd()(resampled).sum().backward()
    x = wav.detach().double().requires_grad_(True)
    (expected,) = torch.autograd.grad(fe.resampler(x), x, grad_outputs=resampled.grad.double())
    torch.testing.assert_close(wav.grad.double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_logmel_resampled_in_the_model_equals_loader_resampling() -> None:
    """Same samples, same frames: the in-model resampler applies the loader's float32 sinc kernel (the loader's
    ``sed.data.audio.resample``), so the features differ only by float32 rounding in the convolution (measured: 0 on
    the CPU). Tolerance 1e-3 dB, the front-end's own float32 budget (TOL_DB above), for other devices and conv
    algorithms."""
    from sed.data.audio import resample

    native = _native_clip()
    in_model = FrontEnd(input_sample_rate=NATIVE)
    loader_side = resample(native, NATIVE, SR)
    assert in_model.resample(native).shape == loader_side.shape == (2 * SR,)
    got, ref = in_model(native), FrontEnd()(loader_side)
    assert got.shape == ref.shape and got.shape[-1] == in_model.n_frames(native.shape[-1]) == FrontEnd().n_frames(
        2 * SR
    )
    assert float((got - ref).abs().max()) <= TOL_DB
    assert in_model.input_rate == NATIVE and FrontEnd().input_rate == SR


def test_input_rate_is_part_of_the_signature_and_scaler_files_refuse_a_mismatch(tmp_path) -> None:
    from sed.features.scaler import ScalerMismatchError, TorchScaler

    plain, native = FrontEnd(), FrontEnd(input_sample_rate=NATIVE)
    assert "input_sample_rate" not in plain.signature()  # unchanged for models without a resampler
    assert FrontEnd(input_sample_rate=SR).signature() == plain.signature()  # the model's own rate: no resampler
    assert native.signature()["input_sample_rate"] == NATIVE
    assert native.signature()["resampler"]["method"] == "sinc"
    assert native.state_dict().keys() == plain.state_dict().keys()  # the kernel is not saved: checkpoints unchanged
    scaler = TorchScaler("dataset", signature=native.signature()).fit([native(_native_clip()[None])], progress=False)
    scaler.save(tmp_path / "scaler.pt")
    assert TorchScaler.load(tmp_path / "scaler.pt", expected_signature=native.signature()).is_fitted
    with pytest.raises(ScalerMismatchError, match="input_sample_rate"):
        TorchScaler.load(tmp_path / "scaler.pt", expected_signature=plain.signature())


@pytest.mark.parametrize("value", ["auto", 0, -44100])
def test_bad_input_sample_rate_raises(value) -> None:
    with pytest.raises(ValueError, match="input_sample_rate"):
        FrontEnd(input_sample_rate=value)


def test_clip_duration_must_be_whole_samples_at_the_input_rate() -> None:
    from sed.features.frontend import input_clip_samples

    assert input_clip_samples(10.0, NATIVE, SR) == 441000 and input_clip_samples(2.0, NATIVE, SR) == 88200
    assert input_clip_samples(1.0, 22050, SR) == 22050 and input_clip_samples(1.0, SR, SR) == SR
    with pytest.raises(ValueError, match=r"data.clip_duration=1.00001 s .*features.input_sample_rate=44100"):
        input_clip_samples(1.00001, NATIVE, SR)
