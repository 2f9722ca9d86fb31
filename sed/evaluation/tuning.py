"""Post-processing tuned on the validation set and saved with the model: class-wise median-filter lengths and
decision thresholds, or Sound Event Bounding Boxes (:mod:`sed.evaluation.bounding_boxes`).

Windows: each class takes the length of ``evaluation.tuning.median_windows`` that maximises its own validation
PSDS (``window_metric``, PSDS1 by default). The single-class PSD-ROC of a class depends only on that class's
scores (also with PSDS2's cross-triggers, which are the class's detections over other classes' events), so the
choices of different classes do not interact, and the criterion is threshold-free: the window is not tied to a
threshold that is tuned next. An intersection F1 criterion would be tied to one threshold and, at DCASE's
dtc = gtc = 0.5, rewards boundaries far less than PSDS1's 0.7.

Thresholds: then, on the scores post-processed with those windows (or boxes), each class takes the threshold with
its best validation F1 (``threshold_metric``: sed_eval's collar-based event F1 by default, DCASE's reported F1),
computed exactly over every operating point by sed_scores_eval's ``best_fscore``.

The result, :class:`PostprocessingSettings` per model, is written to ``<run>/postprocessing.json`` and next to the
tested checkpoint (``checkpoints/<name>.postprocessing.json``), where ``sed.infer``, ``sed.export`` and
``sed.submit`` find it (:func:`settings_path_for`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from sed.evaluation.metrics.ground_truth import _drop_classes_without_events, _prepare
from sed.evaluation.metrics.psd import SCENARIOS, psds_sweep
from sed.evaluation.postprocess import audio_id, batch_to_scores, median_filter
from sed.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

FORMAT = "sed-postprocessing"
VERSION = 1
METHODS = ("median", "sebbs")
WINDOW_METRICS = ("psds1", "psds2")
THRESHOLD_METRICS = ("event_f1", "intersection_f1")
RUN_FILE = "postprocessing.json"


@dataclass
class PostprocessingSettings:
    """How one model's frame probabilities become scores and events.

    ``method`` ``"median"``: ``median_window`` holds one filter length per class (class order). ``"sebbs"``:
    ``sebbs`` holds ``{parameter: {class: value}}`` (:mod:`sed.evaluation.bounding_boxes`). ``thresholds`` are
    class-wise decision thresholds, or None for the configured ``evaluation.thresholds``. ``tuning`` records how
    the values were chosen (set, clips, criteria and their validation values).
    """

    classes: list[str]
    method: str = "median"
    median_window: list[int] = field(default_factory=list)
    thresholds: Optional[dict[str, float]] = None
    sebbs: Optional[dict[str, dict[str, float]]] = None
    tuning: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"post-processing method must be one of {METHODS}, got {self.method!r}")
        if self.method == "median" and len(self.median_window) != len(self.classes):
            raise ValueError(f"{len(self.median_window)} median windows for {len(self.classes)} classes")
        if self.method == "sebbs" and self.sebbs is None:
            raise ValueError("post-processing 'sebbs' without SEBB parameters")
        if self.thresholds is not None and set(self.thresholds) != set(self.classes):
            raise ValueError(f"thresholds name classes {sorted(self.thresholds)}, the model has {self.classes}")

    # ------------------------------------------------------------------ applying
    def apply(
        self, scores: Mapping[str, pd.DataFrame], durations: Mapping[str, float] | None = None
    ) -> dict[str, pd.DataFrame]:
        """Post-processed score tables of raw ones (``{audio_id: DataFrame}``): median-filtered on the same frames,
        or SEBBs over the clip's duration (``durations`` keyed by filename or audio id; default the scores' end)."""
        if self.method == "median":
            return median_filter_scores(scores, self.median_window)
        from sed.evaluation.bounding_boxes import sebb_scores

        dur = None if durations is None else {audio_id(k): float(v) for k, v in durations.items()}
        return sebb_scores(self.sebbs, scores, dur)

    def threshold(self, default: float) -> float | dict[str, float]:
        """The decision threshold(s) events are decoded with: the tuned ones, else ``default``."""
        return dict(self.thresholds) if self.thresholds is not None else float(default)

    # ------------------------------------------------------------------ describing and saving
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "classes": list(self.classes)}
        if self.method == "median":
            out["median_window"] = {c: int(w) for c, w in zip(self.classes, self.median_window)}
        else:
            from sed.evaluation.bounding_boxes import params_to_json

            out["sebbs"] = params_to_json(self.sebbs)
        out["thresholds"] = None if self.thresholds is None else {c: float(self.thresholds[c]) for c in self.classes}
        out["tuning"] = _json_safe(self.tuning)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> "PostprocessingSettings":
        """Parse :meth:`to_json`; errors name ``where`` (the file and key)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected an object")
        method = data.get("method")
        classes = data.get("classes")
        if method not in METHODS:
            raise ValueError(f"{where}.method: expected one of {METHODS}, got {method!r}")
        if not isinstance(classes, list) or not classes:
            raise ValueError(f"{where}.classes: expected the list of classes")
        classes = [str(c) for c in classes]
        windows: list[int] = []
        sebbs = None
        if method == "median":
            given = data.get("median_window")
            if not isinstance(given, Mapping) or set(given) != set(classes):
                raise ValueError(f"{where}.median_window: expected {{class: frames}} for every class {classes}")
            windows = [_int_at_least(given[c], 1, f"{where}.median_window.{c}") for c in classes]
        else:
            from sed.evaluation.bounding_boxes import params_from_json

            sebbs = params_from_json(data.get("sebbs"), f"{where}.sebbs")
        thresholds = data.get("thresholds")
        if thresholds is not None:
            if not isinstance(thresholds, Mapping) or set(thresholds) != set(classes):
                raise ValueError(f"{where}.thresholds: expected {{class: threshold}} for every class {classes}")
            thresholds = {c: _probability(thresholds[c], f"{where}.thresholds.{c}") for c in classes}
        return cls(classes, method, windows, thresholds, sebbs, dict(data.get("tuning") or {}))


