"""What ``python train.py`` does with its configuration: train, resume, or evaluate a checkpoint."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from sed.data.datamodule import SEDDataModule
from sed.dcase.complexity import ComplexityReport, n_parameters
from sed.evaluation.tune_at_test import validation_needed_at_test
from sed.run import allocator
from sed.run.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    RunStopped,
    check_resumable,
    read_checkpoint,
    stop_on_signal,
)
from sed.run.config import check_known_keys
from sed.run.console import ShortEpochLogInterval, quiet_console
from sed.run.instantiators import build_callbacks, build_loggers
from sed.run.rundir import is_main_process, lock_run_dir, release_run_dir, write_status
from sed.training.module import SEDModule
from sed.utils.errors import ConfigError

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, run_dir: Path, resume_hint: str = "", **overrides: Any) -> pl.Trainer:
    """The Lightning trainer of ``cfg.trainer`` with the callbacks and loggers of ``cfg.callbacks`` and
    ``cfg.logger`` (sed.run.instantiators: best checkpoint, last.ckpt and graceful stop on SIGTERM/SIGINT always),
    atomic checkpoint files and a quiet console."""
    quiet_console()
    loggers = build_loggers(cfg.get("logger"))
    callbacks = build_callbacks(cfg.get("callbacks"), run_dir, resume_hint, has_logger=bool(loggers))
    callbacks.append(ShortEpochLogInterval())
    callbacks += [instantiate(cfg.energy), ComplexityReport(None if cfg.train else cfg.ckpt_path)]  # DCASE reporting
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
        _convert_="all",
        **overrides,
    )


#: The bf16 hint's smallest network: the DESED-size CRNN (1.1 M parameters) gained 1.3x, the 50k quick start nothing.
BF16_HINT_MIN_PARAMETERS = 500_000


def cpu_bf16_hint(trainer: pl.Trainer, n_params: int) -> Optional[str]:
    """A line suggesting ``trainer.precision=bf16-mixed`` when an fp32 run trains a network of at least
    :data:`BF16_HINT_MIN_PARAMETERS` parameters on a CPU with bf16 instructions (AVX512-BF16 or AMX).

    On a Zen 4 CPU the DESED recipe's step took 0.76x the fp32 time in bf16 (5.5 against 7.2-7.4 s per 48 clips in
    the baseline A/B; 0.6x before the GLU fusion made fp32 faster), the 50k-parameter quick start about the
    same time in both (622 +- 39 against 645 +- 119 s over three seeds, with the same scores), and an AVX2-only CPU
    ran the DESED step 5x slower (benchmarks/README.md, recipes/README.md). A hint, not a default: the gain
    depends on the model and the CPU, and a run's numbers should not depend on the machine."""
    if not isinstance(trainer.accelerator, CPUAccelerator) or str(trainer.precision) not in ("32", "32-true"):
        return None
    if n_params < BF16_HINT_MIN_PARAMETERS:
        return None
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    if not any(probe is not None and probe() for probe in probes):
        return None
    return (
        f"this CPU has bf16 instructions (AVX512-BF16/AMX): with a network of {n_params:,} parameters, "
        "trainer.precision=bf16-mixed may train faster (the DESED recipe's step 1.3x on a Zen 4 CPU; "
        "benchmarks/README.md)"
    )


def _evaluation_module(cfg: DictConfig, dm: SEDDataModule) -> SEDModule:
    """Rebuild the model of ``cfg.ckpt_path`` from the configuration saved in it (not from the current YAML);
    post-processing and metrics settings come from the current configuration."""
    read_checkpoint(cfg.ckpt_path)  # one-line errors for missing, empty, truncated or foreign files
    module = SEDModule.load_from_checkpoint(cfg.ckpt_path, map_location="cpu", weights_only=False)
    saved = module.cfg
    for key in ("sample_rate", "clip_duration"):
        if saved.data[key] != cfg.data[key]:
            log.warning(
                "data.%s=%s in the current configuration, but the checkpoint was trained with %s: using %s",
                key,
                cfg.data[key],
                saved.data[key],
                saved.data[key],
            )
            setattr(dm, key, saved.data[key])
    if list(module.classes) != list(dm.classes):
        raise CheckpointError(
            f"ckpt_path={cfg.ckpt_path} was trained on classes {module.classes}, the test data has {dm.classes}"
        )
    module.cfg.evaluation = cfg.evaluation
    return module


