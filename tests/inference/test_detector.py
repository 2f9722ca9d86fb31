"""Inference on recordings of any length: windowing, merging, resampling, outputs and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from sed.data.inputs import collect_inputs
from sed.infer import Detector, main

CLASSES = ["alarm", "dog", "speech"]
CLIP = 2.0
RATE = 16000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained SEDModule saved the way load_from_checkpoint reads it."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from sed.run.config import Config
    from sed.training.module import SEDModule

    cfg = OmegaConf.structured(Config)
    cfg.paths.run_dir = "unused"
    cfg.data.root = "unused"
    cfg.data.sample_rate = RATE
    cfg.data.clip_duration = CLIP
    cfg.features.n_fft = 512
    cfg.features.win_length = 512
    cfg.features.n_mels = 16
    cfg.model.filters = [4, 8]
    cfg.model.pooling = [[2, 4], [2, 4]]
    cfg.model.rnn_hidden = 8
    cfg.model.rnn_layers = 1
    cfg.evaluation.median_window = [3]
    cfg.evaluation.thresholds = [0.5, 0.3]
    torch.manual_seed(0)
    module = SEDModule(OmegaConf.to_container(cfg, resolve=True), CLASSES)
    with torch.no_grad():  # make the teacher differ from the student
        for p in module.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def detector(checkpoint):
    return Detector.from_checkpoint(checkpoint, device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def long_stereo(tmp_path_factory):
    """25 s of 44.1 kHz stereo: tones and noise bursts that differ between channels."""
    rate = 44100
    t = np.arange(int(25 * rate)) / rate
    rng = np.random.default_rng(0)
    left = 0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 0.1 * t) > 0)
    right = 0.1 * rng.standard_normal(t.shape) * ((t % 7) < 2)
    path = tmp_path_factory.mktemp("audio") / "long_stereo.wav"
    sf.write(path, np.stack([left, right], axis=1).astype(np.float32), rate, subtype="FLOAT")
    return path


def _direct(detector: Detector, wav: torch.Tensor) -> np.ndarray:
    """The network run on one clip-length window, without any windowing logic."""
    with torch.no_grad():
        out = detector.network(detector.module.features(wav[None]))
    return out.strong[0, :, : detector.window_frames].numpy()


def test_from_checkpoint_reads_model_settings(detector):
    assert detector.classes == CLASSES
    assert detector.sample_rate == RATE
    assert detector.window_samples == int(CLIP * RATE)
    assert detector.frame_duration == pytest.approx(256 * 4 / RATE)
    assert detector.window_frames == 31
    assert detector.hop_frames == 15  # half a window, on the frame grid
    assert detector.median_window == 3
    assert detector.default_threshold == 0.5
    assert detector.model_name == "teacher" and detector.network is detector.module.teacher


def test_one_clip_equals_direct_model(detector):
    wav = torch.randn(int(CLIP * RATE), generator=torch.Generator().manual_seed(1)) * 0.1
    pred = detector.predict(wav, RATE, postprocess=False)
    assert pred.probabilities.shape == (3, 31)
    np.testing.assert_allclose(pred.probabilities, _direct(detector, wav), atol=1e-6)
    # The frame grid of the test outputs: 31 frames of 64 ms end at 1.984 s; the last 16 ms hold no whole frame
    # (the network's trailing frame is dropped as in training) and are not stretched into the last one.
    np.testing.assert_array_equal(pred.timestamps, np.arange(32) * detector.frame_duration)
    # Median filtering is the model's filter, applied after merging.
    from sed.evaluation.postprocess import median_filter

    filtered = detector.predict(wav, RATE).probabilities
    np.testing.assert_allclose(filtered, median_filter(_direct(detector, wav), 3), atol=1e-6)


def test_overlapping_windows_are_averaged(detector):
    n = int(3.5 * RATE)
    wav = torch.randn(n, generator=torch.Generator().manual_seed(2)) * 0.1
    starts = detector.window_starts(n)
    hop = detector.hop_frames * detector.frame_samples
    assert list(starts) == [0, hop, 2 * hop]  # 3.5 s: three 2-s windows at a ~1-s hop, the last one padded
    assert starts[-1] + detector.window_samples >= n > starts[-2] + detector.window_samples
    pred = detector.predict(wav, RATE, postprocess=False)
    h, w = detector.hop_frames, detector.window_frames
    padded = torch.nn.functional.pad(wav, (0, int(starts[-1]) + detector.window_samples - n))
    sums = np.zeros((3, 2 * h + w))
    counts = np.zeros(2 * h + w)
    for k, start in enumerate(starts):
        sums[:, k * h : k * h + w] += _direct(detector, padded[start : start + detector.window_samples])
        counts[k * h : k * h + w] += 1
    keep = int(np.ceil(n / detector.frame_samples))
    assert pred.probabilities.shape == (3, keep)
    np.testing.assert_allclose(pred.probabilities, (sums / counts)[:, :keep], atol=1e-6)
    assert pred.timestamps[-1] == pytest.approx(3.5)


def test_channels_are_averaged(detector, tmp_path):
    rng = np.random.default_rng(5)
    stereo = (0.1 * rng.standard_normal((int(CLIP * RATE), 2))).astype(np.float32)
    sf.write(tmp_path / "stereo.wav", stereo, RATE, subtype="FLOAT")
    from_file = detector.predict_file(tmp_path / "stereo.wav").probabilities
    np.testing.assert_allclose(from_file, detector.predict(stereo.mean(axis=1), RATE).probabilities, atol=1e-6)
    np.testing.assert_allclose(from_file, detector.predict(stereo.T, RATE).probabilities, atol=1e-6)  # [C, N]
    np.testing.assert_allclose(from_file, detector.predict(stereo, RATE).probabilities, atol=1e-6)  # [N, C]


def test_student_and_hop_options(checkpoint):
    wav = np.random.default_rng(3).standard_normal(int(5 * RATE)).astype(np.float32) * 0.1
    teacher = Detector.from_checkpoint(checkpoint, device="cpu").predict(wav, RATE).probabilities
    student = Detector.from_checkpoint(checkpoint, model="student", device="cpu").predict(wav, RATE).probabilities
    assert teacher.shape == student.shape and not np.allclose(teacher, student)
    fine = Detector.from_checkpoint(checkpoint, device="cpu", hop=0.5)
    assert fine.hop_frames == 8  # 0.5 s rounded to whole 64-ms frames
    assert fine.predict(wav, RATE).probabilities.shape == teacher.shape
    with pytest.raises(ValueError, match="hop"):
        Detector.from_checkpoint(checkpoint, device="cpu", hop=5.0)
    with pytest.raises(ValueError, match="model"):
        Detector.from_checkpoint(checkpoint, model="teachr")


def test_long_44k_stereo_file(detector, long_stereo):
    """The issue's case: 25 s at 44.1 kHz, two channels."""
    pred = detector.predict_file(long_stereo)
    assert pred.probabilities.shape == (3, int(np.ceil(25 * RATE / detector.frame_samples)))
    assert pred.timestamps[0] == 0.0 and pred.timestamps[-1] == pytest.approx(25.0)
    assert np.isfinite(pred.probabilities).all()
    assert (pred.probabilities >= 0).all() and (pred.probabilities <= 1).all()
    events = detector.events(pred, long_stereo.name)
    assert list(events.columns) == ["filename", "onset", "offset", "event_label"]
    assert (events["onset"] >= 0).all() and (events["offset"] <= 25.0 + 1e-9).all()
    assert (events["onset"] < events["offset"]).all()
    # Threshold 0: every class active over the whole recording, up to its very end.
    everything = detector.events(pred, long_stereo.name, threshold=0.0)
    assert sorted(everything["event_label"]) == CLASSES
    assert (everything["onset"] == 0).all() and np.allclose(everything["offset"], 25.0)


