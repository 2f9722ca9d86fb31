"""Recipe cards: what each experiment in conf/exp/ trains with, composed exactly as ``python train.py exp=NAME``
composes it. A value that leaks in from elsewhere (the quick start's learning rate once did into desed_crnn)
fails here."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import sed.run.config  # noqa: F401  (schema and resolvers)

CONF = Path(__file__).resolve().parents[2] / "conf"
# Composing resolves the run-directory resolvers, which claim a directory: keep it out of the repository's exp/.
SCRATCH = f"paths.exp_dir={tempfile.gettempdir()}/sed-test-compose"

# The DCASE 2023 Task 4 baseline (DESED_task recipes/dcase2023_task4_baseline/confs/default.yaml and its CNN).
CARDS = {
    "desed_crnn": {
        "training.lr": 1e-3, "training.warmup_epochs": 50, "training.schedule": "constant",
        "training.ema_factor": 0.999, "training.ema_buffers": False,
        "data.batch_sizes": [12, 12, 24], "data.eval_batch_size": 24, "data.epoch_length": "min",
        "data.weak_val_fraction": 0.1,
        "trainer.max_epochs": 200, "trainer.gradient_clip_val": None,
        "training.mixup.enabled": True, "training.mixup.prob": 0.5, "training.mixup.mode": "soft",
        "training.mixup.domain": "linear", "training.mixup.shared_draw": True,
        "model.bn_eps": 1e-3, "model.bn_momentum": 0.99, "model.dropout": 0.5,
        "features.n_fft": 2048, "features.hop_length": 256, "features.n_mels": 128,
        "scaler.statistic": "instance", "scaler.normtype": "minmax",
        "evaluation.median_window": [7], "evaluation.thresholds": [0.5],
        "evaluation.obj_metric": "weak_f1+intersection_f1", "training.class_balance": 0.0,
        **{f"training.augment.{name}.prob": 0.0 for name in ("filter_augment", "frame_shift", "spec_augment")},
    },
    "quickstart": {
        "training.lr": 3e-3, "training.warmup_epochs": 3, "training.ema_factor": 0.99,
        "model.pooling": [[1, 4], [1, 4], [1, 2], [1, 2]], "features.hop_length": 512,  # 32-ms output frames
        "data.batch_sizes": [8, 8, 8], "trainer.max_epochs": 20, "data.weak_val_fraction": 0.0,
        "training.mixup.domain": "features", "evaluation.median_window": [7],
        "evaluation.obj_metric": "weak_f1+intersection_f1", "evaluation.tune_postprocessing": True,
        "training.augment.filter_augment.prob": 0.5, "training.augment.frame_shift.prob": 0.5,
        "training.augment.frame_shift.std_frames": 45.0, "training.augment.spec_augment.prob": 0.0,
        "training.class_balance": 1.0, "model.dropout": 0.0, "model.dropout_recurrent_out": 0.0, "model.rnn_layers": 1,
    },
}
# Better than the baseline: its card with a run-length-adaptive schedule and post-processing tuned on validation.
CARDS["crnn_plus"] = {
    **CARDS["desed_crnn"], "training.warmup_fraction": 0.25, "training.ema_horizon": 0.04,
    "evaluation.tune_postprocessing": True, "evaluation.postprocessing": "median",
    "training.augment.filter_augment.prob": 0.5, "training.augment.frame_shift.prob": 0.5,
    "training.augment.frame_shift.std_frames": 90.0, "training.class_balance": 1.0,
}
# The DCASE 2024 architecture (a frozen pretrained encoder beside the CNN) with the 2023 baseline's training card.
CARDS["crnn_ast"] = {
    **{k: v for k, v in CARDS["desed_crnn"].items() if k != "model.dropout"},
    "model._target_": "sed.models.pretrained_crnn.PretrainedCRNN", "model.dropout": 0.5,
    "model.embedding_dim": 128, "model.encoder.frozen": True, "model.encoder.finetune_after_epoch": None,
}

# The DCASE 2024 baseline's network (frozen BEATs, pooled frame embeddings concatenated before the BiGRU and
# projected back to the CNN width) with the 2023 card; its embeddings on disk.
CARDS["beats_crnn"] = {
    **CARDS["crnn_ast"], "model.fusion": "concat_then_project",
    "model.encoder._target_": "sed.models.encoders.published.BEATsEncoder", "model.encoder.layer": "last",
    "model.encoder.cache_dir": "/tmp/sed-test-compose/embedding_cache".replace("/tmp", tempfile.gettempdir()),
}
# Two-stage fine-tuning of a frame-level model (ATST-SED's schedule): head first, then the encoder with
# layer-wise decay, its own rate and warm-up, from epoch 10.
CARDS["atst_frame_finetune"] = {
    "model._target_": "sed.models.frame_level.FrameLevelSED", "model.head": "bigru",
    "model.encoder._target_": "sed.models.encoders.published.ATSTFrameEncoder", "model.encoder.frozen": True,
    "model.encoder.finetune_after_epoch": 10, "model.encoder.lr": 2e-4, "model.encoder.layer_decay": 0.5,
    "model.encoder.freeze_layers": 0, "training.lr": 1e-3, "training.warmup_epochs": 5, "trainer.max_epochs": 60,
    "training.ema_factor": 0.999, "data.batch_sizes": [12, 12, 24], "training.mixup.domain": "linear",
    "evaluation.median_window": [7], "scaler.statistic": "instance",
}


def _compose(name: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"exp={name}", "data.root=/data", SCRATCH])


def test_every_recipe_has_a_card():
    assert sorted(p.stem for p in (CONF / "exp").glob("*.yaml")) == sorted(CARDS)


@pytest.mark.parametrize("name", sorted(CARDS))
def test_recipe_card(name):
    cfg = _compose(name)
    for key, value in CARDS[name].items():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, (name, key, got)


def test_default_run_is_the_quickstart_recipe():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        plain = compose("config", overrides=["data.root=/data", SCRATCH])
    quick = _compose("quickstart")
    for key in CARDS["quickstart"]:
        assert OmegaConf.select(plain, key) == OmegaConf.select(quick, key), key
