"""What the test stage does with the validation set: the tested checkpoint's outputs on the validation set tune the
post-processing (:mod:`sed.evaluation.tuning`) before the test set is scored with it, and are saved for tuning
offline (``benchmarks/postprocessing.py``).

The validation set is a second test dataloader (:func:`validation_needed_at_test`), so the same checkpoint, devices
and processes produce both sets' outputs; the test set's outputs never reach the tuning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from sed.evaluation.tuning import (
    RUN_FILE,
    PostprocessingSettings,
    save_settings,
    settings_path_for,
    tune_postprocessing,
)

logger = logging.getLogger(__name__)

STAGE = "val_at_test"  # key of the validation outputs collected during the test stage
SCORES_DIR = "validation"  # <run>/validation/<model>/scores_raw/


def tuning_enabled(evaluation: Any) -> bool:
    """Whether the test outputs use post-processing tuned on validation (SEBBs always are)."""
    return bool(evaluation.tune_postprocessing) or str(evaluation.postprocessing) == "sebbs"


def validation_needed_at_test(evaluation: Any) -> bool:
    """Whether the test stage also runs the validation set (to tune, or to save its scores)."""
    return tuning_enabled(evaluation) or bool(evaluation.save_validation_scores)


def tune_models(
    outputs: Mapping[str, Mapping[str, np.ndarray]],
    models: tuple[str, ...],
    encoder: Any,
    ground_truth: Any,
    durations: Mapping[str, float],
    evaluation: Any,
) -> dict[str, PostprocessingSettings]:
    """Settings tuned on each model's validation outputs (``outputs[name]``: raw ``[C, T]`` per filename)."""
    if not tuning_enabled(evaluation):
        return {}
    if not outputs:
        raise RuntimeError("post-processing tuning needs the validation outputs, but the test stage produced none")
    return {
        name: tune_postprocessing(outputs[name], encoder, ground_truth, durations, evaluation, model=name)
        for name in models
    }


def save_outputs(
    run_dir: Path,
    outputs: Mapping[str, Mapping[str, np.ndarray]],
    settings: Mapping[str, PostprocessingSettings],
    models: tuple[str, ...],
    encoder: Any,
    durations: Mapping[str, float],
    evaluation: Any,
    checkpoint: Optional[str],
    preferred_model: str,
) -> None:
    """Write the validation raw scores (``evaluation.save_validation_scores``) and the tuned settings:
    ``<run>/postprocessing.json`` and, when the tested checkpoint is one of this run's, beside it."""
    if evaluation.save_validation_scores and outputs:
        from sed.evaluation.outputs import write_scores_dir
        from sed.evaluation.postprocess import batch_to_scores

        for name in models:
            filenames = sorted(outputs[name])
            raw = [np.asarray(outputs[name][f]) for f in filenames]
            timestamps = [encoder.frame_timestamps(p.shape[-1]) for p in raw]
            scores = batch_to_scores(raw, filenames, timestamps, list(encoder.classes), durations)
            target = write_scores_dir(scores, run_dir / SCORES_DIR / name / "scores_raw", owned=True)
            logger.info("%s validation scores (raw) written to %s", name, target)
    if not settings:
        return
    run_dir = Path(run_dir)
    relative = None
    beside = None
    if checkpoint:
        ckpt = Path(checkpoint).resolve()
        if ckpt.parent.parent == run_dir.resolve():
            relative = str(ckpt.relative_to(run_dir.resolve()))
            beside = settings_path_for(ckpt)
        else:
            relative = str(ckpt)
    path = save_settings(run_dir / RUN_FILE, settings, checkpoint=relative, preferred_model=preferred_model)
    if beside is not None:
        save_settings(beside, settings, checkpoint=relative, preferred_model=preferred_model)
        logger.info(
            "Tuned post-processing saved to %s and %s (sed.infer, sed.export and sed.submit use it with "
            "that checkpoint)",
            path,
            beside,
        )
    else:
        logger.info(
            "Tuned post-processing saved to %s (use it with: python -m sed.infer %s ... --postprocessing %s)",
            path,
            checkpoint or "CHECKPOINT",
            path,
        )


def report(settings: Optional[PostprocessingSettings], evaluation: Any) -> dict[str, Any]:
    """The ``postprocessing`` block of ``metrics.json``: what the test outputs were post-processed with, and
    whether it was tuned (always on the validation set, never on the test set)."""
    if settings is None:
        return {
            "method": "median",
            "median_window": list(evaluation.median_window),
            "thresholds": list(evaluation.thresholds),
            "tuned_on": None,
        }
    out = settings.to_json()
    out["tuned_on"] = "validation"
    out["settings_file"] = RUN_FILE
    out["note"] = (
        f"tuned on the {settings.tuning.get('clips', '?')} validation clips with the tested checkpoint; "
        "the test set was not used. Events at the tuned thresholds: events_tuned.tsv, metrics '@tuned'"
    )
    return out
