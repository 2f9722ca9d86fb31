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

from sed.run.config import default_node, upgrade_targets
from sed.utils.errors import UserError
from sed.data.encoder import LabelEncoder
from sed.evaluation import tune_at_test
from sed.evaluation.parallel import ScoringPool, resolve_workers
from sed.evaluation.scoring import ModelScores, assign_objective
from sed.evaluation.set_scoring import held_out_weak_f1, objective_scores, scoring_jobs
from sed.evaluation.tensorboard import (
    log_config_text,
    log_hparams,
    log_test_details,
    log_validation_figures,
    tensorboard_writers,
)
from sed.evaluation.windows import WindowGrid
from sed.run.instantiators import build_model, call_factory
from sed.models.crnn import CRNNOutput
from sed.models.encoders import (
    audio_encoder,
    model_inputs,
    models_inputs,
    optimizer_param_groups,
    set_encoder_epoch,
    shared_encoder_memo,
)
from sed.models.encoders.model_contract import log_embedding_counts, pack_inputs, unpack_inputs
from sed.features.scaler import TorchScaler
from sed.training.augment import Augmentations, mix_groups, mixup_within_subsets
from sed.training.ema import ema_factor, update_teacher
from sed.training.losses import class_balance_weights, consistency_losses, supervised_losses
from sed.training.schedules import ema_max_factor, exp_rampup, warmup_steps
from sed.training.execution import FiniteCheck, compiled_models, teacher_forward

log = logging.getLogger(__name__)

MODELS = ("student", "teacher")


class NonFiniteLossError(FloatingPointError, UserError):
    """The training loss is NaN/Inf: the message names the step and the batch's files."""


def build_scaler(cfg: DictConfig, signature: dict) -> TorchScaler:
    """The scaler of ``cfg.scaler`` (its ``path`` key is about reuse, not construction)."""
    kwargs = OmegaConf.to_container(cfg.scaler, resolve=True)
    kwargs.pop("path", None)
    scaler = instantiate(kwargs, _convert_="all")
    scaler.signature = signature
    return scaler


