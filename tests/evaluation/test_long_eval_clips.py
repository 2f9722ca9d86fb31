"""Validation/test clips longer than data.clip_duration are evaluated over their whole length, like sed.infer."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from conftest import tiny_module

from sed.inference.detector import Detector
from sed.models.crnn import CRNNOutput

CLASSES = ["alarm", "dog", "speech"]
CLIP = 2.0
RATE = 16000


def _module():
    return tiny_module(CLASSES, sample_rate=RATE, clip_duration=CLIP)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A test set of one ordinary clip and one twice as long with a dog barking (a loud burst) in its second half."""
    root = tmp_path_factory.mktemp("long_clips")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    sf.write(root / "audio" / "short.wav", (0.003 * rng.standard_normal(int(CLIP * RATE))).astype(np.float32), RATE)
    long = 0.003 * rng.standard_normal(int(2 * CLIP * RATE))
    long[int(3.0 * RATE) : int(3.5 * RATE)] = 0.5 * rng.standard_normal(int(0.5 * RATE))
    sf.write(root / "audio" / "long.wav", long.astype(np.float32), RATE)
    (root / "test.tsv").write_text("filename\tonset\toffset\tevent_label\nshort.wav\t\t\t\nlong.wav\t3.0\t3.5\tdog\n")
    (root / "durations.tsv").write_text("filename\tduration\nshort.wav\t2.0\nlong.wav\t4.0\n")
    return root


def _test_run(module, root, out_dir):
    import pytorch_lightning as pl

    from sed.data.datamodule import SEDDataModule

    dm = SEDDataModule(
        str(root),
        classes=CLASSES,
        sample_rate=RATE,
        clip_duration=CLIP,
        strong_tsv=None,
        weak_tsv=None,
        unlabeled_tsv=None,
        test_tsv="test.tsv",
        test_audio="audio",
        test_durations="durations.tsv",
        eval_batch_size=4,
        num_workers=0,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out_dir),
    )
    trainer.test(module, datamodule=dm, verbose=False)
    return out_dir / "test"


