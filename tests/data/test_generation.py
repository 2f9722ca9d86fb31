"""data.generate: each embedded dataset is generated with its own sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

import sed.synth
from sed.data.generation import generate
from sed.data.sets import Dataset

CLIP_SIZES = {"strong": 4, "weak": 2, "unlabeled": 4, "validation": 2, "test": 2}


def _dataset(tmp_path: Path, kind: str, own_sizes: dict | None = None) -> Dataset:
    return Dataset(
        name=kind, key=f"data.datasets.{kind}", root=tmp_path / kind, generate=kind, generate_sizes=own_sizes or {}
    )


@pytest.mark.parametrize("own", [None, {"train": 1}])
def test_the_clips_sizes_never_reach_the_recordings_generator(tmp_path, monkeypatch, own):
    """data.generate_sizes (the clips' splits: strong, weak, ...) were passed to the recordings generator, whose
    splits are train/validation/test, so `python train.py exp=multi_dataset_quick` failed on a fresh machine."""
    seen = {}
    monkeypatch.setattr(sed.synth, "generate_recordings", lambda root, **kw: seen.update(kw))
    generate(_dataset(tmp_path, "recordings", own), seed=0, clip_duration=10.0, sample_rate=16000, sizes=CLIP_SIZES)
    assert seen["sizes"] == own


def test_the_clips_dataset_takes_data_generate_sizes(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(sed.synth, "generate_dataset", lambda root, **kw: seen.update(kw))
    generate(_dataset(tmp_path, "clips"), seed=0, clip_duration=10.0, sample_rate=16000, sizes=CLIP_SIZES)
    assert seen["sizes"] == CLIP_SIZES
