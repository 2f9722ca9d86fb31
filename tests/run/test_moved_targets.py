"""Checkpoints written before the package was grouped by stage (configs naming ``sed.features.FrontEnd``,
``sed.scaler.TorchScaler``, ``sed.datamodule.SEDDataModule``, ...) keep loading, evaluating and resuming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sed.run.checkpointing import check_resumable
from sed.run.config import MOVED_TARGETS, upgrade_targets

FIXTURE = Path(__file__).parent / "fixtures" / "before_layout_move.ckpt"  # tiny run of commit 55020a5


@pytest.fixture(scope="module")
def checkpoint() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=False)


def test_fixture_names_the_old_paths(checkpoint):
    cfg = checkpoint["hyper_parameters"]["config"]
    assert cfg["features"]["_target_"] == "sed.features.FrontEnd"
    assert cfg["scaler"]["_target_"] == "sed.scaler.TorchScaler"
    assert cfg["data"]["_target_"] == "sed.datamodule.SEDDataModule"


def test_every_moved_target_resolves():
    from hydra.utils import get_class

    for old, new in MOVED_TARGETS.items():
        assert upgrade_targets({"a": [{"_target_": old}]}) == {"a": [{"_target_": new}]}
        get_class(new)


def test_old_checkpoint_rebuilds_and_detects(checkpoint):
    from sed.inference.detector import Detector

    det = Detector.from_checkpoint(FIXTURE)
    state = det.module.state_dict()
    for key, value in checkpoint["state_dict"].items():
        same = torch.equal(state[key], value) if isinstance(value, torch.Tensor) else state[key] == value
        assert same, key
    audio = np.random.default_rng(0).standard_normal(32000).astype("float32") * 0.1
    prediction = det.predict(audio, 16000)
    assert prediction.probabilities.shape[0] == len(checkpoint["hyper_parameters"]["classes"])
    assert np.isfinite(prediction.probabilities).all()


def test_old_checkpoint_resumes_under_the_new_paths(checkpoint):
    saved = checkpoint["hyper_parameters"]["config"]
    now = upgrade_targets(saved)  # what this version composes for the same run
    assert now["features"]["_target_"] == "sed.features.frontend.FrontEnd"
    check_resumable(FIXTURE, checkpoint, now, checkpoint["hyper_parameters"]["classes"])
