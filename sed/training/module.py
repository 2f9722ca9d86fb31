"""The LightningModule: features on the device, mean-teacher CRNN training, scoring, test outputs."""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from sed.data.encoder import LabelEncoder
from sed.evaluation.parallel import ScoringPool
from sed.evaluation.tensorboard import (
    log_config_text,
    log_hparams,
    tensorboard_writers,
)
from sed.evaluation.windows import WindowGrid
from sed.features.scaler import TorchScaler
from sed.models.crnn import CRNNOutput
from sed.models.encoders import (
    audio_encoder,
    model_inputs,
    models_inputs,
    optimizer_param_groups,
    set_encoder_epoch,
    shared_encoder_memo,
)
from sed.models.encoders.model_contract import (
    log_embedding_counts,
    pack_inputs,
    unpack_inputs,
)
from sed.run.config import default_node, upgrade_targets
from sed.run.instantiators import build_model, call_factory
from sed.training.augment import Augmentations, mix_groups, mixup_within_subsets
from sed.training.ema import ema_factor, update_teacher
from sed.training.evaluation_steps import MODELS, EvaluationSteps
from sed.training.execution import FiniteCheck, compiled_models, teacher_forward
from sed.training.losses import (
    class_balance_weights,
    consistency_losses,
    supervised_losses,
)
from sed.training.schedules import ema_max_factor, exp_rampup, warmup_steps
from sed.utils.errors import UserError

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError, UserError):
    """The training loss is NaN/Inf: the message names the step and the batch's files."""


def build_scaler(cfg: DictConfig, signature: dict) -> TorchScaler:
    """The scaler of ``cfg.scaler`` (its ``path`` key is about reuse, not construction)."""
    kwargs = OmegaConf.to_container(cfg.scaler, resolve=True)
    kwargs.pop("path", None)
    scaler = instantiate(kwargs, _convert_="all")
    scaler.signature = signature
    return scaler


