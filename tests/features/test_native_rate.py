"""Training on 44.1 kHz files with the resampling inside the model (``features.input_sample_rate``), end to end:
``train.py`` on a tiny dataset generated at 44.1 kHz, then resuming, scaler reuse, ``sed.infer`` and ``sed.export``
with the checkpoint it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CLIP, TINY_SIZES, run_train, tiny_overrides

NATIVE = 44100
LOADER_RESAMPLING = "resampling audio from 44100 Hz to 16000 Hz"  # sed.data.audio's one-time log line


@pytest.fixture(scope="module")
def native_dataset(tmp_path_factory) -> Path:
    """The tiny dataset of conftest, generated at 44.1 kHz."""
    from sed.synth import generate_dataset

    root = tmp_path_factory.mktemp("tiny_44k")
    generate_dataset(root, seed=3, clip_duration=TINY_CLIP, sample_rate=NATIVE, sizes=TINY_SIZES, workers=1)
    return root


def _common(data: Path, exp: Path, epochs: int = 1) -> list[str]:
    return [*tiny_overrides(data, exp, epochs=epochs), "scaler=dataset_standard"]


def _run_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in (exp / "tiny").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def trained(native_dataset, tmp_path_factory) -> Path:
    """One epoch with features.input_sample_rate=44100 and a dataset scaler (fitted through the resampler)."""
    exp = tmp_path_factory.mktemp("exp_44k")
    proc = run_train([*_common(native_dataset, exp), f"features.input_sample_rate={NATIVE}"])
    (run_dir,) = _run_dirs(exp)
    (run_dir / "stdout.txt").write_text(proc.stdout + proc.stderr)
    return run_dir


def test_train_on_44k_files_resampling_in_the_model(trained):
    assert json.loads((trained / "status.json").read_text())["status"] == "finished"
    log = (trained / "train.log").read_text()
    assert LOADER_RESAMPLING not in log and "Fitted the dataset scaler" in log  # the loader passed 44.1 kHz audio
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    features = ckpt["hyper_parameters"]["config"]["features"]
    assert features["input_sample_rate"] == NATIVE and features["sample_rate"] == 16000
    scaler = torch.load(trained / "scaler.pt", map_location="cpu", weights_only=False)
    assert scaler["signature"]["input_sample_rate"] == NATIVE
    metrics = json.loads((trained / "test" / "teacher" / "metrics.json").read_text())
    assert np.isfinite(metrics["psds1"])


def test_resume_with_another_input_rate_is_refused_and_auto_resumes(trained, native_dataset, tmp_path):
    last = trained / "checkpoints" / "last.ckpt"
    refused = run_train([*_common(native_dataset, tmp_path / "a"), f"ckpt_path={last}"], check=False)
    assert refused.returncode != 0
    assert "features.input_sample_rate=44100 in the checkpoint, None now" in refused.stderr
    # auto: every file of the data set is at 44.1 kHz, so auto means 44100, the checkpoint's front-end.
    resumed = run_train(
        [
            *_common(native_dataset, tmp_path / "b", epochs=2),
            "features.input_sample_rate=auto",
            f"ckpt_path={last}",
            "test=false",
        ]
    )
    log = resumed.stdout + resumed.stderr
    assert "features.input_sample_rate=auto: all 56 audio files are at 44100 Hz" in log
    assert LOADER_RESAMPLING not in log
    (run_dir,) = _run_dirs(tmp_path / "b")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"


def test_scaler_of_another_input_rate_is_refused(trained, native_dataset, tmp_path):
    refused = run_train(
        [*_common(native_dataset, tmp_path), f"scaler.path={trained / 'scaler.pt'}", "test=false"], check=False
    )
    assert refused.returncode != 0
    assert "ScalerMismatchError" in refused.stderr and "input_sample_rate" in refused.stderr


def _loader_resampling_twin(ckpt: Path):
    """The checkpoint's weights and scaler statistics in a model without the resampling layer (what training with
    the loader resampling to 16 kHz would deploy): sed.infer then resamples the files itself."""
    from sed.training.module import SEDModule

    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    config = checkpoint["hyper_parameters"]["config"]
    config["features"]["input_sample_rate"] = None
    module = SEDModule(config, checkpoint["hyper_parameters"]["classes"])
    module.scaler.signature = None  # take the saved statistics although they name the other front-end
    module.load_state_dict(checkpoint["state_dict"])
    module.preferred_model = checkpoint.get("preferred_model", "teacher")
    return module.eval()


def _long_native_file(native_dataset: Path, path: Path) -> Path:
    """Three test clips end to end (6 s, several overlapping windows) at 44.1 kHz."""
    import soundfile as sf

    clips = [sf.read(p, dtype="float32")[0] for p in sorted((native_dataset / "audio" / "test").glob("*.wav"))[:3]]
    sf.write(path, np.concatenate(clips), NATIVE, subtype="FLOAT")
    return path


def test_infer_on_native_files_gives_the_events_of_loader_resampling(trained, native_dataset, tmp_path):
    """sed.infer with the checkpoint passes 44.1 kHz windows to the model; the same weights fed 16 kHz audio
    (resampled by sed.infer, as before) give the same frame probabilities within 1e-4 (window edges: each window is
    resampled on its own) and so the same events, except where a probability lies within 1e-4 of the threshold."""
    from sed.infer import main as infer_main
    from sed.inference.detector import Detector

    ckpt = trained / "checkpoints" / "last.ckpt"
    native = Detector.from_checkpoint(ckpt, model=None, device="cpu")
    before = Detector(_loader_resampling_twin(ckpt), device="cpu")
    assert native.sample_rate == NATIVE and before.sample_rate == 16000 and native.hop_frames == before.hop_frames
    files = [
        *sorted((native_dataset / "audio" / "test").glob("*.wav"))[:3],
        _long_native_file(native_dataset, tmp_path / "long.wav"),
    ]
    for path in files:
        got, ref = native.predict_file(path), before.predict_file(path)
        np.testing.assert_allclose(got.timestamps, ref.timestamps, atol=1e-9)
        np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-4)
        th = native.default_threshold
        differ = (got.probabilities > th) != (ref.probabilities > th)
        assert not (differ & (np.abs(ref.probabilities - th) > 1e-4)).any()
    # The command line on the native files writes the events of the checkpoint's detector.
    out = tmp_path / "events.tsv"
    assert infer_main([str(ckpt), str(files[-1]), "-o", str(out), "-q"]) == 0
    expected = native.detect_file(files[-1])
    import pandas as pd

    written = pd.read_csv(out, sep="\t")
    assert len(written) == len(expected)
    np.testing.assert_allclose(written[["onset", "offset"]], expected[["onset", "offset"]], atol=1e-3)


def test_export_takes_native_rate_audio_and_matches_pytorch(trained, native_dataset, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from sed.inference.detector import Detector
    from sed.inference.export import export_detector

    ckpt = trained / "checkpoints" / "last.ckpt"
    clip = min((native_dataset / "audio" / "test").glob("*.wav"))
    result = export_detector(ckpt, tmp_path / "model.onnx", check_audio=[clip])
    meta = result.metadata
    assert meta.sample_rate == NATIVE and meta.model_sample_rate == 16000 and meta.window_samples == TINY_CLIP * NATIVE
    assert result.max_abs_diff <= 1e-4  # ONNX Runtime against PyTorch, resampler included
    exported = Detector.from_exported(tmp_path / "model.onnx")
    assert exported.frame_duration == pytest.approx(Detector.from_checkpoint(ckpt, device="cpu").frame_duration)
    long = _long_native_file(native_dataset, tmp_path / "long.wav")
    got = exported.predict_file(long)
    ref = Detector.from_checkpoint(ckpt, model=meta.model, device="cpu").predict_file(long)
    np.testing.assert_allclose(got.timestamps, ref.timestamps, atol=1e-9)
    np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-4)
