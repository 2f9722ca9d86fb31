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
        "training.lr": 1e-3,
        "training.warmup_epochs": 50,
        "training.schedule": "constant",
        "training.ema_factor": 0.999,
        "training.ema_buffers": False,
        "data.batch_sizes": [12, 12, 24],
        "data.eval_batch_size": 24,
        "data.epoch_length": "min",
        "data.weak_val_fraction": 0.1,
        "trainer.max_epochs": 200,
        "trainer.gradient_clip_val": None,
        "training.mixup.enabled": True,
        "training.mixup.prob": 0.5,
        "training.mixup.mode": "soft",
        "training.mixup.domain": "linear",
        "training.mixup.shared_draw": True,
        "model.bn_eps": 1e-3,
        "model.bn_momentum": 0.99,
        "model.dropout": 0.5,
        "features.n_fft": 2048,
        "features.hop_length": 256,
        "features.n_mels": 128,
        "scaler.statistic": "instance",
        "scaler.normtype": "minmax",
        "evaluation.median_window": [7],
        "evaluation.thresholds": [0.5],
        "evaluation.obj_metric": "weak_f1+intersection_f1",
        "training.class_balance": 0.0,
        **{f"training.augment.{name}.prob": 0.0 for name in ("filter_augment", "frame_shift", "spec_augment")},
    },
    "quickstart": {
        "training.lr": 3e-3,
        "training.warmup_epochs": 3,
        "training.ema_factor": 0.99,
        "model.pooling": [[1, 4], [1, 4], [1, 2], [1, 2]],
        "features.hop_length": 512,  # 32-ms output frames
        "data.batch_sizes": [8, 8, 8],
        "trainer.max_epochs": 20,
        "data.weak_val_fraction": 0.0,
        "training.mixup.domain": "features",
        "evaluation.median_window": [7],
        "evaluation.obj_metric": "weak_f1+intersection_f1",
        "evaluation.tune_postprocessing": True,
        "training.augment.filter_augment.prob": 0.5,
        "training.augment.frame_shift.prob": 0.5,
        "training.augment.frame_shift.std_frames": 45.0,
        "training.augment.spec_augment.prob": 0.0,
        "training.class_balance": 1.0,
        "model.dropout": 0.0,
        "model.dropout_recurrent_out": 0.0,
        "model.rnn_layers": 1,
    },
}
# Better than the baseline: its card with a run-length-adaptive schedule and post-processing tuned on validation.
CARDS["crnn_plus"] = {
    **CARDS["desed_crnn"],
    "training.warmup_fraction": 0.25,
    "training.ema_horizon": 0.04,
    "evaluation.tune_postprocessing": True,
    "evaluation.postprocessing": "median",
    "training.augment.filter_augment.prob": 0.5,
    "training.augment.frame_shift.prob": 0.5,
    "training.augment.frame_shift.std_frames": 90.0,
    "training.class_balance": 1.0,
}
# The DCASE 2024 architecture (a frozen pretrained encoder beside the CNN) with the 2023 baseline's training card.
CARDS["crnn_ast"] = {
    **{k: v for k, v in CARDS["desed_crnn"].items() if k != "model.dropout"},
    "model._target_": "sed.models.pretrained_crnn.PretrainedCRNN",
    "model.dropout": 0.5,
    "model.embedding_dim": 128,
    "model.encoder.frozen": True,
    "model.encoder.finetune_after_epoch": None,
}