def _int_at_least(value: Any, low: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < low:
        raise ValueError(f"{where}: expected an integer >= {low}, got {value!r}")
    return int(value)


def _probability(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{where}: expected a threshold in [0, 1], got {value!r}")
    return float(value)


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def settings_path_for(checkpoint: str | Path) -> Path:
    """Where the settings tuned for ``checkpoint`` live beside it: ``<dir>/<stem>.postprocessing.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.postprocessing.json")


def save_settings(
    path: str | Path,
    settings: Mapping[str, PostprocessingSettings],
    checkpoint: Optional[str] = None,
    preferred_model: Optional[str] = None,
) -> Path:
    """Write the settings of each model (``{"student": ..., "teacher": ...}``) as one JSON file, atomically."""
    data = {
        "format": FORMAT,
        "version": VERSION,
        "tuned_on": "validation",
        "checkpoint": checkpoint,
        "preferred_model": preferred_model,
        "models": {name: s.to_json() for name, s in settings.items()},
    }
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return Path(path)


def load_settings(path: str | Path, model: str, classes: Optional[Sequence[str]] = None) -> PostprocessingSettings:
    """The settings of ``model`` saved in ``path`` by :func:`save_settings`; with ``classes`` (the model's), a file
    tuned for another class list is refused. Errors name the file and key."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such post-processing settings file") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path}: cannot read post-processing settings: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a post-processing settings file (format {FORMAT!r}, written by train.py)")
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: settings version {data.get('version')!r}, this sed reads version {VERSION}")
    models = data.get("models")
    if not isinstance(models, dict) or model not in models:
        raise ValueError(f"{path}: no settings for the {model} (has {sorted(models or {})})")
    settings = PostprocessingSettings.from_json(models[model], f"{path}: models.{model}")
    if classes is not None and list(classes) != settings.classes:
        raise ValueError(f"{path}: tuned for classes {settings.classes}, the model has {list(classes)}")
    return settings


def median_filter_clips(probs: list[np.ndarray], window: int | Sequence[int]) -> list[np.ndarray]:
    """Median-filter ``[C, T_i]`` clips, one stacked call per clip length (one call when all have one length)."""
    out: list[np.ndarray] = [np.empty(0)] * len(probs)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(probs):
        by_length.setdefault(p.shape[-1], []).append(i)
    for rows in by_length.values():
        filtered = median_filter(np.stack([probs[i] for i in rows]), window)
        for i, f in zip(rows, filtered):
            out[i] = f
    return out


# ---------------------------------------------------------------------------------------------------- tuning
def median_filter_scores(scores: Mapping[str, pd.DataFrame], window: int | Sequence[int]) -> dict[str, pd.DataFrame]:
    """Score tables median-filtered along their frames (one length, or one per class), frames unchanged."""
    from sed_scores_eval.base_modules.scores import create_score_dataframe

    out = {}
    for key, df in scores.items():
        classes = list(df.columns[2:])
        values = df[classes].to_numpy(dtype=np.float64).T
        timestamps = np.append(df["onset"].to_numpy(dtype=np.float64), float(df["offset"].iloc[-1]))
        out[key] = create_score_dataframe(median_filter(values, window).T, timestamps, classes)
    return out


def median_window_sweep(
    scores: Mapping[str, pd.DataFrame],
    ground_truth: pd.DataFrame | Mapping,
    durations: Mapping[str, float],
    windows: Sequence[int],
    metric: str = "psds1",
):
    """:func:`sed.evaluation.metrics.psd.psds_sweep` over the median filters ``windows`` of raw ``scores`` (every
    class filtered with the same length in each set): per-window, per-class PSDS and the piPSDS of the set."""
    if metric not in WINDOW_METRICS:
        raise ValueError(f"evaluation.tuning.window_metric must be one of {WINDOW_METRICS}, got {metric!r}")
    if not windows or min(int(w) for w in windows) < 1:
        raise ValueError(f"evaluation.tuning.median_windows must be lengths >= 1, got {list(windows)}")
    sets = [median_filter_scores(scores, int(w)) for w in windows]
    return psds_sweep(sets, ground_truth, durations, SCENARIOS[metric])


def best_per_class(
    values: Sequence[Mapping[str, float]], candidates: Sequence[Any], prefer: Mapping[str, Any] | None = None
) -> dict[str, tuple[Any, float]]:
    """For every class present in ``values[i]`` (the criterion under candidate ``i``), the candidate with the highest
    value and that value. Ties go to ``prefer[class]`` (the configured setting) when it is among the best, else to
    the earliest candidate: a class the validation set cannot tell apart keeps what it had."""
    best: dict[str, tuple[Any, float]] = {}
    for candidate, per_class in zip(candidates, values):
        for c, v in per_class.items():
            if (
                c not in best
                or v > best[c][1]
                or (v == best[c][1] and prefer is not None and prefer.get(c) == candidate)
            ):
                best[c] = (candidate, float(v))
    return best


def tune_thresholds(
    scores: Mapping[str, pd.DataFrame],
    ground_truth: pd.DataFrame | Mapping,
    metric: str = "event_f1",
    default: float = 0.5,
) -> tuple[dict[str, float], dict[str, float]]:
    """Class-wise decision thresholds with the best F1 of each class on ``scores`` (post-processed).

    ``metric`` ``event_f1``: collar-based F1 (onset collar 0.2 s, offset max(0.2 s, 20 % of the event), sed_eval's
    event-based F1); ``intersection_f1``: intersection-based F1 (dtc = gtc = 0.5). A threshold lies halfway
    between two score values, so "score > threshold" (how events are decoded here) and sed_scores_eval's ">="
    agree. A class without ground-truth events, or whose best F1 is 0 (no threshold finds any of its events), keeps
    ``default``. Returns ``(thresholds, {class: best F1})``.
    """
    from sed_scores_eval import collar_based, intersection_based

    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"evaluation.tuning.threshold_metric must be one of {THRESHOLD_METRICS}, got {metric!r}")
    all_classes = list(next(iter(scores.values())).columns[2:])
    prepared, gt, _ = _prepare(scores, ground_truth, None)
    prepared, present = _drop_classes_without_events(prepared, gt)
    thresholds = {c: float(default) for c in all_classes}
    if not present:
        return thresholds, {}
    if metric == "event_f1":
        f, _, _, best, _ = collar_based.best_fscore(
            prepared, gt, onset_collar=0.2, offset_collar=0.2, offset_collar_rate=0.2
        )
    else:
        f, _, _, best, _ = intersection_based.best_fscore(prepared, gt, dtc_threshold=0.5, gtc_threshold=0.5)
    for c in present:
        if not f[c] > 0:
            continue
        t = float(best[c])
        thresholds[c] = 1.0 if t == math.inf else float(min(max(t, 0.0), 1.0))  # inf: never detecting is best
    return thresholds, {c: float(f[c]) for c in present}