class SEDModule(EvaluationSteps, pl.LightningModule):
    """Student and teacher CRNNs behind one front-end and scaler.

    ``config`` is the whole resolved run configuration; it is saved in every checkpoint, so a checkpoint
    rebuilds exactly the model, features and scaler it was trained with (``SEDModule.load_from_checkpoint``).
    """

    def __init__(self, config: dict[str, Any], classes: list[str]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = OmegaConf.create(upgrade_targets(OmegaConf.to_container(OmegaConf.create(config))))
        self.classes = list(classes)
        self.frontend = instantiate(self.cfg.features, _convert_="all")
        self.scaler = build_scaler(self.cfg, self.frontend.signature())
        self.student = build_model(default_node("model", self.cfg), len(self.classes), self.frontend.n_features)
        if self.cfg.training.mixup.domain not in ("features", "linear"):
            raise ValueError(
                f"training.mixup.domain must be 'features' or 'linear', got {self.cfg.training.mixup.domain!r}"
            )
        self.augment = Augmentations(self.cfg.training.get("augment"), self.student.time_pooling)
        if audio_encoder(self.student) is not None and self.augment.cfg["frame_shift"]["prob"] > 0:
            raise ValueError(
                "training.augment.frame_shift would move the features but not the audio encoder's "
                "embeddings: set training.augment.frame_shift.prob=0 with model.encoder"
            )
        # One encoder for both while it is never fine-tuned; else the teacher's own copy, averaged by the EMA.
        self.teacher = copy.deepcopy(self.student, memo=shared_encoder_memo(self.student))
        self.teacher.requires_grad_(False)
        # What training_step calls: the modules, or their torch.compile wrappers (training.compile); a plain
        # dict, so the wrappers are no submodules and the state dict keeps its keys.
        self._train_nets = {name: getattr(self, name) for name in MODELS}
        if self.cfg.training.get("compile", False):
            self._train_nets = compiled_models(self._train_nets)
        self.encoder = LabelEncoder(
            self.classes,
            sample_rate=self.cfg.data.sample_rate,
            hop_length=self.cfg.features.hop_length,
            clip_duration=self.cfg.data.clip_duration,
            time_pooling=self.student.time_pooling,
        )
        # Evaluation clips longer than a training clip: windows and overlap averaging of sed.infer (half-clip hop),
        # cut at the rate the front-end takes (features.input_sample_rate when the model resamples).
        self.window_grid = WindowGrid.from_encoder(self.encoder, input_rate=self.frontend.input_rate)
        self._long_clips_logged: set[str] = set()
        self.scaler_path: Optional[str] = None  # set by the app: reuse this fitted scaler instead of fitting
        self._steps_per_epoch = 1
        self._scoring_pool: Optional[ScoringPool] = None  # sed.evaluation.parallel, started at the first scoring
        self._finite_checks: list[FiniteCheck] = []  # this step's, read before the optimiser step
        self._warmup_steps = int(self.cfg.training.warmup_epochs)  # until configure_optimizers knows the run's length
        self._ema_max = float(self.cfg.training.ema_factor)
        self._outputs: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        self._plot_batch: Optional[dict[str, Any]] = None
        self.test_results: dict[str, dict[str, float]] = {}
        # The model (student or teacher) with the higher validation objective at the last validation: what a
        # checkpoint is deployed with (forward, sed.infer, sed.export). At short budgets the EMA teacher lags.
        self.preferred_model = "teacher"
        self._config_logged = False
        self.strong_pos_weight: Optional[torch.Tensor] = None  # training.class_balance, set when fitting starts

    # ------------------------------------------------------------------ features and forward
    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Log features, normalised; always in float32 (mixed precision starts after this)."""
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.scaler(self.frontend(audio.float()))

    def predict(self, model: Callable[..., CRNNOutput], feats: torch.Tensor, **inputs: torch.Tensor) -> CRNNOutput:
        """``model(feats)`` on the label encoder's frame grid.

        The network yields ``(1 + N // hop) // pooling`` frames, the encoder ``(N // hop) // pooling``; when they
        differ the network has one trailing frame past the clip's labels, which is dropped.
        """
        out = model(feats, **inputs)  # inputs: sed.models.encoders.model_inputs (a pretrained encoder's)
        n = self.encoder.n_frames
        if out.strong.shape[-1] == n:
            return out
        if out.strong.shape[-1] < n:
            raise ValueError(f"network gives {out.strong.shape[-1]} frames, the label encoder expects {n}")
        return out._replace(strong_logits=out.strong_logits[..., :n], strong=out.strong[..., :n])

    def forward(self, audio: torch.Tensor) -> CRNNOutput:
        """Predictions for raw audio ``[B, N]`` of the model validation preferred (:attr:`preferred_model`)."""
        model = getattr(self, self.preferred_model)
        return self.predict(model, self.features(audio), **model_inputs(model, audio))

    # ------------------------------------------------------------------ scaler fitting
    def on_fit_start(self) -> None:
        self._objective_terms()  # evaluation.obj_metric refused now, not after the first epoch
        self._log_config_text()
        self._set_class_balance()
        if self.scaler.statistic != "dataset":
            if self.scaler_path:
                raise ValueError(
                    "scaler.path is set but scaler.statistic is 'instance': a per-clip scaler has nothing to load"
                )
            return
        if self.scaler_path:
            loaded = TorchScaler.load(self.scaler_path, expected_signature=self.frontend.signature())
            self.scaler.load_state_dict(loaded.state_dict())
            log.info("Reusing the scaler fitted in %s", self.scaler_path)
        elif not self.scaler.is_fitted:
            loader = self.trainer.datamodule.scaler_fit_dataloader()
            with torch.no_grad():
                self.scaler.fit((self.frontend(b["audio"].to(self.device)) for b in loader), total=len(loader))
            log.info("Fitted the dataset scaler on %d training clips", len(loader.dataset))
        else:
            return  # restored from the checkpoint being resumed
        if self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / "scaler.pt"
            self.scaler.save(path)
            log.info("Scaler saved to %s (reuse it with scaler.path=%s)", path, path)

    def _set_class_balance(self) -> None:
        """``training.class_balance``: the strong loss's class weights, from the strong training labels (the same
        data gives the same weights, so a resumed run trains on)."""
        power = float(self.cfg.training.get("class_balance", 0.0) or 0.0)
        self.strong_pos_weight = None
        if power == 0:
            return
        fractions = self.trainer.datamodule.strong_active_fractions()
        if fractions is None:
            log.warning("training.class_balance=%g has no effect: there is no strong training set", power)
            return
        weights = class_balance_weights(fractions, power)
        self.strong_pos_weight = torch.as_tensor(weights, dtype=torch.float32, device=self.device)
        log.info(
            "Strong loss class weights (training.class_balance=%g): %s",
            power,
            ", ".join(
                f"{c} {w:.2f} ({100 * f:.1f} % of frames)" for c, w, f in zip(self.encoder.classes, weights, fractions)
            ),
        )

    def on_train_epoch_start(self) -> None:
        if set_encoder_epoch(self.current_epoch, self.student, self.teacher):  # model.encoder.finetune_after_epoch
            log.info("Epoch %d: the pretrained audio encoder is fine-tuned from now on", self.current_epoch)

    def on_train_epoch_end(self) -> None:
        if self.trainer.is_global_zero and self.current_epoch < 2:  # the extraction epoch and the first cached one
            log_embedding_counts(audio_encoder(self.student), self.current_epoch, log)
        elif audio_encoder(self.student) is not None:
            audio_encoder(self.student).counts.clear()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """The optimiser of ``cfg.optimizer`` on the student's parameters and the scheduler of ``cfg.scheduler``.

        Both are ``_partial_`` factories. The scheduler factory gets the optimiser, plus ``total_steps`` and
        ``steps_per_epoch`` when it takes them; the scheduler node's ``interval``, ``frequency`` and ``monitor``
        are Lightning's, not the factory's. ``scheduler=none`` (a null ``_target_``) keeps the rate constant.
        """
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        self._steps_per_epoch = max(total // epochs, 1)
        t = self.cfg.training
        self._warmup_steps = warmup_steps(total, self._steps_per_epoch, t.warmup_epochs, t.warmup_fraction)
        self._ema_max = ema_max_factor(total, t.ema_factor, t.ema_horizon)
        log.info(
            "%d optimiser steps: ramp-up over %d steps, teacher EMA factor %.4g",
            total,
            self._warmup_steps,
            self._ema_max,
        )
        node = default_node("optimizer", self.cfg)
        # A fine-tuned encoder's parameters in their own groups (layer-wise rates, warm-up from its first epoch).
        params = optimizer_param_groups(self.student, node.get("lr", t.lr), self._steps_per_epoch)
        optimizer = call_factory("optimizer", node, params)
        spec = default_node("scheduler", self.cfg)
        if spec is None:
            return {"optimizer": optimizer}
        lightning = {key: spec.pop(key) for key in ("interval", "frequency", "monitor") if key in spec}
        scheduler = call_factory("scheduler", spec, optimizer, total_steps=total, steps_per_epoch=self._steps_per_epoch)
        lightning = {key: value for key, value in lightning.items() if value is not None}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **lightning}}

    def consistency_weight(self) -> float:
        t = self.cfg.training
        return t.consistency_max * exp_rampup(self.global_step, self._warmup_steps)

    def augmented_features(
        self, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The student's and the teacher's normalised training features and their targets ``(student, teacher,
        strong, weak)``: mixup (``training.mixup``, the same draw for both models) and ``training.augment``
        (:class:`sed.training.augment.Augmentations`: frame shift for both, the rest for the student only)."""
        mix = self.cfg.training.mixup
        strong, weak = batch["strong"], batch["weak"]
        with torch.autocast(device_type=self.device.type, enabled=False):
            spec = self.frontend.magnitude(batch["audio"])
            if mix.enabled and mix.domain == "linear":
                spec, strong, weak = mixup_within_subsets(spec, batch, mix)
            student, teacher, strong = self.augment(spec, strong, lambda m: self.scaler(self.frontend.log(m)))
        if mix.enabled and mix.domain == "features":  # both models' features in one tensor: one draw mixes both
            both = teacher if student is teacher else torch.cat([student, teacher], dim=1)
            both, strong, weak = mixup_within_subsets(both, {**batch, "strong": strong}, mix)
            student, teacher = (both, both) if student is teacher else both.split(teacher.shape[1], dim=1)
        return self.augment.mask(student), teacher, strong, weak

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._check_finite()  # a previous step's, if it was run outside a Trainer (no optimiser-step hook)
        # A pretrained encoder's embeddings, one tensor for both models unless the teacher's copy differs; mixed
        # up below with the features' draw.
        batch["inputs"] = pack_inputs(
            models_inputs(
                {name: getattr(self, name) for name in MODELS},
                batch["audio"],
                cache=True,
                cacheable=batch.get("cacheable"),
            )
        )
        feats, teacher_feats, strong, weak = self.augmented_features(batch)
        # The teacher first: its temporaries are freed before the student's graph is built, so the step's peak
        # memory is the student's alone (4.0 vs 4.6 GiB at DESED's batch of 48 on the CPU; benchmarks/README.md).
        # Several datasets: the classes a row's dataset does not annotate are masked in the attention pooling and
        # the losses, and a dataset can stay out of the consistency loss (absent when nothing is masked).
        mask = batch.get("class_mask")
        masked = {} if mask is None else {"class_mask": mask}
        teacher = self.predict(
            partial(teacher_forward, self._train_nets["teacher"]),
            teacher_feats,
            **unpack_inputs(batch["inputs"], "teacher"),
            **masked,
        )
        student = self.predict(
            self._train_nets["student"], feats, **unpack_inputs(batch["inputs"], "student"), **masked
        )
        t = self.cfg.training
        losses = supervised_losses(
            student, strong, weak, batch["has_strong"], batch["has_weak"], self.strong_pos_weight, class_mask=mask
        )
        losses.update(consistency_losses(student, teacher, rows=batch.get("consistency"), class_mask=mask))
        weight = self.consistency_weight()
        total = (
            t.strong_weight * losses["strong"]
            + t.weak_weight * losses["weak"]
            + weight * (losses["consistency_strong"] + losses["consistency_weak"])
        )
        self._finite_checks.append(FiniteCheck(total, losses, batch["filename"], self.current_epoch, self.global_step))
        if total.device.type != "cuda":
            self._check_finite()
        batch_size = batch["audio"].shape[0]
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        # Host numbers logged as host tensors: Lightning would copy a float to the GPU (a synchronisation).
        self.log("train/consistency_weight", torch.tensor(weight), batch_size=batch_size)
        self.log("train/lr", torch.tensor(self.optimizers().param_groups[0]["lr"]), batch_size=batch_size)
        return total

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the host, before the batch goes to the device: the rows of each mixup group, and the class mask and
        consistency rows dropped when they mask nothing (one dataset: every term computed as without them)."""
        if self.training and isinstance(batch, dict) and "has_strong" in batch:
            batch["subset_rows"] = mix_groups(batch)
            for key in ("class_mask", "consistency"):
                if key in batch and bool(batch[key].all()):
                    del batch[key]
            batch.pop("mix_group", None)
            if "varies" in batch:  # rows whose encoder embeddings may be cached (the same audio every epoch)
                batch["cacheable"] = (~batch["varies"]).tolist()
        return batch

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._check_finite()

    def _check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` if a loss of this step is NaN/Inf, before the weights are updated.

        On a GPU this runs after the backward pass has been queued and waits only for the forward (see
        :class:`FiniteCheck`), so the device keeps working while the host checks."""
        checks, self._finite_checks = self._finite_checks, []
        for check in checks:
            if not check.finite():
                raise NonFiniteLossError(check.message())

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The student's optimiser step, then the teacher's EMA update: one per optimiser step (not per
        micro-batch under gradient accumulation), and done before any batch-end hook, so a checkpoint written
        at the end of a batch holds the teacher of that step."""
        super().optimizer_step(*args, **kwargs)
        factor = ema_factor(self.global_step, self._ema_max)  # global_step counts from here on
        update_teacher(self.teacher, self.student, factor, buffers=self.cfg.training.ema_buffers)
        self.log("train/ema_factor", torch.tensor(factor), batch_size=1)

    @rank_zero_only
    def _log_config_text(self) -> None:
        """The resolved configuration as text in TensorBoard, once per run."""
        if not self._config_logged:
            self._config_logged = True
            log_config_text(tensorboard_writers(self.loggers), self.cfg, self.global_step)

    def on_test_start(self) -> None:
        self._log_config_text()

    @rank_zero_only
    def _log_hparams(self) -> None:
        log_hparams(self.loggers, self.cfg, self.test_results)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Random states too, so a resumed run draws the same mixup coefficients and dropout masks as an
        # uninterrupted one (Lightning does not save them).
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        checkpoint["preferred_model"] = self.preferred_model
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.preferred_model = checkpoint.get("preferred_model", "teacher")
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        random.setstate(states["python"])
        if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