# The DCASE 2024 baseline's network (frozen BEATs, pooled frame embeddings concatenated before the BiGRU and
# projected back to the CNN width) with the 2023 card; its embeddings on disk.
CARDS["beats_crnn"] = {
    **CARDS["crnn_ast"],
    "model.fusion": "concat_then_project",
    "model.encoder._target_": "sed.models.encoders.published.BEATsEncoder",
    "model.encoder.layer": "last",
    "model.encoder.cache_dir": "/tmp/sed-test-compose/embedding_cache".replace("/tmp", tempfile.gettempdir()),
}
# Two-stage fine-tuning of a frame-level model (ATST-SED's schedule): head first, then the encoder with
# layer-wise decay, its own rate and warm-up, from epoch 10.
CARDS["atst_frame_finetune"] = {
    "model._target_": "sed.models.frame_level.FrameLevelSED",
    "model.head": "bigru",
    "model.encoder._target_": "sed.models.encoders.published.ATSTFrameEncoder",
    "model.encoder.frozen": True,
    "model.encoder.finetune_after_epoch": 10,
    "model.encoder.lr": 2e-4,
    "model.encoder.layer_decay": 0.5,
    "model.encoder.freeze_layers": 0,
    "training.lr": 1e-3,
    "training.warmup_epochs": 5,
    "trainer.max_epochs": 60,
    "training.ema_factor": 0.999,
    "data.batch_sizes": [12, 12, 24],
    "training.mixup.domain": "linear",
    "evaluation.median_window": [7],
    "scaler.statistic": "instance",
}
# The DCASE 2024 Task 4 baseline (DESED_task recipes/dcase2024_task4_baseline: confs/pretrained.yaml,
# local/classes_dict.py, train_pretrained.py) with the CRNN alone.
MAESTRO_REAL = [
    "cutlery and dishes",
    "furniture dragging",
    "people talking",
    "children voices",
    "coffee machine",
    "footsteps",
    "large_vehicle",
    "car",
    "brakes_squeaking",
    "cash register beeping",
    "announcement",
    "shopping cart",
    "metro leaving",
    "metro approaching",
    "door opens/closes",
    "wind_blowing",
    "birds_singing",
]
MAESTRO_EVAL = {
    "birds_singing",
    "car",
    "people talking",
    "footsteps",
    "children voices",
    "wind_blowing",
    "brakes_squeaking",
    "large_vehicle",
    "cutlery and dishes",
    "metro approaching",
    "metro leaving",
}
DESED = [
    "Alarm_bell_ringing",
    "Blender",
    "Cat",
    "Dishes",
    "Dog",
    "Electric_shaver_toothbrush",
    "Frying",
    "Running_water",
    "Speech",
    "Vacuum_cleaner",
]
CARDS["dcase2024_crnn"] = {
    "data.classes": DESED + MAESTRO_REAL,  # 27: nclass
    # batch_size [maestro, synth, strong, weak, unlabel] = [12, 6, 6, 12, 24]
    **{
        f"data.datasets.{d}.train.{s}.batch_size": n
        for d, s, n in (
            ("maestro", "real", 12),
            ("desed", "synth", 6),
            ("desed", "strong", 6),
            ("desed", "weak", 12),
            ("desed", "unlabeled", 24),
        )
    },
    "data.datasets.maestro.aliases": {
        "people talking": "Speech",
        "children voices": "Speech",
        "announcement": "Speech",
        "cutlery and dishes": "Dishes",
    },
    "data.datasets.maestro.classes": MAESTRO_REAL + ["Dog"],  # mask_events_maestro_real (+ Speech, Dishes: aliases)
    "data.datasets.desed.classes": DESED,
    "data.datasets.maestro.train.real.window_hop": 1.0,
    "data.datasets.maestro.train.real.consistency": False,
    "data.datasets.maestro.validation.metrics": "mpauc",
    "data.datasets.maestro.test.metrics": "mpauc",
    "data.datasets.maestro.validation.min_confidence": 0.5,
    "data.weak_val_fraction": 0.1,
    "data.epoch_length": "min",
    "data.eval_batch_size": 24,
    "trainer.max_epochs": 300,
    "training.warmup_epochs": 50,
    "training.lr": 1e-3,
    "trainer.gradient_clip_val": 5.0,
    "training.schedule": "quarter_cosine",
    "training.decay_start_epoch": 100,
    "training.min_lr": 1e-8,  # epoch_decay
    "training.consistency_max": 2.0,
    "training.ema_factor": 0.999,
    "training.ema_buffers": False,
    "trainer.check_val_every_n_epoch": 10,
    "training.mixup.enabled": True,
    "training.mixup.prob": 0.5,
    "training.mixup.mode": "soft",
    "training.mixup.domain": "linear",
    "training.mixup.shared_draw": True,
    "model.dropout": 0.2,
    "model.dropout_recurrent_out": 0.2,
    "model.rnn_hidden": 192,
    "model.rnn_layers": 1,
    "model.attention": True,
    "model.filters": [16, 32, 64, 128, 128, 128, 128],
    "model.bn_eps": 1e-3,
    "model.bn_momentum": 0.99,
    "features.n_fft": 2048,
    "features.hop_length": 256,
    "features.n_mels": 128,
    "features.f_max": 8000.0,
    "scaler.statistic": "instance",
    "scaler.normtype": "minmax",
    "evaluation.median_window": [
        3,
        9,
        9,
        5,
        5,
        5,
        9,
        7,
        11,
        9,
        7,
        3,
        9,
        13,
        7,
        1,
        13,
        3,
        13,
        7,
        5,
        5,
        1,
        13,
        17,
        13,
        15,
    ],
    "evaluation.obj_metric": "desed.psds1+maestro.mpauc",
    "evaluation.tune_postprocessing": False,
    "training.class_balance": 0.0,
    **{f"training.augment.{name}.prob": 0.0 for name in ("filter_augment", "frame_shift", "spec_augment")},
}
# Both embedded datasets: the quick start's model and features, its learning rate, ten epochs.
CARDS["multi_dataset_quick"] = {
    **{k: v for k, v in CARDS["quickstart"].items() if k.startswith(("model.", "features."))},
    "training.lr": 3e-3,
    "trainer.max_epochs": 10,
    "training.warmup_epochs": 2,
    "training.ema_factor": 0.99,
    "data.generate": True,
    "data.datasets.clips.generate": "clips",
    "data.datasets.recordings.generate": "recordings",
    **{
        f"data.datasets.{d}.train.{s}.batch_size": 6
        for d, s in (("clips", "strong"), ("clips", "weak"), ("clips", "unlabeled"), ("recordings", "train"))
    },
    "data.datasets.recordings.train.train.window_hop": 1.0,
    "data.datasets.recordings.validation.metrics": "mpauc",
    "evaluation.obj_metric": "clips.psds1+recordings.mpauc",
    "evaluation.tune_postprocessing": False,
}