def tune_postprocessing(
    probs: Mapping[str, np.ndarray],
    encoder: Any,
    ground_truth: pd.DataFrame,
    durations: Mapping[str, float],
    evaluation: Any,
    model: str = "",
) -> PostprocessingSettings:
    """:func:`tune_on_scores` of one model's validation outputs: raw ``[C, T]`` frame probabilities per filename on
    the encoder's frame grid."""
    filenames = sorted(probs)
    raw = [np.asarray(probs[f]) for f in filenames]
    timestamps = [encoder.frame_timestamps(p.shape[-1]) for p in raw]
    scores = batch_to_scores(raw, filenames, timestamps, list(encoder.classes), durations)
    return tune_on_scores(scores, ground_truth[ground_truth["filename"].isin(filenames)], durations, evaluation, model)


def tune_on_scores(
    scores: Mapping[str, pd.DataFrame],
    ground_truth: pd.DataFrame | Mapping,
    durations: Mapping[str, float],
    evaluation: Any,
    model: str = "",
) -> PostprocessingSettings:
    """Post-processing settings tuned on raw validation score tables (``{audio_id: DataFrame}``, e.g. a run's
    ``validation/<model>/scores_raw/``) and their ground truth and durations.

    ``evaluation``: the ``evaluation`` config (``postprocessing``, ``median_window``, ``thresholds``, ``tuning``).
    ``median``: class-wise windows from ``tuning.median_windows``; ``sebbs``: SEBB parameters by sebbs's own
    selection. Then, with ``tuning.thresholds``, class-wise thresholds. Classes without validation events keep the
    configured window and threshold (the first of ``evaluation.thresholds``).
    """
    method = str(evaluation.postprocessing)
    if method not in METHODS:
        raise ValueError(f"evaluation.postprocessing must be one of {METHODS}, got {method!r}")
    tuning = evaluation.tuning
    scores, gt, dur = _prepare(scores, ground_truth, durations)
    classes = list(next(iter(scores.values())).columns[2:])
    record: dict[str, Any] = {"set": "validation", "clips": len(scores), "model": model}
    configured = [int(w) for w in evaluation.median_window]
    default_windows = configured * len(classes) if len(configured) == 1 else configured
    if len(default_windows) != len(classes):
        raise ValueError(f"evaluation.median_window: {len(configured)} lengths for {len(classes)} classes")
    if method == "median":
        grid = [int(w) for w in tuning.median_windows]
        sweep = median_window_sweep(scores, gt, dur, grid, tuning.window_metric)
        best = best_per_class(sweep.per_class, grid, dict(zip(classes, default_windows)))
        windows = [int(best[c][0]) if c in best else default_windows[i] for i, c in enumerate(classes)]
        record["median_window"] = {
            "criterion": f"per-class {tuning.window_metric} on validation",
            "grid": grid,
            "values": {c: best[c][1] for c in best},
            "untuned": [c for c in classes if c not in best],
            f"pi{tuning.window_metric}": sweep.pipsds,
        }
        settings = PostprocessingSettings(classes, "median", windows, tuning=record)
    else:
        from sed.evaluation.bounding_boxes import tune_sebbs

        grid = {
            "step_filter_lengths": list(tuning.sebbs_step_filter_lengths),
            "merge_thresholds_abs": list(tuning.sebbs_merge_thresholds_abs),
            "merge_thresholds_rel": list(tuning.sebbs_merge_thresholds_rel),
        }
        params, values = tune_sebbs(scores, gt, dur, grid, tuning.window_metric)
        record["sebbs"] = {
            "criterion": f"per-class {tuning.window_metric} on validation (sebbs select_best_psds)",
            "grid": grid,
            "values": values,
            "untuned": [c for c in classes if c not in values],
        }
        settings = PostprocessingSettings(classes, "sebbs", sebbs=params, tuning=record)
    if tuning.thresholds:
        thresholds, f1 = tune_thresholds(
            settings.apply(scores, dur), gt, tuning.threshold_metric, float(evaluation.thresholds[0])
        )
        settings.thresholds = thresholds
        record["thresholds"] = {
            "criterion": f"per-class best {tuning.threshold_metric} on validation",
            "values": f1,
            "untuned": [c for c in classes if c not in f1],
        }
    logger.info(
        "%s post-processing tuned on %d validation clips: %s", model or "model", len(scores), describe(settings)
    )
    return settings


def describe(settings: PostprocessingSettings) -> str:
    """One line: the windows (or SEBB step filters) and thresholds per class."""
    if settings.method == "median":
        parts = [f"median windows {dict(zip(settings.classes, settings.median_window))}"]
    else:
        parts = [f"SEBB step filters (s) {settings.sebbs['step_filter_length']}"]
    if settings.thresholds is not None:
        parts.append("thresholds {" + ", ".join(f"{c}: {t:.3g}" for c, t in settings.thresholds.items()) + "}")
    return "; ".join(parts)
