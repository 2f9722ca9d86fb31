"""TorchScaler: statistics vs numpy, exact streaming fit, state dict, files, signature checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sed.features.scaler import ScalerMismatchError, ScalerNotFittedError, TorchScaler

NORMTYPES = ["standard", "mean", "minmax"]
EPS = 1e-8


def _data(seed: int = 0, shape=(5, 7, 11)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Per-bin offsets and scales so that per-bin and per-clip statistics differ clearly.
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return (
        x * torch.linspace(0.5, 4.0, shape[1], dtype=torch.float64)[None, :, None]
        + torch.linspace(-30, 20, shape[1], dtype=torch.float64)[None, :, None]
    )


def _np_normalise(x: np.ndarray, normtype: str, axes: tuple[int, ...], rng=(0.0, 1.0)) -> np.ndarray:
    mean = x.mean(axis=axes, keepdims=True)
    if normtype == "standard":
        return (x - mean) / (x.std(axis=axes, keepdims=True) + EPS)
    if normtype == "mean":
        return x - mean
    lo, hi = rng
    mn, mx = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    return lo + (hi - lo) * (x - mn) / (mx - mn + EPS)


@pytest.mark.parametrize("normtype", NORMTYPES)
@pytest.mark.parametrize("dims", [(1, 2), (2,)])
def test_instance_matches_numpy(normtype: str, dims: tuple[int, ...]) -> None:
    x = _data()
    out = TorchScaler("instance", normtype, dims=dims)(x)
    ref = _np_normalise(x.numpy(), normtype, dims)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("normtype", NORMTYPES)
def test_dataset_matches_numpy_with_uneven_batches(normtype: str) -> None:
    x = _data(shape=(10, 7, 11))
    # Uneven batches (the last one short): a mean of per-batch means would be biased.
    batches = [x[:4], x[4:8], x[8:9], x[9:]]
    scaler = TorchScaler("dataset", normtype).fit(batches, progress=False)
    xn = x.numpy()
    np.testing.assert_allclose(scaler.mean.numpy(), xn.mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(scaler.std.numpy(), xn.std(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(scaler.min.numpy(), xn.min(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(scaler.max.numpy(), xn.max(axis=(0, 2)), rtol=1e-6)
    assert int(scaler.count) == 10 * 11 and scaler.is_fitted and scaler.n_features == 7
    out = scaler(x.float())
    ref = _np_normalise(xn, normtype, (0, 2))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_dataset_fit_exact_in_float64_for_large_offsets() -> None:
    # A large common offset: sum-of-squares in float32 would lose the variance entirely.
    x = (torch.randn(6, 3, 50, generator=torch.Generator().manual_seed(1)) + 1e4).float()
    scaler = TorchScaler("dataset", "standard").fit([x[:5], x[5:]], progress=False)
    ref = x.double().numpy()
    np.testing.assert_allclose(scaler.std.numpy(), ref.std(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(scaler.mean.numpy(), ref.mean(axis=(0, 2)), rtol=1e-7)


def test_dataset_minmax_custom_range() -> None:
    x = _data()
    scaler = TorchScaler("dataset", "minmax", minmax_range=(-1.0, 1.0)).fit([x[:2], x[2:]], progress=False)
    out = scaler(x)
    assert torch.allclose(out.amin(dim=(0, 2)), torch.full((7,), -1.0, dtype=out.dtype), atol=1e-6)
    assert torch.allclose(out.amax(dim=(0, 2)), torch.full((7,), 1.0, dtype=out.dtype), atol=1e-6)
    np.testing.assert_allclose(out.numpy(), _np_normalise(x.numpy(), "minmax", (0, 2), (-1.0, 1.0)), atol=1e-6)


def test_default_minmax_range_is_zero_one() -> None:
    out = TorchScaler("instance", "minmax")(_data())
    assert TorchScaler().minmax_range == (0.0, 1.0)
    assert out.amin().item() == pytest.approx(0.0, abs=1e-9) and out.amax().item() == pytest.approx(1.0, abs=1e-6)


def test_unfitted_dataset_scaler_raises() -> None:
    with pytest.raises(ScalerNotFittedError, match="fit"):
        TorchScaler("dataset", "standard")(_data())


def test_dataset_wrong_n_features_raises() -> None:
    scaler = TorchScaler("dataset").fit([_data()], progress=False)
    with pytest.raises(ValueError, match="n_features=7"):
        scaler(torch.zeros(2, 8, 5))


def test_fit_empty_iterable_raises() -> None:
    with pytest.raises(ValueError, match="no data"):
        TorchScaler("dataset").fit([], progress=False)


def test_fit_shows_progress(capsys: pytest.CaptureFixture) -> None:
    TorchScaler("dataset").fit([_data()], progress=True)
    assert "Fitting scaler" in capsys.readouterr().err


@pytest.mark.parametrize("normtype", NORMTYPES)
def test_state_dict_into_fresh_unfitted_scaler(normtype: str) -> None:
    x = _data()
    fitted = TorchScaler("dataset", normtype, signature={"kind": "mel"}).fit([x[:3], x[3:]], progress=False)
    fresh = TorchScaler("dataset", normtype)
    fresh.load_state_dict(fitted.state_dict())  # strict: buffers resized from empty
    assert fresh.is_fitted and fresh.signature == {"kind": "mel"}
    assert torch.equal(fresh(x), fitted(x))
    # The statistics are part of a parent module's checkpoint.
    parent = torch.nn.Sequential(fitted)
    assert {"0.mean", "0.std", "0.min", "0.max", "0.count", "0.fitted"} <= set(parent.state_dict())


def test_state_dict_with_other_configuration_or_frontend_refused() -> None:
    fitted = TorchScaler("dataset", "standard", signature={"kind": "mel", "hop_length": 256})
    fitted.fit([_data()], progress=False)
    with pytest.raises(ScalerMismatchError, match="normtype"):
        TorchScaler("dataset", "minmax").load_state_dict(fitted.state_dict())
    with pytest.raises(ScalerMismatchError, match="hop_length: saved=256, current=320"):
        TorchScaler("dataset", "standard", signature={"kind": "mel", "hop_length": 320}).load_state_dict(
            fitted.state_dict()
        )


@pytest.mark.parametrize("statistic", ["instance", "dataset"])
@pytest.mark.parametrize("normtype", NORMTYPES)
def test_save_load_identical_output(tmp_path, statistic: str, normtype: str) -> None:
    x = _data().float()
    sig = {"kind": "mel", "sample_rate": 16000, "db_range": [-50.0, 80.0]}
    scaler = TorchScaler(statistic, normtype, minmax_range=(0.0, 2.0), signature=sig)
    scaler.fit([x[:2], x[2:]], progress=False)
    path = tmp_path / "scaler.pt"
    scaler.save(path)
    # Tuples and lists compare equal in the signature check.
    loaded = TorchScaler.load(path, expected_signature={**sig, "db_range": (-50.0, 80.0)})
    assert (loaded.statistic, loaded.normtype, loaded.minmax_range) == (statistic, normtype, (0.0, 2.0))
    assert torch.equal(loaded(x), scaler(x))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_load_with_different_signature_names_keys_and_values(tmp_path) -> None:
    sig = {"kind": "mel", "sample_rate": 16000, "hop_length": 256, "n_mels": 128, "db_range": [-50.0, 80.0]}
    scaler = TorchScaler("dataset", signature=sig).fit([torch.randn(2, 128, 5)], progress=False)
    scaler.save(tmp_path / "s.pt")
    expected = {**sig, "hop_length": 320, "db_range": [-80.0, 80.0], "kind": "mfcc"}
    with pytest.raises(ScalerMismatchError) as err:
        TorchScaler.load(tmp_path / "s.pt", expected_signature=expected)
    msg = str(err.value)
    assert "hop_length: file=256, expected=320" in msg
    assert "db_range: file=[-50.0, 80.0], expected=[-80.0, 80.0]" in msg
    assert "kind: file='mel', expected='mfcc'" in msg
    assert "n_mels" not in msg and "s.pt" in msg
    with pytest.raises(ScalerMismatchError, match="n_fft: file='<missing>', expected=2048"):
        TorchScaler.load(tmp_path / "s.pt", expected_signature={**sig, "n_fft": 2048})


def test_load_refuses_file_without_signature_when_one_is_expected(tmp_path) -> None:
    TorchScaler("dataset").fit([_data()], progress=False).save(tmp_path / "s.pt")
    assert TorchScaler.load(tmp_path / "s.pt").is_fitted
    with pytest.raises(ScalerMismatchError, match="no front-end signature"):
        TorchScaler.load(tmp_path / "s.pt", expected_signature={"kind": "mel"})


def test_save_unfitted_dataset_scaler_raises(tmp_path) -> None:
    with pytest.raises(ScalerNotFittedError):
        TorchScaler("dataset").save(tmp_path / "s.pt")
    assert not (tmp_path / "s.pt").exists()


def test_load_foreign_file_raises(tmp_path) -> None:
    torch.save({"a": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a scaler file"):
        TorchScaler.load(tmp_path / "x.pt")


def test_half_precision_input_keeps_dtype() -> None:
    x = _data().float()
    scaler = TorchScaler("dataset").fit([x], progress=False)
    out = scaler(x.half())
    assert out.dtype == torch.float16
    # fp16 rounds inputs near |x|=30 to 2**-6; divided by the smallest std (0.5) that is ~0.03.
    assert torch.allclose(out.float(), scaler(x), atol=5e-2)


@pytest.mark.parametrize("kwargs", [dict(statistic="global"), dict(normtype="robust"), dict(minmax_range=(1, 0))])
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TorchScaler(**kwargs)
