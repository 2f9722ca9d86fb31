"""``python -m sed.export`` and inference with the exported file: a checkpoint trained by ``train.py`` on the tiny
dataset, exported to ONNX and TorchScript, must give PyTorch's probabilities (ONNX Runtime within 1e-4) on its
real clips, carry its metadata, and make ``sed.infer`` write what the checkpoint makes it write, which is what the
test outputs of the run hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from sed.export import main as export_main
from sed.infer import main as infer_main
from sed.inference.export import DetectorMetadata, ExportedModel, InferenceGraph, load_module

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def run_dir(tested_run) -> Path:
    """One epoch of the tiny configuration (default scaler: per-clip min-max), tested (its test outputs are the
    reference for event times): conftest's shared run."""
    return tested_run[0]


@pytest.fixture(scope="module")
def checkpoint(run_dir) -> Path:
    (ckpt,) = (run_dir / "checkpoints").glob("epoch*.ckpt")  # the best (and only) epoch: what the test used
    return ckpt


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The checkpoint exported by the command line: ONNX with the default network, TorchScript of the teacher."""
    out = tmp_path_factory.mktemp("exported")
    onnx_path, ts_path = out / "model.onnx", out / "model.pt"
    assert export_main([str(checkpoint), "-o", str(onnx_path), "-q"]) == 0
    assert (
        export_main([str(checkpoint), "-o", str(ts_path), "--format", "torchscript", "--model", "teacher", "-q"]) == 0
    )
    return {"onnx": onnx_path, "torchscript": ts_path}


def _test_clips(tiny_dataset: Path) -> list[Path]:
    return sorted((tiny_dataset / "audio" / "test").glob("*.wav"))


def _windows(paths: list[Path], n: int) -> torch.Tensor:
    rows = []
    for path in paths:
        data, _ = sf.read(path, dtype="float32", always_2d=True)
        clip = torch.from_numpy(data.mean(axis=1))[:n]
        rows.append(torch.nn.functional.pad(clip, (0, n - clip.shape[0])))
    return torch.stack(rows)


def test_export_prints_the_check_and_stores_metadata(checkpoint, exported, capsys):
    import onnx

    module, _ = load_module(checkpoint)
    proto = onnx.load(str(exported["onnx"]))
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["classes"] == list(module.classes)
    assert props["model"] == module.preferred_model  # the default: the network validation preferred
    assert props["sample_rate"] == 16000 and props["window_samples"] == 32000
    assert props["window_frames"] == module.encoder.n_frames
    assert props["frame_samples"] == module.encoder.frame_hop_samples
    assert props["frame_duration"] == pytest.approx(module.encoder.frame_duration)
    assert props["median_window"] == list(module.cfg.evaluation.median_window)
    assert props["thresholds"] == list(module.cfg.evaluation.thresholds)
    (audio,) = proto.graph.input
    dims = audio.type.tensor_type.shape.dim
    assert audio.name == "audio" and dims[0].dim_param and dims[1].dim_value == 32000  # dynamic batch, fixed window
    ts = ExportedModel.load(exported["torchscript"])
    assert ts.format == "torchscript" and ts.metadata.model == "teacher"
    assert ts.metadata.classes == tuple(module.classes)

    # The command prints the largest difference it measured.
    assert export_main([str(checkpoint), "-o", str(exported["torchscript"].with_name("again.pt"))]) == 0
    err = capsys.readouterr().err
    assert "max |exported - PyTorch| = " in err and "on 4 windows" in err


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_equals_pytorch_on_real_clips(checkpoint, exported, tiny_dataset, fmt):
    """Every test clip of the tiny dataset through the exported file equals the checkpoint's front-end, scaler and
    network in PyTorch (SEDModule.predict on SEDModule.features), in one batch and one at a time."""
    model = ExportedModel.load(exported[fmt])
    module, _ = load_module(checkpoint)
    network = getattr(module, model.metadata.model)
    windows = _windows(_test_clips(tiny_dataset), model.metadata.window_samples)
    assert len(windows) == 8
    with torch.inference_mode():
        reference = module.predict(network, module.features(windows))
    strong, weak = model(windows)
    assert strong.shape == reference.strong.shape == (8, len(module.classes), module.encoder.n_frames)
    np.testing.assert_allclose(strong.numpy(), reference.strong.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(weak.numpy(), reference.weak.numpy(), atol=1e-4, rtol=0)
    one, _ = model(windows[3:4])  # another batch size than exported with
    np.testing.assert_allclose(one.numpy(), reference.strong[3:4].numpy(), atol=1e-4, rtol=0)
    assert float((strong - reference.strong).abs().max()) < 1e-5  # what we actually see (~1e-7)


def _long_file(folder: Path) -> Path:
    """5.3 s at 44.1 kHz stereo: several overlapping windows, resampling and channel averaging."""
    rng = np.random.default_rng(7)
    t = np.arange(int(5.3 * 44100)) / 44100
    left = 0.3 * np.sin(2 * np.pi * 660 * t) * ((t % 1.5) < 0.6)
    right = 0.05 * rng.standard_normal(t.shape)
    path = folder / "long.wav"
    sf.write(path, np.stack([left, right], axis=1).astype(np.float32), 44100, subtype="FLOAT")
    return path


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_infer_with_exported_model_equals_checkpoint(checkpoint, exported, tiny_dataset, tmp_path, fmt):
    from sed.evaluation.outputs import read_scores_dir

    meta = ExportedModel.load(exported[fmt]).metadata
    inputs = [str(tiny_dataset / "audio" / "test"), str(_long_file(tmp_path))]
    common = ["--threshold", "0.3", "--device", "cpu", "--batch-size", "3", "-q"]
    ref_out, ref_scores = tmp_path / "ckpt.tsv", tmp_path / "ckpt_scores"
    assert (
        infer_main(
            [
                str(checkpoint),
                *inputs,
                "-o",
                str(ref_out),
                "--scores-dir",
                str(ref_scores),
                "--model",
                meta.model,
                *common,
            ]
        )
        == 0
    )
    out, scores = tmp_path / f"{fmt}.tsv", tmp_path / f"{fmt}_scores"
    assert (
        infer_main([f"--{fmt}", str(exported[fmt]), *inputs, "-o", str(out), "--scores-dir", str(scores), *common]) == 0
    )
    assert out.read_text() == ref_out.read_text()
    assert len(pd.read_csv(out, sep="\t")) > 0  # some events to compare
    got, ref = read_scores_dir(scores), read_scores_dir(ref_scores)
    assert sorted(got) == sorted(ref) and len(got) == 9
    for key in ref:
        assert list(got[key].columns) == list(ref[key].columns)
        np.testing.assert_array_equal(
            got[key][["onset", "offset"]].to_numpy(), ref[key][["onset", "offset"]].to_numpy()
        )
        np.testing.assert_allclose(got[key].to_numpy()[:, 2:], ref[key].to_numpy()[:, 2:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("model", ["student", "teacher"])
def test_infer_writes_the_events_of_the_test_outputs(run_dir, checkpoint, exported, tiny_dataset, tmp_path, model):
    """sed.infer on the test clips, with the checkpoint's median filter and first threshold (the defaults), writes
    the file train.py wrote at test time (test/<model>/events_th0.5.tsv): same events, times and formatting. The
    exported model (ONNX) does too."""
    out = tmp_path / "events.tsv"
    assert (
        infer_main(
            [
                str(checkpoint),
                str(tiny_dataset / "audio" / "test"),
                "-o",
                str(out),
                "--model",
                model,
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    reference = run_dir / "test" / model / "events_th0.5.tsv"
    assert out.read_text() == reference.read_text()
    assert len(out.read_text().splitlines()) > 1
    if ExportedModel.load(exported["onnx"]).metadata.model == model:
        onnx_out = tmp_path / "onnx.tsv"
        assert (
            infer_main(
                ["--onnx", str(exported["onnx"]), str(tiny_dataset / "audio" / "test"), "-o", str(onnx_out), "-q"]
            )
            == 0
        )
        assert onnx_out.read_text() == reference.read_text()


def test_dataset_scaler_and_mfcc_export_and_silence(tmp_path):
    """A fitted dataset scaler (standardisation) and MFCC features export too; a silent window (constant features,
    where the scaler's eps matters) gives PyTorch's probabilities, not NaN."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from sed.run.config import Config
    from sed.training.module import SEDModule

    cfg = OmegaConf.structured(Config)
    cfg.paths.run_dir = cfg.data.root = "unused"
    cfg.data.clip_duration = 1.0
    cfg.features.update(kind="mfcc", n_fft=512, win_length=512, n_mels=16, n_mfcc=16)
    cfg.scaler.update(statistic="dataset", normtype="standard")
    cfg.model.update(filters=[4, 8], pooling=[[2, 4], [2, 4]], rnn_hidden=8, rnn_layers=1)
    torch.manual_seed(0)
    module = SEDModule(OmegaConf.to_container(cfg, resolve=True), ["a", "b"])
    quiet = torch.zeros(2, 16000)  # some feature bins constant over the data: std 0
    module.scaler.fit([module.frontend(torch.cat([torch.randn(4, 16000) * 0.1, quiet]))], progress=False)
    ckpt = tmp_path / "ds.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        ckpt,
    )
    assert export_main([str(ckpt), "-o", str(tmp_path / "ds.onnx"), "-q"]) == 0
    model = ExportedModel.load(tmp_path / "ds.onnx")
    graph = InferenceGraph.from_module(load_module(ckpt)[0], "student")
    windows = torch.cat([torch.zeros(1, 16000), torch.randn(2, 16000) * 0.2])
    strong, weak = model(windows)
    with torch.inference_mode():
        ref_strong, ref_weak = graph(windows)
    assert torch.isfinite(strong).all() and torch.isfinite(weak).all()
    np.testing.assert_allclose(strong.numpy(), ref_strong.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(weak.numpy(), ref_weak.numpy(), atol=1e-4, rtol=0)


def test_stft_of_the_exported_graph_equals_torch_stft(exported, checkpoint):
    """The exported graph computes the front-end's STFT with the ONNX STFT operator (opset 18); its log-mel equals
    torch.stft's (the front-end in PyTorch) on a chirp and noise."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(exported["onnx"]))
    assert "STFT" in {node.op_type for node in proto.graph.node} | {
        node.op_type for fn in proto.functions for node in fn.node
    }
    module, _ = load_module(checkpoint)

    class LogMel(torch.nn.Module):
        def __init__(self, frontend):
            super().__init__()
            self.frontend = frontend

        def forward(self, audio):
            return self.frontend(audio)

    t = torch.arange(32000) / 16000
    audio = torch.stack([torch.sin(2 * np.pi * (200 + 1500 * t) * t), 0.1 * torch.randn(32000)])
    program = torch.onnx.export(
        LogMel(module.frontend).eval(), (audio,), dynamo=True, opset_version=18, input_names=["audio"], optimize=False
    )
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (feats,) = session.run(None, {"audio": audio.numpy()})
    with torch.inference_mode():
        reference = module.frontend(audio).numpy()
    # Float32 FFTs round differently: bins 80-100 dB below the loudest differ by up to ~0.003 dB (0.03 %).
    np.testing.assert_allclose(feats, reference, atol=1e-2, rtol=0)
    assert np.median(np.abs(feats - reference)) < 1e-4


def test_export_errors_name_the_file_and_write_nothing(checkpoint, exported, tmp_path, capsys, monkeypatch):
    import sed.inference.export as export

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert export_main([str(bad), "-o", str(tmp_path / "m.onnx")]) == 2
    assert str(bad) in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()
    assert export_main([str(checkpoint), "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err

    # A failed check writes nothing: an earlier file stays as it was.
    target = tmp_path / "kept.pt"
    target.write_bytes(b"earlier")
    monkeypatch.setattr(export, "compare", lambda *args: 0.5)
    assert export_main([str(checkpoint), "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and "differs from PyTorch by 0.5" in err and "nothing written" in err
    assert target.read_bytes() == b"earlier"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".kept")]  # no temporary file left


def test_infer_refuses_foreign_or_mismatched_models(exported, tmp_path, capsys):
    clip = tmp_path / "a.wav"
    sf.write(clip, np.zeros(16000, dtype=np.float32), 16000)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage")
    assert infer_main(["--onnx", str(garbage), str(clip), "-o", str(tmp_path / "e.tsv")]) == 2
    assert str(garbage) in capsys.readouterr().err

    # A valid ONNX model that sed.export did not write has no metadata to run it with.
    import onnx

    proto = onnx.load(str(exported["onnx"]))
    del proto.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    assert infer_main(["--onnx", str(plain), str(clip), "-o", str(tmp_path / "e.tsv")]) == 2
    assert f"{plain}: no sed metadata" in capsys.readouterr().err

    meta = ExportedModel.load(exported["torchscript"]).metadata
    assert meta.model == "teacher"
    assert (
        infer_main(
            [
                "--torchscript",
                str(exported["torchscript"]),
                str(clip),
                "--model",
                "student",
                "-o",
                str(tmp_path / "e.tsv"),
            ]
        )
        == 2
    )
    assert "holds the teacher, not the student" in capsys.readouterr().err
    assert not (tmp_path / "e.tsv").exists()


def test_metadata_round_trip():
    meta = DetectorMetadata(("a", "b c"), 22050, 44100, 43, 1024, (3, 5), (0.5, 0.3), "teacher", "x.ckpt", {"epoch": 2})
    assert DetectorMetadata.from_properties(meta.to_properties(), "m.onnx") == meta
    assert DetectorMetadata.from_json(meta.to_json(), "m.pt") == meta
    assert meta.frame_duration == 1024 / 22050 and meta.median_filter == [3, 5]


def test_export_and_infer_deploy_the_network_validation_preferred(checkpoint, tiny_dataset, tmp_path, capsys):
    """A checkpoint whose validation preferred the other network than the teacher: sed.export exports that one by
    default, as sed.infer infers with it, so both give the same events (the export used to take the teacher)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    other = "teacher" if state.get("preferred_model") == "student" else "student"
    state["preferred_model"] = other
    path = tmp_path / "preferred.ckpt"
    torch.save(state, path)
    assert load_module(path)[0].preferred_model == other
    exported = tmp_path / "model.pt"
    assert export_main([str(path), "-o", str(exported), "-q"]) == 0
    assert ExportedModel.load(exported).metadata.model == other
    audio = str(tiny_dataset / "audio" / "test")
    assert infer_main([str(path), audio, "-o", str(tmp_path / "ckpt.tsv"), "--device", "cpu", "-q"]) == 0
    assert infer_main(["--torchscript", str(exported), audio, "-o", str(tmp_path / "ts.tsv"), "-q"]) == 0
    assert (tmp_path / "ts.tsv").read_text() == (tmp_path / "ckpt.tsv").read_text()
    from sed.inference.detector import Detector

    assert Detector.from_checkpoint(path, device="cpu").metadata.model == other  # the Python API's default too
    with pytest.raises(SystemExit):
        infer_main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "default: teacher" not in shown and "default: the one validation preferred" in shown
