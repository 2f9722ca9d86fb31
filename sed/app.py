"""What ``python train.py`` does with its configuration: train, resume, or evaluate a checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping

from sed.checkpointing import AtomicCheckpointIO
from sed.datamodule import SEDDataModule
from sed.module import SEDModule

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, run_dir: Path, **overrides: Any) -> pl.Trainer:
    """The Lightning trainer of ``cfg.trainer`` with checkpointing, TensorBoard and atomic checkpoint files."""
    callbacks: list = [instantiate(cfg.callbacks.checkpoint)]
    patience = cfg.callbacks.early_stopping_patience
    if patience:
        callbacks.append(
            EarlyStopping(monitor=cfg.callbacks.checkpoint.monitor, mode=cfg.callbacks.checkpoint.mode, patience=patience)
        )
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=instantiate(cfg.logger),
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
        _convert_="all",
        **overrides,
    )


def _evaluation_module(cfg: DictConfig, dm: SEDDataModule) -> SEDModule:
    """Rebuild the model of ``cfg.ckpt_path`` from the configuration saved in it (not from the current YAML);
    post-processing and metrics settings come from the current configuration."""
    module = SEDModule.load_from_checkpoint(cfg.ckpt_path, map_location="cpu", weights_only=False)
    saved = module.cfg
    for key in ("sample_rate", "clip_duration"):
        if saved.data[key] != cfg.data[key]:
            log.warning(
                "data.%s=%s in the current configuration, but the checkpoint was trained with %s: using %s",
                key, cfg.data[key], saved.data[key], saved.data[key],
            )
            setattr(dm, key, saved.data[key])
    if list(module.classes) != list(dm.classes):
        raise ValueError(
            f"{cfg.ckpt_path} was trained on classes {module.classes}, the test data has {dm.classes}"
        )
    module.cfg.evaluation = cfg.evaluation
    return module


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, dict[str, float]]:
    """Train and/or test as ``cfg`` says; outputs go to ``run_dir``. Returns the test metrics per model."""
    run_dir = Path(run_dir)
    pl.seed_everything(cfg.seed, workers=True)
    # Evaluation never generates data: it scores the data that is there.
    dm: SEDDataModule = instantiate(cfg.data, seed=cfg.seed, generate=cfg.data.generate and cfg.train, _convert_="all")
    dm.prepare_data()
    if not cfg.train:
        if not cfg.ckpt_path:
            raise ValueError("train=false needs ckpt_path=<checkpoint to evaluate>")
        module = _evaluation_module(cfg, dm)
    else:
        module = SEDModule(OmegaConf.to_container(cfg, resolve=True), dm.classes)
        module.scaler_path = cfg.scaler.path
    dm.set_encoder(module.encoder)
    trainer = build_trainer(cfg, run_dir)

    if cfg.train:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path)
    results: dict[str, dict[str, float]] = {}
    if cfg.test:
        ckpt: Optional[str] = None
        if cfg.train:
            ckpt = "best" if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path else None
        trainer.test(module, datamodule=dm, ckpt_path=ckpt)
        results = module.test_results
    if trainer.is_global_zero:
        _report(run_dir, trainer, results)
    return results


def _report(run_dir: Path, trainer: pl.Trainer, results: dict[str, dict[str, float]]) -> None:
    lines = [f"Run directory: {run_dir}"]
    callback = trainer.checkpoint_callback
    if callback is not None and callback.best_model_path:
        lines.append(f"Best checkpoint: {callback.best_model_path}")
    if results:
        lines.append(f"Test outputs: {run_dir / 'test'}")
        for name, metrics in results.items():
            shown = {k: round(v, 4) for k, v in metrics.items() if k in ("psds1", "psds2", "weak_f1") or k.startswith("event_f1_macro")}
            lines.append(f"  {name}: {shown}")
    lines.append(f"TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
    log.info("\n%s", "\n".join(lines))