def test_cli_end_to_end(checkpoint, long_stereo, tmp_path):
    from sed_scores_eval.base_modules.io import read_sed_scores

    from sed.data.tsv import read_strong

    folder = tmp_path / "clips"
    folder.mkdir()
    rng = np.random.default_rng(4)
    sf.write(folder / "short_8k.wav", (0.1 * rng.standard_normal(int(1.3 * 8000))).astype(np.float32), 8000)
    sf.write(folder / "mono_16k.flac", (0.1 * rng.standard_normal(int(4.5 * RATE))).astype(np.float32), RATE)
    out = tmp_path / "out" / "events.tsv"
    scores_dir = tmp_path / "scores"
    rc = main(
        [
            str(checkpoint),
            str(long_stereo),
            str(folder),
            "-o",
            str(out),
            "--scores-dir",
            str(scores_dir),
            "--threshold",
            "0.4",
            "--device",
            "cpu",
            "--batch-size",
            "3",
            "-q",
        ]
    )
    assert rc == 0
    events = read_strong(out, CLASSES)
    assert set(events["filename"]) <= {"long_stereo.wav", "short_8k.wav", "mono_16k.flac"}
    durations = {"long_stereo.wav": 25.0, "short_8k.wav": 1.3, "mono_16k.flac": 4.5}
    for name, group in events.groupby("filename"):
        assert (group["onset"] >= 0).all() and (group["offset"] <= durations[name] + 1e-9).all()
    scores = read_sed_scores(scores_dir)
    assert set(scores) == {"long_stereo", "short_8k", "mono_16k"}
    for key, df in scores.items():
        assert list(df.columns) == ["onset", "offset", *CLASSES]
        assert df["onset"].iloc[0] == 0 and df["offset"].iloc[-1] == pytest.approx(
            durations[next(n for n in durations if n.rsplit(".", 1)[0] == key)]
        )
    # Detections at the CLI threshold are the score files thresholded (after the median filter).
    det = Detector.from_checkpoint(checkpoint, device="cpu")
    expected = det.detect_file(folder / "mono_16k.flac", threshold=0.4)
    got = events[events["filename"] == "mono_16k.flac"]
    pd.testing.assert_frame_equal(
        got[["onset", "offset", "event_label"]].reset_index(drop=True),
        expected[["onset", "offset", "event_label"]],
        check_exact=False,
        atol=1e-6,
    )


