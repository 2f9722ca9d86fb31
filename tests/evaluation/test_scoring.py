"""score_model: only the metric families asked for, with the values the full scoring gives them."""

from __future__ import annotations

from test_parallel import _jobs

from sed.evaluation.scoring import objective, score_model


def test_only_the_objectives_terms_are_scored_with_the_full_scorings_values():
    job = _jobs()["student"]
    full = score_model(**job)
    part = score_model(**{**job, "psds": (), "f1": ("intersection",)})
    assert {"psds1", "event_f1_macro@0.5", "segment_f1_macro@0.5", "intersection_f1_macro@0.5"} <= set(full.metrics)
    assert not any(k.startswith(("psds", "event_", "segment_")) for k in part.metrics)
    assert {k: v for k, v in full.metrics.items() if k in part.metrics} == part.metrics
    assert part.detections == {} and full.detections
    spec = "weak_f1+intersection_f1"
    assert objective(part.metrics, spec) == objective(full.metrics, spec)
    assert part.probabilities.keys() == full.probabilities.keys()  # the validation figures still have their input
