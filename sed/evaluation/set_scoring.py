"""What scores one evaluation set of a run on several datasets: its classes out of the model's, its metric family.

The model predicts the union of the datasets' classes; an evaluation set is scored on its own (``data.datasets.
<name>.validation.classes``, by default the classes its dataset annotates), with the metrics of its family
(``psds``: :func:`sed.evaluation.scoring.score_model`; ``mpauc``: :func:`sed.evaluation.scoring.score_segment_model`).
With one dataset the set's classes are the model's and nothing is restricted.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from sed.data.encoder import LabelEncoder
from sed.evaluation.scoring import F1_KINDS, ModelScores, score_model, score_segment_model, term_value, weak_f1


def restrict(outputs: Mapping[str, Mapping[str, np.ndarray]], index: Optional[np.ndarray]) -> dict:
    """The evaluation outputs (``{key: {filename: array}}``, classes first) on the classes ``index`` selects."""
    if index is None:
        return dict(outputs)
    return {key: {f: np.asarray(v)[index] for f, v in values.items()} for key, values in outputs.items()}


def set_encoder(encoder: LabelEncoder, classes: Sequence[str]) -> LabelEncoder:
    """``encoder``'s frame grid with other classes."""
    if list(classes) == list(encoder.classes):
        return encoder
    return LabelEncoder.from_dict({**encoder.state_dict(), "classes": list(classes)})


def set_evaluation(evaluation: Any, index: Optional[np.ndarray], n_classes: int) -> Any:
    """The ``evaluation`` config with class-wise median windows (one per model class) cut to the set's classes."""
    windows = list(evaluation.median_window)
    if len(windows) not in (1, n_classes):
        raise ValueError(
            f"evaluation.median_window has {len(windows)} lengths for the model's {n_classes} classes; "
            "give one length, or one per class in the model's class order"
        )
    if index is None or len(windows) == 1:
        return evaluation
    out = copy.deepcopy(evaluation)
    out.median_window = [int(windows[int(i)]) for i in index]
    return out


def scoring_jobs(
    outputs: Mapping[str, Mapping[str, np.ndarray]],
    models: Sequence[str],
    encoder: LabelEncoder,
    classes: Sequence[str],
    metrics: str,
    ground_truth: Any,
    durations: Mapping[str, float],
    evaluation: Any,
    terms: Sequence[str],
    full: bool,
    test: bool,
    bootstrap: int = 0,
    settings: Optional[Mapping[str, Any]] = None,
    min_confidence: float = 0.5,
) -> tuple[Callable, dict[str, dict]]:
    """The scoring function of the set's family and its keyword arguments per model (run by a
    :class:`sed.evaluation.parallel.ScoringPool`). ``terms``: the checkpoint objective's terms on this set; ``full``:
    every metric (else, at validation, only those terms: PSDS2 and the F1 families cost most)."""
    index = None if list(classes) == list(encoder.classes) else np.array([encoder.class_index(c) for c in classes])
    evaluation = set_evaluation(evaluation, index, len(encoder.classes))
    outputs, encoder = restrict(outputs, index), set_encoder(encoder, classes)
    if metrics == "mpauc":
        return score_segment_model, {
            name: dict(
                strong_probs=outputs[name],
                encoder=encoder,
                ground_truth=ground_truth,
                durations=durations,
                evaluation=evaluation,
                min_confidence=min_confidence,
                per_class=test,
            )
            for name in models
        }
    if full:
        psds = ("psds1", "psds2") if test or "psds2" in terms else ("psds1",)
        f1 = F1_KINDS
    else:
        psds = tuple(name for name in ("psds1", "psds2") if name in terms)
        f1 = tuple(kind for kind in F1_KINDS if f"{kind}_f1" in terms)
    return score_model, {
        name: dict(
            strong_probs=outputs[name],
            weak_probs=outputs[f"{name}_weak"],
            weak_targets=outputs["weak_targets"],
            encoder=encoder,
            ground_truth=ground_truth,
            durations=durations,
            evaluation=evaluation,
            bootstrap=bootstrap,
            per_class=test,
            psds=psds,
            f1=f1,
            settings=(settings or {}).get(name),
            pipsds_windows=evaluation.tuning.median_windows if test and evaluation.pipsds else (),
        )
        for name in models
    }


def held_out_weak_f1(
    results: Mapping[str, ModelScores], held_out: Mapping[str, Mapping[str, np.ndarray]], index: Sequence[int]
) -> None:
    """Each model's ``weak_f1`` of a validation set replaced by its macro F1 on the weak clips held out for validation
    (``data.weak_val_fraction``; the DCASE baseline's), on the classes ``index`` of their dataset; the set's own is kept
    as ``weak_f1_synthetic``."""
    targets = {f: t[index] for f, t in held_out["weak_targets"].items()}
    for name, result in results.items():
        result.metrics["weak_f1_synthetic"] = result.metrics["weak_f1"]
        result.metrics["weak_f1"] = weak_f1(
            {f: p[index] for f, p in held_out[f"{name}_weak"].items()}, targets, len(index)
        )


def objective_scores(
    per_set: Mapping[str, Mapping[str, ModelScores]], terms: Mapping[str, Sequence[str]], models: Sequence[str]
) -> dict[str, float]:
    """Each model's checkpoint objective: the sum over the validation sets of their terms' values
    (:func:`sed.evaluation.scoring.assign_objective`)."""
    scores = {name: 0.0 for name in models}
    for set_name, results in per_set.items():
        for name, result in results.items():
            scores[name] += sum(term_value(result.metrics, term) for term in terms[set_name])
    return scores