def test_cli_tsv_input(checkpoint, tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(audio / name, np.zeros(RATE, dtype=np.float32), RATE)
    tsv = tmp_path / "list.tsv"
    tsv.write_text("filename\tonset\toffset\tevent_label\na.wav\t0\t1\tdog\na.wav\t0.2\t0.5\tcat\nb.wav\t\t\t\n")
    assert [n for n, _ in collect_inputs([tsv], audio)] == ["a.wav", "b.wav"]
    out = tmp_path / "events.tsv"
    assert main([str(checkpoint), str(tsv), "--audio-dir", str(audio), "-o", str(out), "--device", "cpu", "-q"]) == 0
    assert out.read_text().splitlines()[0] == "filename\tonset\toffset\tevent_label"


def test_cli_errors_name_the_file(checkpoint, tmp_path, capsys):
    missing_ckpt = tmp_path / "nope.ckpt"
    clip = tmp_path / "ok.wav"
    sf.write(clip, np.zeros(RATE, dtype=np.float32), RATE)
    assert main([str(missing_ckpt), str(clip), "-o", str(tmp_path / "e.tsv")]) == 2
    assert f"{missing_ckpt}: checkpoint not found" in capsys.readouterr().err

    broken = tmp_path / "broken.wav"
    broken.write_text("not audio")
    assert main([str(checkpoint), str(broken), "-o", str(tmp_path / "e.tsv"), "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "cannot read audio" in err
    assert not (tmp_path / "e.tsv").exists()

    assert main([str(checkpoint), str(tmp_path / "ghost.wav"), "--device", "cpu"]) == 2
    assert "ghost.wav" in capsys.readouterr().err

    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), RATE)
    with pytest.raises(ValueError, match="empty.wav"):
        Detector.from_checkpoint(checkpoint, device="cpu").predict_file(empty)


def test_cli_scores_dir_holds_one_run_only(checkpoint, tmp_path, capsys):
    """Re-running into the --scores-dir of an earlier run replaces its score files (sed.score would otherwise
    score stale clips too); a folder holding files of the user's is refused and left untouched."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        sf.write(clips / name, np.zeros(RATE, dtype=np.float32), RATE)
    scores = tmp_path / "scores"
    common = ["--scores-dir", str(scores), "--device", "cpu", "-q"]
    assert (
        main([str(checkpoint), str(clips / "a.wav"), str(clips / "b.wav"), "-o", str(tmp_path / "1.tsv"), *common]) == 0
    )
    assert sorted(p.name for p in scores.iterdir()) == ["a.tsv", "b.tsv"]
    assert main([str(checkpoint), str(clips / "c.wav"), "-o", str(tmp_path / "2.tsv"), *common]) == 0
    assert sorted(p.name for p in scores.iterdir()) == ["c.tsv"]

    user = tmp_path / "mine"
    user.mkdir()
    (user / "a.tsv").write_text("my own table\n")
    rc = main(
        [str(checkpoint), str(clips), "-o", str(tmp_path / "3.tsv"), "--scores-dir", str(user), "--device", "cpu"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert str(user) in err and "not written by sed" in err, err
    assert (user / "a.tsv").read_text() == "my own table\n" and len(list(user.iterdir())) == 1
    assert not (tmp_path / "3.tsv").exists()


def test_cli_refuses_outputs_that_would_replace_inputs_or_audio(checkpoint, tmp_path, capsys):
    """`-o x.wav` with x.wav an input replaced the recording with the detections TSV (exit 0). An output that is one
    of the inputs (an audio file, a file of an input folder, a TSV input), an existing audio file, a --scores-dir
    holding inputs (it is replaced whole), or an -o inside --scores-dir is refused before any work, naming it, and
    nothing is touched."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(clips / name, 0.1 * np.ones(RATE, dtype=np.float32), RATE)
    listing = tmp_path / "list.tsv"
    listing.write_text("filename\na.wav\n")
    other_audio = tmp_path / "other.flac"
    sf.write(other_audio, np.zeros(RATE, dtype=np.float32), RATE)
    before = {p: p.read_bytes() for p in [clips / "a.wav", clips / "b.wav", listing, other_audio]}
    cases = {
        (str(clips / "a.wav"), "-o", str(clips / "a.wav")): "is one of the inputs",
        (str(clips), "-o", str(clips / "b.wav")): "is one of the inputs",
        (str(listing), "--audio-dir", str(clips), "-o", str(listing)): "is one of the inputs",
        (str(clips / "a.wav"), "-o", str(other_audio)): "is an existing audio file",
        (str(clips), "-o", str(tmp_path / "e.tsv"), "--scores-dir", str(clips)): "holds input",
        (str(clips / "a.wav"), "-o", str(tmp_path / "e.tsv"), "--scores-dir", str(tmp_path)): "holds input",
        (str(clips / "a.wav"), "-o", str(tmp_path / "s" / "e.tsv"), "--scores-dir", str(tmp_path / "s")): "inside",
    }
    for args, reason in cases.items():
        assert main([str(checkpoint), *args, "--device", "cpu", "-q"]) == 2, args
        err = capsys.readouterr().err
        assert reason in err and err.count("\n") == 1, (args, err)
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "e.tsv").exists() and not (tmp_path / "s").exists()