# The DCASE 2024 baseline itself: its training card with frozen BEATs frame embeddings (pool1d, concatenated before
# the BiGRU), kept on disk.
CARDS["dcase2024_beats_crnn"] = {
    **CARDS["dcase2024_crnn"],
    "model._target_": "sed.models.pretrained_crnn.PretrainedCRNN",
    "model.fusion": "concat_then_project",
    "model.encoder._target_": "sed.models.encoders.published.BEATsEncoder",
    "model.encoder.frames": "tokens",  # pool1d over the flattened patch tokens
    "model.encoder.frozen": True,
    "model.encoder.layer": "last",
    "model.encoder.cache_dir": "/tmp/sed-test-compose/embedding_cache".replace("/tmp", tempfile.gettempdir()),
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


def test_dcase2024_maestro_scores_the_baselines_evaluated_classes():
    cfg = _compose("dcase2024_crnn")
    for split in ("validation", "test"):
        assert set(cfg.data.datasets.maestro[split].classes) == MAESTRO_EVAL


def test_default_run_is_the_quickstart_recipe():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        plain = compose("config", overrides=["data.root=/data", SCRATCH])
    quick = _compose("quickstart")
    for key in CARDS["quickstart"]:
        assert OmegaConf.select(plain, key) == OmegaConf.select(quick, key), key