def test_long_test_clip_gives_the_probabilities_of_infer(data, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sed.training.evaluation_steps")
    module = _module()
    out = _test_run(module, data, tmp_path)
    assert "1 of 2 test clip(s) are longer than data.clip_duration" in caplog.text
    detector = Detector(module, model="teacher", device="cpu")
    raw = pd.read_csv(out / "teacher" / "scores_raw" / "long.tsv", sep="\t")
    post = pd.read_csv(out / "teacher" / "scores_postprocessed" / "long.tsv", sep="\t")
    ref = detector.predict_file(data / "audio" / "long.wav", postprocess=False)
    assert raw["offset"].iloc[-1] == pytest.approx(4.0)  # scored over the whole clip, not its first 2 s
    np.testing.assert_allclose(raw["onset"], ref.timestamps[:-1], atol=1e-9)
    np.testing.assert_allclose(raw[CLASSES].to_numpy().T, ref.probabilities, atol=1e-5)
    ref = detector.predict_file(data / "audio" / "long.wav")  # the median filter, after merging
    np.testing.assert_allclose(post[CLASSES].to_numpy().T, ref.probabilities, atol=1e-5)


class Loudness(torch.nn.Module):
    """Stands in for a trained CRNN: 'dog' is active where a frame's mean feature is well above the window's median."""

    time_pooling = 4

    def forward(self, feats: torch.Tensor) -> CRNNOutput:
        energy = feats.mean(dim=1)  # [B, T]
        t = energy.shape[-1] // self.time_pooling
        energy = energy[:, : t * self.time_pooling].reshape(len(energy), t, self.time_pooling).mean(-1)
        logits = torch.full((len(energy), len(CLASSES), t), -20.0)
        logits[:, 1] = 60.0 * (energy - energy.median(dim=1, keepdim=True).values - 0.15)
        strong = torch.sigmoid(logits)
        weak = strong.max(dim=-1).values
        return CRNNOutput(logits, torch.logit(weak, eps=1e-6), strong, weak)


def test_event_in_the_second_half_of_a_long_test_clip_is_detected(data, tmp_path):
    module = _module()
    module.student, module.teacher = Loudness(), Loudness()
    _test_run(module, data, tmp_path)
    metrics = module.test_results["teacher"]
    assert metrics["event_f1@0.5/dog"] == 1.0 and metrics["event_precision_micro@0.5"] == 1.0
    assert metrics["intersection_f1@0.5/dog"] == 1.0
    assert metrics["weak_f1"] > 0  # the clip-level label of the long clip counts its second half too


# --------------------------------------------------------------------------- 44.1 kHz files, resampled in the model
NATIVE = 44100


@pytest.fixture(scope="module")
def native_data(data, tmp_path_factory):
    """The same test set written at 44.1 kHz (resampled once here, so both rates hold the same signal)."""
    from sed.data.audio import read_audio

    root = tmp_path_factory.mktemp("long_clips_44k")
    (root / "audio").mkdir()
    for name in ("short.wav", "long.wav"):
        wav = read_audio(data / "audio" / name, NATIVE)
        sf.write(root / "audio" / name, wav.numpy(), NATIVE, subtype="FLOAT")
    for name in ("test.tsv", "durations.tsv"):
        (root / name).write_text((data / name).read_text())
    return root


def _native_module():
    module = tiny_module(CLASSES, sample_rate=RATE, clip_duration=CLIP, **{"features.input_sample_rate": NATIVE})
    reference = _module()  # the same networks as the model fed at 16 kHz (its scaler is refused: another front-end)
    module.student.load_state_dict(reference.student.state_dict())
    module.teacher.load_state_dict(reference.teacher.state_dict())
    return module


def test_native_rate_test_set_resampled_in_the_model_scores_like_loader_resampling(native_data, tmp_path):
    """44.1 kHz test clips with features.input_sample_rate=44100 (the loader passes them as they are): the test
    outputs are sed.infer's on the same files, and those of the same weights fed by the loader at 16 kHz within
    1e-4 (windows after the first are resampled on their own, so a few samples at their edges see zero padding
    instead of the neighbouring audio; measured <= 1.2e-7 with this untrained model)."""
    module, reference = _native_module(), _module()
    out = _test_run(module, native_data, tmp_path / "native")
    ref_out = _test_run(reference, native_data, tmp_path / "loader")
    detector = Detector(module, model="teacher", device="cpu")
    assert detector.sample_rate == NATIVE and detector.window_samples == CLIP * NATIVE
    for name in ("short", "long"):
        raw = pd.read_csv(out / "teacher" / "scores_raw" / f"{name}.tsv", sep="\t")
        ref = pd.read_csv(ref_out / "teacher" / "scores_raw" / f"{name}.tsv", sep="\t")
        assert len(raw) == len(ref)
        np.testing.assert_allclose(raw[["onset", "offset"]], ref[["onset", "offset"]], atol=1e-9)
        np.testing.assert_allclose(raw[CLASSES], ref[CLASSES], atol=1e-4)
        pred = detector.predict_file(native_data / "audio" / f"{name}.wav", postprocess=False)
        np.testing.assert_allclose(raw[CLASSES].to_numpy().T, pred.probabilities, atol=1e-5)
        np.testing.assert_allclose(raw["onset"], pred.timestamps[:-1], atol=1e-9)


def test_native_rate_windows_off_the_sample_grid_follow_the_frame_grid(native_data):
    """A hop of 7 frames is 19,756.8 samples at 44.1 kHz: window starts are rounded to the nearest sample and the
    merged probabilities stay within 1e-4 of the same weights run on the loader-resampled audio at 16 kHz (measured
    6.8e-6: half a sample of misalignment at most, and the window edges)."""
    native, reference = (
        Detector(_native_module(), device="cpu", hop=7 * 0.064),
        Detector(_module(), device="cpu", hop=7 * 0.064),
    )
    assert native.hop_frames == reference.hop_frames == 7
    starts = native.window_starts(4 * NATIVE)
    assert list(starts) == [round(k * 7 * 1024 * NATIVE / RATE) for k in range(len(starts))] and starts[1] == 19757
    got = native.predict_file(native_data / "audio" / "long.wav", postprocess=False)
    ref = reference.predict_file(native_data / "audio" / "long.wav", postprocess=False)
    np.testing.assert_allclose(got.timestamps, ref.timestamps, atol=1e-9)
    np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-4)


def test_event_in_a_native_rate_long_clip_is_detected(native_data, tmp_path):
    module = _native_module()
    module.student, module.teacher = Loudness(), Loudness()
    _test_run(module, native_data, tmp_path)
    metrics = module.test_results["teacher"]
    assert metrics["event_f1@0.5/dog"] == 1.0 and metrics["intersection_f1@0.5/dog"] == 1.0
