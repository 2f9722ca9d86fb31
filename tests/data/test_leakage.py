"""Clips shared between sets: a training clip listed in two labelled sets, or an evaluation clip that is also a
training clip (the same file, or the same audio under another name), is a warning with counts."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import soundfile as sf

from sed.data.checks import ClipSet
from sed.data.leakage import shared_clips, warn_shared_clips

SR = 16000


def _clip(path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(seed).uniform(-0.5, 0.5, SR).astype(np.float32), SR, subtype="FLOAT")


def test_shared_files_and_copies_are_found_and_warned_with_counts(tmp_path, caplog):
    root = tmp_path / "audio"
    for i in range(4):
        _clip(root / "strong" / f"s{i}.wav", i)
        _clip(root / "weak" / f"w{i}.wav", 10 + i)
        _clip(root / "test" / f"t{i}.wav", 20 + i)
    shutil.copy(root / "strong" / "s0.wav", root / "weak" / "copy_of_s0.wav")  # same audio, another name
    shutil.copy(root / "strong" / "s1.wav", root / "test" / "t_from_s1.wav")
    # a test clip listed from the training folder itself (the same file), and a different clip of equal size
    sets = [
        ClipSet("strong", root / "strong", [f"s{i}.wav" for i in range(4)]),
        ClipSet("weak", root / "weak", [*(f"w{i}.wav" for i in range(4)), "copy_of_s0.wav"]),
        ClipSet("test", root / "test", [*(f"t{i}.wav" for i in range(4)), "t_from_s1.wav", "../strong/s2.wav"]),
    ]
    found = {(a, b): sorted(pairs) for a, b, pairs in shared_clips(sets)}
    assert found == {
        ("weak", "strong"): [("copy_of_s0.wav", "s0.wav")],
        ("test", "strong"): [("../strong/s2.wav", "s2.wav"), ("t_from_s1.wav", "s1.wav")],
    }
    caplog.set_level(logging.WARNING, logger="sed.data.leakage")
    warn_shared_clips(sets)
    text = caplog.text
    assert "1 clip(s) of the weak set are also in the strong set" in text and "copy_of_s0.wav" in text
    assert "2 clip(s) of the test set are also in the strong set" in text and "optimistic" in text
    caplog.clear()
    warn_shared_clips([sets[0], ClipSet("test", root / "test", [f"t{i}.wav" for i in range(4)])])
    assert not caplog.text  # nothing shared: no warning


def test_sets_of_several_datasets_are_paired_by_their_roles(tmp_path):
    """With several datasets the sets are named per dataset ("clips/weak", "test/recordings"): their roles (the
    subset's kind, the evaluation stage) decide which pairs are checked."""
    _clip(tmp_path / "a" / "x.wav", 1)
    _clip(tmp_path / "b" / "y.wav", 2)
    shutil.copy(tmp_path / "a" / "x.wav", tmp_path / "b" / "x_copy.wav")
    sets = [
        ClipSet("clips/strong", tmp_path / "a", ["x.wav"]),
        ClipSet("test/recordings", tmp_path / "b", ["y.wav", "x_copy.wav"]),
    ]
    assert shared_clips(sets) == []  # no roles: the names are no roles of PAIRS
    roles = {"clips/strong": "strong", "test/recordings": "test"}
    assert shared_clips(sets, roles) == [("test/recordings", "clips/strong", [("x_copy.wav", "x.wav")])]