def run(cfg: DictConfig, run_dir: str | Path, resume_hint: str = "") -> dict[str, dict[str, float]]:
    """Train and/or test as ``cfg`` says; outputs go to ``run_dir``. Returns the test metrics per model.

    ``resume_hint`` is the command that reproduces this run (logged with the checkpoint path on a graceful stop).
    A signal stops the run as :class:`RunStopped` (exit status ``128 + signal``), with ``status.json`` ``stopped``
    at the stage it stopped and the command that carries on (resume the training, or test the tested checkpoint
    again); the run directory's lock is released however the run ends.
    """
    run_dir = Path(run_dir)
    check_known_keys(cfg)
    main_process = is_main_process()
    if main_process:
        lock_run_dir(run_dir)
    if cfg.train and cfg.ckpt_path and Path(cfg.ckpt_path).resolve().parent.parent != run_dir.resolve():
        log.info(
            "Resuming from %s in a new run directory %s (the checkpoint's run is finished, or not a run "
            "directory; its files are left as they are)",
            cfg.ckpt_path,
            run_dir,
        )
    progress = _Progress()
    try:
        with stop_on_signal(progress.stage):
            results, outcome = _run(cfg, run_dir, resume_hint, main_process, progress)
        if main_process:
            headline = {name: {k: v for k, v in metrics.items() if k in HEADLINE} for name, metrics in results.items()}
            write_status(run_dir, "finished", test=headline or None, **outcome)
    except RunStopped as stop:
        if main_process:
            write_status(run_dir, "stopped", stage=stop.stage, **_after_stop(cfg, run_dir, resume_hint, progress, stop))
        raise
    except BaseException as err:
        if main_process:
            write_status(run_dir, "failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        if main_process:
            release_run_dir()
    return results


#: The test metrics a run's status and summary show (mpauc: a set of soft-labelled recordings).
HEADLINE = ("psds1", "pipsds1", "psds2", "weak_f1", "mpauc")


class _Progress:
    """How far a run got: its trainer (whose state names the stage under way) and the checkpoint it tests."""

    def __init__(self) -> None:
        self.trainer: Optional[pl.Trainer] = None
        self.tested_checkpoint: Optional[str] = None

    def stage(self) -> Optional[str]:
        stage = self.trainer.state.stage if self.trainer is not None else None
        return stage.value if stage is not None else None


def _after_stop(cfg: DictConfig, run_dir: Path, hint: str, progress: _Progress, stop: RunStopped) -> dict[str, str]:
    """What ``status.json`` records of a stopped run (the checkpoint and the command that carries on), logged
    unless ResumeCheckpoint logged it (a stop between training steps, with its checkpoint)."""
    if stop.checkpoint:
        return {"last_checkpoint": stop.checkpoint, "rerun": f"{hint} ckpt_path={stop.checkpoint}"}
    if stop.stage == "test":
        ckpt = progress.tested_checkpoint or str(run_dir / "checkpoints" / "last.ckpt")
        kept = " ".join(o for o in hint.split(" ") if not o.startswith(("train=", "test=")))
        rerun, what = f"{kept} train=false ckpt_path={ckpt}", "Test again with"
    else:  # before the first training step: setup, scaler fitting, the sanity check
        rerun = f"{hint} ckpt_path={cfg.ckpt_path}" if cfg.ckpt_path else hint
        what = "Resume with" if cfg.train and cfg.ckpt_path else "Run again with"
    name = signal.Signals(stop.code - 128).name if isinstance(stop.code, int) and stop.code > 128 else "a signal"
    log.warning(
        "Stopped by %s during %s; nothing of it was written.\n%s: %s",
        name,
        _STAGE_NAMES.get(stop.stage, stop.stage),
        what,
        rerun,
    )
    return {"rerun": rerun}


_STAGE_NAMES = {
    "test": "the test",
    "validate": "validation",
    "sanity_check": "the validation sanity check",
    "train": "the start of training",
    "setup": "the setup (data checks)",
}


def _run(
    cfg: DictConfig, run_dir: Path, resume_hint: str, main_process: bool, progress: _Progress
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Test metrics per model, and what ``status.json`` records of the outcome: ``best_val_objective`` (the best
    checkpoint's val/obj_metric: what train.py returns to a Hydra sweeper and a sweep summary reports; null when
    nothing was validated) and ``preferred_model`` (the network validation preferred in the tested or last
    checkpoint: what sed.infer, sed.export and sed.submit deploy by default)."""
    pl.seed_everything(cfg.seed, workers=True)
    # Evaluation never generates data: it scores the data that is there.
    dm: SEDDataModule = instantiate(cfg.data, seed=cfg.seed, generate=cfg.data.generate and cfg.train, _convert_="all")
    dm.prepare_data()
    if not cfg.train:
        if not cfg.ckpt_path:
            raise ConfigError("train=false needs ckpt_path=<checkpoint to evaluate>")
        module = _evaluation_module(cfg, dm)
    else:
        config = OmegaConf.to_container(cfg, resolve=True)
        features = config["features"]  # "auto": the files' common rate (saved resolved, so checkpoints know it)
        features["input_sample_rate"] = dm.resolve_input_sample_rate(
            features.get("input_sample_rate"), features["sample_rate"]
        )
        if cfg.ckpt_path:
            check_resumable(cfg.ckpt_path, read_checkpoint(cfg.ckpt_path), config, dm.classes)
        module = SEDModule(config, dm.classes)
        module.scaler_path = cfg.scaler.path
    dm.set_encoder(module.encoder, module.frontend.input_sample_rate)
    dm.validate_at_test = validation_needed_at_test(cfg.evaluation)  # tuning post-processing on validation
    trainer = progress.trainer = build_trainer(cfg, run_dir, resume_hint)
    if main_process:
        write_status(run_dir, "running", pid=os.getpid())
        log.info(allocator.describe())
        hint = cpu_bf16_hint(trainer, n_parameters(module.student)) if cfg.train else None
        if hint:
            log.info(hint)

    if cfg.train:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path)
    results: dict[str, dict[str, float]] = {}
    if cfg.test:
        # The best checkpoint by path (not "best", which Lightning warns about next to ResumeCheckpoint).
        ckpt: Optional[str] = None
        if cfg.train:
            ckpt = getattr(_best_checkpoint(trainer), "best_model_path", None) or None
        progress.tested_checkpoint = ckpt if cfg.train else cfg.ckpt_path
        # Lightning's table of every metric is left out: with post-processing tuned on validation it printed a
        # second, empty column for the validation pass; the summary below gives the headline numbers, and every
        # metric is in test/<model>/metrics.json and the loggers.
        trainer.test(module, datamodule=dm, ckpt_path=ckpt, verbose=False)
        results = module.test_results
    if trainer.is_global_zero:
        _report(run_dir, trainer, results)
    best = getattr(_best_checkpoint(trainer), "best_model_score", None) if cfg.train else None
    return results, {
        "best_val_objective": None if best is None else float(best),
        "preferred_model": module.preferred_model,
    }


def _best_checkpoint(trainer: pl.Trainer) -> Optional[ModelCheckpoint]:
    """The best-checkpoint callback, if any (``trainer.checkpoint_callback`` may be ResumeCheckpoint, which keeps
    last.ckpt and has no best)."""
    return next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)


def log_failure(err: BaseException, console: bool = True) -> None:
    """Why the run failed, in the run's log file too (not only on stderr): one line for every handler (the file
    handlers only unless ``console``), the traceback for the file handlers."""
    line = log.makeRecord(log.name, logging.ERROR, __file__, 0, "Run failed: %s: %s", (type(err).__name__, err), None)
    record = log.makeRecord(
        log.name, logging.ERROR, __file__, 0, "Traceback of the failure:", (), (type(err), err, err.__traceback__)
    )
    if console:
        log.handle(line)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            if not console:
                handler.handle(line)
            handler.handle(record)


def _report(run_dir: Path, trainer: pl.Trainer, results: dict[str, dict[str, float]]) -> None:
    lines = [f"Run directory: {run_dir}"]
    best = getattr(_best_checkpoint(trainer), "best_model_path", None)
    if best:
        lines.append(f"Best checkpoint: {best}")
    if results:
        where = "test/<model>" if all("/" not in name for name in results) else "test/<dataset>/<model>"
        lines.append(f"Test outputs: {run_dir / 'test'} (every metric: {where}/metrics.json)")
        for name, metrics in results.items():
            shown = {k: round(v, 4) for k, v in metrics.items() if k in HEADLINE or k.startswith("event_f1_macro")}
            model = name.rsplit("/", 1)[-1]  # <dataset>/<model> with several datasets
            preferred = (
                " (preferred by validation: deployed by sed.infer)"
                if model == trainer.lightning_module.preferred_model
                else ""
            )
            lines.append(f"  {name}{preferred}: {shown}")
            per_class = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("psds1/") and v == v}
            if per_class:  # DCASE's PSDS1 is 0 when one class is never detected: show which class holds it back
                weakest = min(per_class, key=per_class.get)
                lines.append(
                    "    PSDS1 per class: "
                    + ", ".join(f"{c} {v:.3f}" for c, v in per_class.items())
                    + f" (weakest: {weakest})"
                )
    if results and (run_dir / "postprocessing.json").is_file():
        lines.append(
            f"Post-processing tuned on validation (metrics '@tuned', events_tuned.tsv): "
            f"{run_dir / 'postprocessing.json'}"
        )
    for reporter in trainer.callbacks:  # energy, parameters and MACs (sed.dcase.energy, sed.dcase.complexity)
        lines.extend(getattr(reporter, "summary_lines", lambda: [])())
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            lines.append(f"TensorBoard: tensorboard --logdir {logger.log_dir}")
    log.info("\n%s", "\n".join(lines))
