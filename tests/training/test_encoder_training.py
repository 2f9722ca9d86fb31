"""Training with a pretrained audio encoder, end to end on the embedded data with small random encoders:

* frozen BEATs in the DCASE 2024 network (exp=beats_crnn's model): ``python -m sed.embed`` fills the disk cache, a
  train.py run then reads every embedding from it and trains exactly as a run computing them on the fly;
  sed.infer and sed.export (ONNX) work with the encoder inside;
* a frame-level ATST-Frame model fine-tuned from epoch 1 with layer-wise rates: the encoder changes from then on,
  the teacher keeps its own EMA copy, and a run resumed at the unfreezing epoch ends where the uninterrupted one
  ends; bf16 autocast on the CPU.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO, run_train, tiny_overrides
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import sed.run.config  # noqa: F401  (the schema, as train.py registers it)
from sed.models.encoders import audio_encoder

TINY_BEATS = (
    "{encoder_layers:2,encoder_embed_dim:16,encoder_ffn_embed_dim:32,embed_dim:16,"
    "encoder_attention_heads:2,conv_pos:8,conv_pos_groups:4}"
)
TINY_ATST = "{embed_dim:16,depth:2,num_heads:2}"
BEATS_CRNN = ["model=crnn_beats", "model.encoder.path=null", f"model.encoder.config={TINY_BEATS}", "test=false"]
FRAME_ATST = [
    "model=frame_atst",
    "model.encoder.path=null",
    f"model.encoder.config={TINY_ATST}",
    "model.rnn_hidden=8",
    "model.rnn_layers=1",
    "model.encoder.finetune_after_epoch=1",
    "model.encoder.lr=1e-3",
    "model.encoder.layer_decay=0.5",
    "training.mixup.prob=1.0",
]


def _losses(run_dir) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return [e.value for e in EventAccumulator(str(run_dir / "tensorboard")).Reload().Scalars("train/loss")]


def test_frozen_beats_from_the_disk_cache_trains_as_on_the_fly(tiny_dataset, tmp_path) -> None:
    from sed.embed import main as embed_main
    from sed.export import export_detector
    from sed.infer import Detector

    cache = tmp_path / "cache"
    base = tiny_overrides(tiny_dataset, tmp_path / "exp", epochs=2) + BEATS_CRNN
    assert embed_main([*base, f"model.encoder.cache_dir={cache}", "--device", "cpu"]) == 0
    n_entries = len(list(cache.rglob("*.npy")))
    assert n_entries == 16 + 8 + 16 + 8 + 8  # every clip of every set, once (2-s clips: one window each)
    assert embed_main([*base, f"model.encoder.cache_dir={cache}"]) == 0  # a second extraction finds them all
    assert len(list(cache.rglob("*.npy"))) == n_entries

    run_train([*base, "exp_name=fly", "model.encoder.cache=false"])
    from_disk = run_train([*base, "exp_name=disk", f"model.encoder.cache_dir={cache}"])
    assert re.search(
        r"Epoch 0, audio encoder embeddings .*: 0 computed and written to .*cache, \d+ read from disk",
        from_disk.stdout + from_disk.stderr,
    ), from_disk.stdout[-3000:]
    assert len(list(cache.rglob("*.npy"))) == n_entries  # nothing new to write
    fly_dir, disk_dir = (next((tmp_path / "exp" / name).iterdir()) for name in ("fly", "disk"))
    assert _losses(disk_dir) == pytest.approx(_losses(fly_dir), abs=1e-6) and len(_losses(disk_dir)) >= 8

    ckpt = disk_dir / "checkpoints" / "last.ckpt"
    detector = Detector.from_checkpoint(ckpt, device="cpu")
    assert type(detector.network.audio_encoder).__name__ == "BEATsEncoder"
    prediction = detector.predict(np.asarray(0.1 * torch.randn(int(3.5 * 16000))), 16000)  # two windows
    assert prediction.probabilities.shape[0] == len(detector.classes) and np.isfinite(prediction.probabilities).all()
    result = export_detector(ckpt, tmp_path / "beats_crnn.onnx")
    assert result.max_abs_diff < 1e-4 and result.path.is_file()


def _compose(tiny_dataset, tmp_path, *extra: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        tiny = [o for o in tiny_overrides(tiny_dataset, tmp_path / "exp") if not o.startswith("model.")]  # the CRNN's
        return compose("config", overrides=[*tiny, *FRAME_ATST, f"paths.run_dir={tmp_path}", *extra])


def _module(cfg):
    from sed.training.module import SEDModule

    pl.seed_everything(cfg.seed, workers=True)
    dm = instantiate(cfg.data, seed=cfg.seed, _convert_="all")
    module = SEDModule(OmegaConf.to_container(cfg, resolve=True), dm.classes)
    dm.set_encoder(module.encoder, module.frontend.input_sample_rate)
    return module, dm


def _fit(cfg, epochs: int, root, ckpt=None):
    module, dm = _module(cfg)
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        accelerator="cpu",
        precision=cfg.trainer.precision,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    return trainer, module


def test_frame_level_finetuning_from_epoch_1_and_its_exact_resume(tiny_dataset, tmp_path) -> None:
    from sed.export import export_detector

    cfg = _compose(tiny_dataset, tmp_path)
    initial = {k: v.clone() for k, v in audio_encoder(_module(cfg)[0].student).model.state_dict().items()}
    first_trainer, first = _fit(cfg, 1, tmp_path / "a")  # stage 1: the encoder frozen
    resume_from = tmp_path / "epoch0.ckpt"
    first_trainer.save_checkpoint(resume_from)
    for model in (first.student, first.teacher):
        assert all(torch.equal(v, initial[k]) for k, v in audio_encoder(model).model.state_dict().items())
    trainer, whole = _fit(cfg, 2, tmp_path / "b")  # stage 2 from epoch 1
    student, teacher = audio_encoder(whole.student), audio_encoder(whole.teacher)
    assert student is not teacher and not student.frozen and not teacher.frozen
    assert not any(p.requires_grad for p in teacher.parameters())
    trained = {k for k, v in student.model.state_dict().items() if not torch.equal(v, initial[k])}
    assert {f"layers.{i}.qkv.weight" for i in range(2)} | {"positions", "out_norm.weight"} <= trained
    for name in trained:  # the teacher's copy follows by EMA, between the initial weights and the student's
        t = teacher.model.state_dict()[name]
        assert not torch.equal(t, initial[name]) and not torch.equal(t, student.model.state_dict()[name]), name
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert groups["encoder.depth2"]["initial_lr"] == pytest.approx(1e-3) and groups["encoder.depth1"][
        "initial_lr"
    ] == pytest.approx(5e-4)

    _, resumed = _fit(cfg, 2, tmp_path / "d", ckpt=str(resume_from))
    reference = whole.state_dict()
    for name, value in resumed.state_dict().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, reference[name], atol=1e-6, rtol=0, msg=name)

    trainer.save_checkpoint(tmp_path / "finetuned.ckpt")
    result = export_detector(tmp_path / "finetuned.ckpt", tmp_path / "frame_atst.onnx")
    assert result.max_abs_diff < 1e-4


def test_bf16_autocast_training_step_on_cpu(tiny_dataset, tmp_path) -> None:
    cfg = _compose(
        tiny_dataset,
        tmp_path,
        "trainer.precision=bf16-mixed",
        "model.encoder.finetune_after_epoch=0",
        "model.encoder.gradient_checkpointing=true",
        "trainer.limit_train_batches=2",
    )
    trainer, module = _fit(cfg, 1, tmp_path / "bf16")
    assert np.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert not audio_encoder(module.student).frozen