def test_cli_reports_every_bad_file_and_keeps_the_good_ones(checkpoint, tmp_path, capsys):
    """One unreadable, one NaN and one empty file among good ones: the good files are processed and written, each
    bad file gets one line naming it and why, and the exit status is 1. --nonfinite zero reads the NaN file as
    silence instead."""
    from sed_scores_eval.base_modules.io import read_sed_scores

    clips = tmp_path / "clips"
    clips.mkdir()
    rng = np.random.default_rng(6)
    for name in ("good1.wav", "good2.wav"):
        sf.write(clips / name, (0.1 * rng.standard_normal(RATE)).astype(np.float32), RATE)
    (clips / "broken.wav").write_text("not audio")
    nan = (0.1 * rng.standard_normal(RATE)).astype(np.float32)
    nan[100] = np.nan
    sf.write(clips / "nan.wav", nan, RATE, subtype="FLOAT")
    sf.write(clips / "empty.wav", np.zeros(0, dtype=np.float32), RATE)
    out, scores = tmp_path / "events.tsv", tmp_path / "scores"
    args = [
        str(checkpoint),
        str(clips),
        "-o",
        str(out),
        "--scores-dir",
        str(scores),
        "--threshold",
        "0",
        "--device",
        "cpu",
        "-q",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(lines) == 3, err
    for name, why in (("broken.wav", "cannot read audio"), ("nan.wav", "non-finite"), ("empty.wav", "empty audio")):
        (line,) = [line for line in lines if name in line]
        assert str(clips / name) in line and why in line, line
    (line,) = [line for line in lines if "nan.wav" in line]
    assert "--nonfinite zero" in line and "data.nonfinite_audio" not in line, line  # this command's option
    assert "3 of 5 file(s)" in err
    assert set(pd.read_csv(out, sep="\t")["filename"]) == {"good1.wav", "good2.wav"}  # threshold 0: all active
    assert sorted(read_sed_scores(scores)) == ["good1", "good2"]

    assert main([*args, "--nonfinite", "zero"]) == 1
    assert "nan.wav" not in "\n".join(line for line in capsys.readouterr().err.splitlines() if line.startswith("  "))
    assert sorted(read_sed_scores(scores)) == ["good1", "good2", "nan"]
    assert np.isfinite(read_sed_scores(scores)["nan"].to_numpy()).all()


def test_cli_nothing_processed_exits_2_and_writes_nothing(checkpoint, tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "a.wav").write_text("not audio")
    (clips / "b.wav").write_text("not audio either")
    out = tmp_path / "events.tsv"
    out.write_text("an earlier result\n")
    assert (
        main([str(checkpoint), str(clips), "-o", str(out), "--scores-dir", str(tmp_path / "s"), "--device", "cpu"]) == 2
    )
    err = capsys.readouterr().err
    assert "a.wav" in err and "b.wav" in err
    assert out.read_text() == "an earlier result\n" and not (tmp_path / "s").exists()


def test_cli_output_without_detections_scores_zero(checkpoint, tmp_path, capsys):
    """What sed.infer writes when it detects nothing (a header-only event TSV) is accepted by sed.score."""
    import json

    from sed.score import main as score

    sf.write(tmp_path / "quiet.wav", np.zeros(RATE, dtype=np.float32), RATE)
    out = tmp_path / "events.tsv"
    assert (
        main(
            [str(checkpoint), str(tmp_path / "quiet.wav"), "-o", str(out), "--threshold", "1", "--device", "cpu", "-q"]
        )
        == 0
    )
    assert out.read_text() == "filename\tonset\toffset\tevent_label\n"
    gt = tmp_path / "gt.tsv"
    gt.write_text("filename\tonset\toffset\tevent_label\nquiet.wav\t0.2\t0.6\tdog\n")
    assert score([str(out), "-g", str(gt), "--json", str(tmp_path / "m.json")]) == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["event_f1/dog"] == 0 and metrics["event_recall_micro"] == 0


# ---------------------------------------------------------------------- median filter and thresholds options
@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "mix.wav"
    rng = np.random.default_rng(11)
    t = np.arange(int(4.5 * RATE)) / RATE
    sf.write(
        path,
        (0.3 * np.sin(2 * np.pi * 500 * t) * ((t % 1.2) < 0.5) + 0.02 * rng.standard_normal(t.shape)).astype(
            np.float32
        ),
        RATE,
    )
    return path


def _events(args, tmp_path, name="e.tsv") -> pd.DataFrame:
    out = tmp_path / name
    assert main([*args, "-o", str(out), "--device", "cpu", "-q"]) == 0
    return pd.read_csv(out, sep="\t")


def _expected(detector, path, window, threshold) -> pd.DataFrame:
    from sed.evaluation.postprocess import median_filter

    raw = detector.predict_file(path, postprocess=False)
    prediction = raw._replace(probabilities=median_filter(raw.probabilities, window))
    return detector.events(prediction, path.name, threshold).reset_index(drop=True)


def _same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert len(expected) > 0
    pd.testing.assert_frame_equal(
        got[["onset", "offset", "event_label"]].reset_index(drop=True),
        expected[["onset", "offset", "event_label"]],
        check_exact=False,
        atol=1e-9,
        check_dtype=False,
    )


def test_cli_median_window_one_or_per_class(checkpoint, detector, clip_file, tmp_path, capsys):
    """--median-window replaces the checkpoint's filter (3): one length, or one per class in class order."""
    got = _events([str(checkpoint), str(clip_file), "--median-window", "9", "--threshold", "0.45"], tmp_path)
    _same(got, _expected(detector, clip_file, 9, 0.45))
    got = _events([str(checkpoint), str(clip_file), "--median-window", "1,5,11", "--threshold", "0.45"], tmp_path)
    _same(got, _expected(detector, clip_file, [1, 5, 11], 0.45))
    default = _events([str(checkpoint), str(clip_file), "--threshold", "0.45"], tmp_path)
    _same(default, _expected(detector, clip_file, 3, 0.45))
    for bad, why in (("3,5", "2 lengths for 3 classes"), ("0", ">= 1"), ("seven", "expected an int")):
        assert main([str(checkpoint), str(clip_file), "--median-window", bad, "-o", str(tmp_path / "x.tsv")]) == 2
        err = capsys.readouterr().err
        assert "--median-window" in err and why in err, err
    assert not (tmp_path / "x.tsv").exists()


def test_cli_classwise_thresholds_pairs_json_and_tsv(checkpoint, detector, clip_file, tmp_path, capsys):
    """--thresholds sets some classes' thresholds (pairs, JSON or TSV file); the others keep --threshold (or the
    checkpoint's first evaluation threshold, 0.5)."""
    wanted = {"alarm": 0.3, "dog": 0.5, "speech": 0.62}
    expected = _expected(detector, clip_file, 3, wanted)
    assert expected["event_label"].nunique() > 1
    pairs = _events([str(checkpoint), str(clip_file), "--thresholds", "alarm=0.3,speech=0.62"], tmp_path)
    _same(pairs, expected)
    (tmp_path / "t.json").write_text(json.dumps({"alarm": 0.3, "speech": 0.62}))
    _same(_events([str(checkpoint), str(clip_file), "--thresholds", str(tmp_path / "t.json")], tmp_path), expected)
    (tmp_path / "t.tsv").write_text("event_label\tthreshold\nalarm\t0.3\nspeech\t0.62\n")
    _same(_events([str(checkpoint), str(clip_file), "--thresholds", str(tmp_path / "t.tsv")], tmp_path), expected)
    # Classes not named keep --threshold.
    mixed = _events([str(checkpoint), str(clip_file), "--threshold", "0.4", "--thresholds", "speech=0.62"], tmp_path)
    _same(mixed, _expected(detector, clip_file, 3, {"alarm": 0.4, "dog": 0.4, "speech": 0.62}))

    (tmp_path / "bad.tsv").write_text("event_label\tthreshold\nalarm\t0.3\nspeech\thigh\n")
    for spec, why in (
        ("cat=0.3", "unknown class(es) ['cat']"),
        ("alarm:0.3", "no such file (or give CLASS=VALUE pairs)"),
        ("alarm=0.3,dog", "expected CLASS=VALUE"),
        ("dog=1.5", "not a probability"),
        (str(tmp_path / "bad.tsv"), "bad.tsv:3: threshold 'high'"),
        (str(tmp_path / "missing.json"), "no such file"),
    ):
        assert main([str(checkpoint), str(clip_file), "--thresholds", spec, "-o", str(tmp_path / "x.tsv")]) == 2
        err = capsys.readouterr().err
        assert why in err, err
    assert not (tmp_path / "x.tsv").exists()


def test_event_times_are_written_like_the_test_outputs(checkpoint, detector, clip_file, tmp_path):
    """Onsets and offsets are frame boundaries k * frame_duration (float64, as LabelEncoder.frame_timestamps),
    written with write_strong's %.10g: the format of events_th*.tsv (checked against a run's files in
    test_export.py); the last offset is cut at the end of the file."""
    from sed.data.tsv import write_strong

    events = detector.detect_file(clip_file, threshold=0.0)  # every class active throughout
    assert np.allclose(events["offset"], 4.5) and (events["onset"] == 0).all()
    events = detector.detect_file(clip_file, threshold=0.45)
    frames = np.asarray(events["onset"]) / detector.frame_duration
    np.testing.assert_array_equal(np.asarray(events["onset"]), np.round(frames) * detector.frame_duration)
    write_strong(events, tmp_path / "ref.tsv")
    assert (
        main(
            [
                str(checkpoint),
                str(clip_file),
                "--threshold",
                "0.45",
                "-o",
                str(tmp_path / "e.tsv"),
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    assert (tmp_path / "e.tsv").read_text() == (tmp_path / "ref.tsv").read_text()
