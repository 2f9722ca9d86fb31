"""Validation and test of :class:`sed.training.module.SEDModule`: evaluation clips cut into windows and put back
together, both networks' probabilities gathered per set, scored on each set's classes with its metrics, logged
(objective, TensorBoard figures) and written as test outputs. A mixin, so the LightningModule keeps the
training step and the wiring."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_only

from sed.evaluation import tune_at_test
from sed.evaluation.parallel import ScoringPool, resolve_workers
from sed.evaluation.scoring import ModelScores, assign_objective
from sed.evaluation.set_scoring import held_out_weak_f1, objective_scores, scoring_jobs
from sed.evaluation.tensorboard import (
    log_test_details,
    log_validation_figures,
    tensorboard_writers,
)
from sed.models.encoders import (
    models_inputs,
)
from sed.training.losses import (
    supervised_losses,
)

log = logging.getLogger(__name__)

MODELS = ("student", "teacher")


class EvaluationSteps:
    """The validation/test hooks of :class:`sed.training.module.SEDModule` (it provides ``student``, ``teacher``,
    ``cfg``, ``encoder``, the front-end and the scoring pool)."""

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
            loss = supervised_losses(
                out,
                targets,
                batch["weak"][[i for i, _ in rows]],
                has_strong,
                has_strong,
                class_mask=self._scored_mask(stage, len(rows)),
            )
            self.log(
                f"{stage}/loss_strong",
                loss["strong"],
                batch_size=int(has_strong.sum()),
                sync_dist=True,
                add_dataloader_idx=False,
            )
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
        return torch.stack(
            [strong[i, :, k * grid.hop_frames : k * grid.hop_frames + grid.window_frames] for i, k in rows]
        )

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
        return assign_objective(
            self.cfg.evaluation.obj_metric, {dm.eval_sets[n].dataset: n for n in dm.stage_sets("val")}
        )

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
        fn, jobs = scoring_jobs(
            outputs,
            MODELS,
            self.encoder,
            dm.scored_classes(name),
            spec.metrics,
            dm.ground_truth[name],
            dm.durations[name],
            ev,
            self._objective_terms().get(name, []),
            full,
            test,
            bootstrap,
            settings,
            spec.min_confidence,
        )
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
                n_long,
                len(probs),
                stage,
                self.encoder.clip_duration,
                self.encoder.clip_duration,
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
            held_out_weak_f1(
                per_set.get(target, {}),
                self._gathered("val_weak"),
                [self.encoder.class_index(c) for c in dm.scored_classes("val_weak")],
            )
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
        log_validation_figures(
            writers,
            plot,
            results["teacher"].probabilities,
            classes,
            self.cfg.data.clip_duration,
            "teacher",
            self.current_epoch,
            self.global_step,
        )

    def on_test_epoch_end(self) -> None:
        ev, dm = self.cfg.evaluation, self.trainer.datamodule
        validation = self._gathered(tune_at_test.STAGE)  # the tested checkpoint on the validation set (one dataset)
        settings = tune_at_test.tune_models(
            validation, MODELS, self.encoder, dm.ground_truth.get("val"), dm.durations.get("val"), ev
        )
        # One dataset: metrics test/<model>/..., outputs in <run>/test/<model>/, results keyed by model; several:
        # test/<dataset>/<model>/..., <run>/test/<dataset>/<model>/, results keyed by <dataset>/<model>.
        per_set = {
            name: self._score_set(name, bootstrap=ev.psds_bootstrap, settings=settings)
            for name in dm.stage_sets("test")
        }
        for set_name, results in per_set.items():
            for name, result in results.items():
                for key, value in result.metrics.items():
                    if "/" not in key:  # per-class values go to metrics.json and _log_test_details
                        self.log(f"{set_name}/{name}/{key}", value, sync_dist=True)
                self.test_results[set_name.partition("/")[2] + "/" + name if "/" in set_name else name] = dict(
                    result.metrics
                )
        if self.trainer.is_global_zero:
            from sed.evaluation.outputs import write_test_outputs

            tune_at_test.save_outputs(
                Path(self.trainer.default_root_dir),
                validation,
                settings,
                MODELS,
                self.encoder,
                dm.durations.get("val"),
                ev,
                self.trainer.ckpt_path,
                self.preferred_model,
            )
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
