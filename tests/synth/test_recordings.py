"""The MAESTRO-like recordings (sed.synth.recordings): layout, soft labels from simulated annotators, safety."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest
import soundfile as sf

from sed.data.tsv import read_durations, read_strong
from sed.synth import (
    ALIASES,
    DEFAULT_CLASSES,
    EVALUATED_CLASSES,
    RECORDING_CLASSES,
    GenerationRefused,
    generate_recordings,
)
from sed.synth.__main__ import main as cli_main
from sed.synth.recordings import RecordingConfig

SIZES = {"train": 2, "validation": 1, "test": 1}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    return generate_recordings(tmp_path_factory.mktemp("rec") / "r", seed=1, sizes=SIZES, duration=30.0)


def test_layout_long_recordings_and_soft_labels(recordings):
    classes = (recordings / "classes.txt").read_text().split("\n")[:-1]
    assert classes == list(RECORDING_CLASSES)
    for split, n in SIZES.items():
        files = sorted((recordings / "audio" / split).iterdir())
        assert len(files) == n
        durations = read_durations(recordings / "metadata" / split / "durations.tsv")
        assert set(durations) == {f.name for f in files} and set(durations.values()) == {30.0}
        assert all(sf.info(f).duration == 30.0 and sf.info(f).samplerate == 16000 for f in files)
        events = read_strong(recordings / "metadata" / split / f"{split}.tsv", classes, merge_overlaps=False)
        assert "confidence" in events.columns and len(events) >= 4 * n  # about 24 events a minute
        conf = events["confidence"].to_numpy()
        assert ((conf > 0) & (conf <= 1)).all()
        np.testing.assert_allclose(conf * 5, np.round(conf * 5), atol=1e-9)  # the share of 5 annotators
        assert (events["offset"] <= 30.0).all() and (events["onset"] < events["offset"]).all()
    assert (recordings / ".complete").is_file() and not (recordings / ".generating").exists()


def test_vocabulary_partly_shared_with_the_clips():
    assert set(ALIASES) < set(RECORDING_CLASSES) and set(ALIASES.values()) < set(DEFAULT_CLASSES)
    assert set(RECORDING_CLASSES) & set(DEFAULT_CLASSES) == {"footsteps"}  # one class under the same name
    assert set(EVALUATED_CLASSES) < set(RECORDING_CLASSES) and len(EVALUATED_CLASSES) < len(RECORDING_CLASSES)


def test_confidence_is_the_share_of_annotators_who_noticed_the_event(tmp_path):
    loud = RecordingConfig(snr_range=(40.0, 40.0), boundary_error=0.0, annotators=3)
    root = generate_recordings(
        tmp_path / "loud", sizes={"train": 1, "validation": 1, "test": 1}, duration=20.0, config=loud
    )
    events = read_strong(root / "metadata/train/train.tsv", list(RECORDING_CLASSES), merge_overlaps=False)
    assert (events["confidence"] == 1.0).all()  # loud events: every annotator noticed them
    quiet = RecordingConfig(snr_range=(0.0, 0.0), annotators=20)
    root = generate_recordings(
        tmp_path / "quiet", sizes={"train": 1, "validation": 1, "test": 1}, duration=60.0, config=quiet
    )
    conf = read_strong(root / "metadata/train/train.tsv", list(RECORDING_CLASSES), merge_overlaps=False)["confidence"]
    assert 0.05 < conf.mean() < 0.4  # at 0 dB an annotator notices about one event in six


def test_deterministic_and_never_overwrites(recordings, tmp_path):
    again = generate_recordings(tmp_path / "again", seed=1, sizes=SIZES, duration=30.0)
    match, mismatch, errors = filecmp.cmpfiles(
        recordings, again, ["audio/train/street_train_001.wav", "metadata/train/train.tsv"], shallow=False
    )
    assert not mismatch and not errors
    assert generate_recordings(recordings, seed=1, sizes=SIZES, duration=30.0) == recordings  # complete: kept
    with pytest.raises(GenerationRefused, match="other settings.*seed: 1 there, 2 asked"):
        generate_recordings(recordings, seed=2, sizes=SIZES, duration=30.0)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(GenerationRefused, match="no marker of the recordings generator"):
        generate_recordings(mine, sizes=SIZES, duration=30.0)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_command_line(tmp_path, capsys):
    assert (
        cli_main(
            [
                str(tmp_path / "r"),
                "--recordings",
                "--n-train",
                "1",
                "--n-validation",
                "1",
                "--n-test",
                "1",
                "--duration",
                "12",
            ]
        )
        == 0
    )
    assert "wrote 3 recordings of 12 s" in capsys.readouterr().out
    assert cli_main([str(tmp_path / "r"), "--recordings", "--n-train", "2", "--duration", "12"]) == 2
    assert "other settings" in capsys.readouterr().err