class SEDModule(pl.LightningModule):
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
            raise ValueError(f"training.mixup.domain must be 'features' or 'linear', got {self.cfg.training.mixup.domain!r}")
        self.augment = Augmentations(self.cfg.training.get("augment"), self.student.time_pooling)
        if audio_encoder(self.student) is not None and self.augment.cfg["frame_shift"]["prob"] > 0:
            raise ValueError("training.augment.frame_shift would move the features but not the audio encoder's "
                             "embeddings: set training.augment.frame_shift.prob=0 with model.encoder")
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
        log.info("Strong loss class weights (training.class_balance=%g): %s", power,
                 ", ".join(f"{c} {w:.2f} ({100 * f:.1f} % of frames)"
                           for c, w, f in zip(self.encoder.classes, weights, fractions)))

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
        log.info("%d optimiser steps: ramp-up over %d steps, teacher EMA factor %.4g", total, self._warmup_steps,
                 self._ema_max)
        node = default_node("optimizer", self.cfg)
        # A fine-tuned encoder's parameters in their own groups (layer-wise rates, warm-up from its first epoch).
        params = optimizer_param_groups(self.student, node.get("lr", t.lr), self._steps_per_epoch)
        optimizer = call_factory("optimizer", node, params)
        spec = default_node("scheduler", self.cfg)
        if spec is None:
            return {"optimizer": optimizer}
        lightning = {key: spec.pop(key) for key in ("interval", "frequency", "monitor") if key in spec}
        scheduler = call_factory(
            "scheduler", spec, optimizer, total_steps=total, steps_per_epoch=self._steps_per_epoch
        )
        lightning = {key: value for key, value in lightning.items() if value is not None}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **lightning}}

    def consistency_weight(self) -> float:
        t = self.cfg.training
        return t.consistency_max * exp_rampup(self.global_step, self._warmup_steps)

    def augmented_features(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
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
        batch["inputs"] = pack_inputs(models_inputs({name: getattr(self, name) for name in MODELS}, batch["audio"],
                                                    cache=True, cacheable=batch.get("cacheable")))
        feats, teacher_feats, strong, weak = self.augmented_features(batch)
        # The teacher first: its temporaries are freed before the student's graph is built, so the step's peak
        # memory is the student's alone (4.0 vs 4.6 GiB at DESED's batch of 48 on the CPU; benchmarks/README.md).
        # Several datasets: the classes a row's dataset does not annotate are masked in the attention pooling and
        # the losses, and a dataset can stay out of the consistency loss (absent when nothing is masked).
        mask = batch.get("class_mask")
        masked = {} if mask is None else {"class_mask": mask}
        teacher = self.predict(partial(teacher_forward, self._train_nets["teacher"]), teacher_feats,
                               **unpack_inputs(batch["inputs"], "teacher"), **masked)
        student = self.predict(self._train_nets["student"], feats, **unpack_inputs(batch["inputs"], "student"),
                               **masked)
        t = self.cfg.training
        losses = supervised_losses(student, strong, weak, batch["has_strong"], batch["has_weak"],
                                   self.strong_pos_weight, class_mask=mask)
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

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        """Frame and clip probabilities of every clip of the batch, over its whole length.

        Each clip is cut into windows of the training clip length (one window when it fits, as in training;
        :class:`sed.evaluation.windows.WindowGrid`, shared with ``sed.infer``), the windows go through the front-end and
        both models in chunks of the batch size, and each clip's frame probabilities are the windows' averaged
        where they overlap (clip probability: the maximum over its windows). A clip no longer than the training
        clip keeps the window's frames (scores are cut at its duration later); a longer one keeps the frames
        starting before its end. ``loss_strong`` is the student's frame BCE over all windows.
        """
        audio, grid = batch["audio"], self.window_grid
        lengths = batch["length"].tolist() if "length" in batch else [audio.shape[-1]] * audio.shape[0]
        # A clip shorter than a window is taken with its padding (as in training), so an empty file is silence.
        views = [grid.windows(audio[i, : max(n, grid.window_samples)]) for i, n in enumerate(lengths)]
        rows = [(i, k) for i, v in enumerate(views) for k in range(len(v))]  # (clip, window), clip by clip
        chunk = max(audio.shape[0], 1)
        outs: dict[str, list] = {name: [] for name in MODELS}
        for a in range(0, len(rows), chunk):
            windows = torch.stack([views[i][k] for i, k in rows[a : a + chunk]])
            feats = self.features(windows)
            inputs = models_inputs({name: getattr(self, name) for name in MODELS}, windows, cache=True)
            for name in MODELS:
                outs[name].append(self.predict(getattr(self, name), feats, **inputs[name]))
        store = self._outputs.setdefault(stage, {})
        bounds = np.cumsum([0] + [len(v) for v in views])
        for name in MODELS:
            strong = torch.cat([o.strong for o in outs[name]]).float().cpu()
            weak = torch.cat([o.weak for o in outs[name]]).float().cpu()
            probs = store.setdefault(name, {})
            weak_probs = store.setdefault(f"{name}_weak", {})
            for i, filename in enumerate(batch["filename"]):
                a, b = bounds[i], bounds[i + 1]
                frames = max(grid.window_frames, grid.n_frames(lengths[i]))
                probs[filename] = grid.merge(strong[a:b], frames).numpy()
                weak_probs[filename] = weak[a:b].max(dim=0).values.numpy()
        if batch["has_strong"].any():
            student = outs["student"]
            logits = torch.cat([o.strong_logits for o in student])
            out = student[0]._replace(strong_logits=logits, weak_logits=torch.cat([o.weak_logits for o in student]))
            targets = self._window_targets(batch["strong"], rows)
            has_strong = batch["has_strong"][[i for i, _ in rows]]
            loss = supervised_losses(out, targets, batch["weak"][[i for i, _ in rows]], has_strong, has_strong,
                                     class_mask=self._scored_mask(stage, len(rows)))
            self.log(f"{stage}/loss_strong", loss["strong"], batch_size=int(has_strong.sum()), sync_dist=True,
                     add_dataloader_idx=False)
        targets = store.setdefault("weak_targets", {})
        for i, filename in enumerate(batch["filename"]):
            targets[filename] = batch["weak"][i].cpu().numpy()
        if stage == self._plotted_set() and self._plot_batch is None:
            n = min(self.cfg.evaluation.n_plot_clips, len(views))  # the first window of each plotted clip
            self._plot_batch = {
                "features": self.features(torch.stack([v[0] for v in views[:n]])).float().cpu().numpy(),
                "reference": batch["strong"][:n, :, : grid.window_frames].cpu().numpy(),
                "filename": list(batch["filename"][:n]),
            }

    def _window_targets(self, strong: torch.Tensor, rows: list[tuple[int, int]]) -> torch.Tensor:
        """Strong targets ``[B, C, T]`` of whole clips cut into the frames of each ``(clip, window)``."""
        grid = self.window_grid
        need = max(k for _, k in rows) * grid.hop_frames + grid.window_frames
        if strong.shape[-1] < need:
            strong = torch.nn.functional.pad(strong, (0, need - strong.shape[-1]))
        return torch.stack([strong[i, :, k * grid.hop_frames : k * grid.hop_frames + grid.window_frames] for i, k in rows])

    def _scored_mask(self, name: str, rows: int) -> Optional[torch.Tensor]:
        """``[rows, C]`` mask of the classes evaluation set ``name`` is scored on, None when it is all of them."""
        dm = self.trainer.datamodule
        if name not in getattr(dm, "eval_sets", {}):
            return None
        scored = set(dm.scored_classes(name))
        if len(scored) == len(self.classes):
            return None
        mask = torch.tensor([c in scored for c in self.classes], device=self.device)
        return mask.expand(rows, -1)

    def _plotted_set(self) -> str:
        """The validation set whose first clips are plotted (the first one)."""
        sets = getattr(self.trainer.datamodule, "stage_sets", lambda stage: ["val"])("val")
        return sets[0] if sets else "val"

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        # Loaders: the validation sets, then the held-out weak clips when there are some.
        self._eval_step(batch, self.trainer.datamodule.val_loader_sets[dataloader_idx])

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        # Loaders: the test sets, then the validation set when the post-processing is tuned on it.
        name = self.trainer.datamodule.test_loader_sets[dataloader_idx]
        self._eval_step(batch, tune_at_test.STAGE if name.startswith("val") else name)

    def _gathered(self, stage: str) -> dict[str, dict[str, np.ndarray]]:
        """Outputs of every process merged by filename (padded shards repeat clips; the dict drops repeats)."""
        local = self._outputs.pop(stage, {})
        if self.trainer.world_size == 1:
            return local
        parts: list = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(parts, local)
        merged: dict[str, dict[str, np.ndarray]] = {}
        for part in parts:
            for key, values in part.items():
                merged.setdefault(key, {}).update(values)
        return merged

    def _objective_terms(self) -> dict[str, list[str]]:
        """The checkpoint objective's terms per validation set (``evaluation.obj_metric``)."""
        dm = self.trainer.datamodule
        return assign_objective(self.cfg.evaluation.obj_metric, {dm.eval_sets[n].dataset: n for n in dm.stage_sets("val")})

    def _score_set(self, name: str, bootstrap: int = 0, settings: Optional[dict] = None) -> dict[str, ModelScores]:
        """Every model's metrics on evaluation set ``name``, on its classes with its metrics
        (:mod:`sed.evaluation.set_scoring`)."""
        outputs = self._gathered(name)
        dm = self.trainer.datamodule
        spec = dm.eval_sets[name]
        # Validation runs every epoch: PSDS2 only when the checkpoint objective needs it, and only the objective's
        # terms between evaluation.full_metrics_every_n_epochs; piPSDS only at test.
        ev, test = self.cfg.evaluation, spec.stage == "test"
        full = test or self._on_nth_epoch(ev.get("full_metrics_every_n_epochs", 1))
        self._log_long_clips(name, outputs["student"])
        fn, jobs = scoring_jobs(outputs, MODELS, self.encoder, dm.scored_classes(name), spec.metrics,
                                dm.ground_truth[name], dm.durations[name], ev, self._objective_terms().get(name, []),
                                full, test, bootstrap, settings, spec.min_confidence)
        workers = resolve_workers(ev.get("scoring_workers", "auto"), len(jobs))
        if self._scoring_pool is None or self._scoring_pool.workers != workers:
            self.teardown_scoring()
            self._scoring_pool = ScoringPool(workers)
        return self._scoring_pool.map(fn, jobs)

    def teardown_scoring(self) -> None:
        if self._scoring_pool is not None:
            self._scoring_pool.close()
            self._scoring_pool = None

    def teardown(self, stage: str) -> None:
        self.teardown_scoring()

    def _log_long_clips(self, stage: str, probs: dict[str, np.ndarray]) -> None:
        """Say once per set how many clips are longer than a training clip (evaluated over their whole length)."""
        if stage in self._long_clips_logged or not self.trainer.is_global_zero:
            return
        self._long_clips_logged.add(stage)
        n_long = sum(p.shape[-1] > self.encoder.n_frames for p in probs.values())
        if n_long:
            grid = self.window_grid
            log.info(
                "%d of %d %s clip(s) are longer than data.clip_duration (%g s): evaluated over their whole length "
                "in %g-s windows every %g s, overlapping frame probabilities averaged (as sed.infer does)",
                n_long, len(probs), stage, self.encoder.clip_duration, self.encoder.clip_duration,
                grid.hop_frames * self.encoder.frame_duration,
            )

    def on_validation_epoch_end(self) -> None:
        dm = self.trainer.datamodule
        if self.trainer.sanity_checking:
            for name in dm.val_loader_sets:
                self._outputs.pop(name, None)
            self._plot_batch = None
            return
        # Every process scores the gathered outputs of all processes, so the values agree across ranks
        # (sync_dist averages identical numbers). Metrics are named <set>/<model>/<metric>: val/student/psds1 with
        # one dataset, val/<dataset>/student/psds1 with several.
        per_set = {name: self._score_set(name) for name in dm.stage_sets("val")}
        if "val_weak" in dm.eval_datasets:  # weak F1 on held-out real weak clips (DCASE baseline)
            weak = next(t for t in dm.subsets.values() if t.kind == "weak")
            target = next((n for n in per_set if dm.eval_sets[n].dataset == weak.dataset), None)
            held_out_weak_f1(per_set.get(target, {}), self._gathered("val_weak"),
                             [self.encoder.class_index(c) for c in dm.scored_classes("val_weak")])
        for set_name, results in per_set.items():
            for name, result in results.items():
                for key, value in result.metrics.items():
                    self.log(f"{set_name}/{name}/{key}", value, sync_dist=True)
        scores = objective_scores(per_set, self._objective_terms(), MODELS)
        ev = self.cfg.evaluation
        for name, score in scores.items():
            self.log(f"val/{name}/obj_metric", score, sync_dist=True)
        self.log("val/obj_metric", scores[ev.obj_model], prog_bar=True, sync_dist=True)
        self.preferred_model = "student" if scores["student"] > scores["teacher"] else "teacher"
        self._log_figures(per_set[self._plotted_set()], dm.scored_classes(self._plotted_set()))
        self._plot_batch = None

    def _on_nth_epoch(self, every: int) -> bool:
        """Whether this epoch is the first, a multiple of ``every`` after it, or the last (never when 0)."""
        epoch = self.current_epoch
        return bool(every) and (epoch % every == 0 or epoch == (self.trainer.max_epochs or 0) - 1)

    @rank_zero_only
    def _log_figures(self, results: dict[str, ModelScores], classes: list[str]) -> None:
        """The teacher's validation clip figures (of the first validation set, on its ``classes``), every
        ``evaluation.plot_every_n_epochs`` epochs and at the last."""
        writers = tensorboard_writers(self.loggers)
        if self._plot_batch is None or not writers or not self._on_nth_epoch(self.cfg.evaluation.plot_every_n_epochs):
            return
        plot = dict(self._plot_batch)
        if classes != self.classes:
            plot["reference"] = plot["reference"][:, [self.encoder.class_index(c) for c in classes]]
        log_validation_figures(writers, plot, results["teacher"].probabilities, classes,
                               self.cfg.data.clip_duration, "teacher", self.current_epoch, self.global_step)

    def on_test_epoch_end(self) -> None:
        ev, dm = self.cfg.evaluation, self.trainer.datamodule
        validation = self._gathered(tune_at_test.STAGE)  # the tested checkpoint on the validation set (one dataset)
        settings = tune_at_test.tune_models(validation, MODELS, self.encoder, dm.ground_truth.get("val"),
                                            dm.durations.get("val"), ev)
        # One dataset: metrics test/<model>/..., outputs in <run>/test/<model>/, results keyed by model; several:
        # test/<dataset>/<model>/..., <run>/test/<dataset>/<model>/, results keyed by <dataset>/<model>.
        per_set = {name: self._score_set(name, bootstrap=ev.psds_bootstrap, settings=settings)
                   for name in dm.stage_sets("test")}
        for set_name, results in per_set.items():
            for name, result in results.items():
                for key, value in result.metrics.items():
                    if "/" not in key:  # per-class values go to metrics.json and _log_test_details
                        self.log(f"{set_name}/{name}/{key}", value, sync_dist=True)
                self.test_results[set_name.partition("/")[2] + "/" + name if "/" in set_name else name] = dict(result.metrics)
        if self.trainer.is_global_zero:
            from sed.evaluation.outputs import write_test_outputs

            tune_at_test.save_outputs(Path(self.trainer.default_root_dir), validation, settings, MODELS, self.encoder,
                                      dm.durations.get("val"), ev, self.trainer.ckpt_path, self.preferred_model)
            for set_name, results in per_set.items():
                out_dir = Path(self.trainer.default_root_dir) / set_name
                for name, result in results.items():
                    write_test_outputs(
                        out_dir,
                        name,
                        result.scores_raw,
                        result.scores_postprocessed,
                        result.detections,
                        {**result.metrics, "postprocessing": tune_at_test.report(settings.get(name), ev)},
                        result.psd_rocs,
                    )
                log.info("Test outputs written to %s", out_dir)
                self._log_test_details(results, set_name)
            self._log_hparams()

    @rank_zero_only
    def _log_test_details(self, results: dict[str, ModelScores], set_name: str = "test") -> None:
        log_test_details(self.loggers, results, self.global_step, set_name)

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

