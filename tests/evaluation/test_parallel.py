"""Scoring the student and the teacher in worker processes gives the serial numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from sed.data.encoder import LabelEncoder
from sed.evaluation.parallel import ScoringPool, resolve_workers
from sed.evaluation.scoring import score_model
from sed.run.config import EvaluationConfig


def short_and_long_problem(n_clips: int, n_frames: int = 300, frame: float = 0.064, seed: int = 0):
    """Clips with a short 'click' and a long 'hum' event each; noisy, smoothed frame probabilities around them."""
    rng = np.random.default_rng(seed)
    ts = np.arange(n_frames + 1) * frame
    names, rows, probs = [f"clip{i}.wav" for i in range(n_clips)], [], []
    for name in names:
        target = np.zeros((2, n_frames), np.float32)
        for c, (label, length) in enumerate((("click", 6), ("hum", 120))):
            on = int(rng.integers(0, n_frames - length))
            target[c, on : on + length] = 1
            rows.append((name, ts[on], ts[on + length], label))
        noisy = np.clip(0.7 * target + 0.3 * rng.random(target.shape), 0, 1)
        probs.append(noisy.astype(np.float32))
    gt = pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label"])
    return gt, {n: float(ts[-1]) for n in names}, np.stack(probs), names, ts


def _jobs() -> dict[str, dict]:
    gt, durations, probs, names, ts = short_and_long_problem(n_clips=12)
    classes = ["click", "hum"]
    encoder = LabelEncoder(classes, sample_rate=16000, hop_length=256, clip_duration=ts[-1], time_pooling=4)
    ev = OmegaConf.structured(EvaluationConfig)
    rng = np.random.default_rng(1)
    jobs = {}
    for name, noise in (("student", 0.0), ("teacher", 0.15)):  # two models with different outputs
        p = np.clip(probs + noise * rng.standard_normal(probs.shape), 0, 1).astype(np.float32)
        weak = {n: p[i].max(-1) for i, n in enumerate(names)}
        jobs[name] = dict(
            strong_probs=dict(zip(names, p)),
            weak_probs=weak,
            weak_targets=weak,
            encoder=encoder,
            ground_truth=gt,
            durations=durations,
            evaluation=ev,
            psds=("psds1", "psds2"),
        )
    return jobs


def test_two_workers_give_the_serial_metrics():
    jobs = _jobs()
    serial = ScoringPool(0).map(score_model, jobs)
    pool = ScoringPool(2)
    try:
        parallel = pool.map(score_model, jobs)
        again = pool.map(score_model, jobs)  # the pool is kept between validations
    finally:
        pool.close()
    assert serial["student"].metrics != serial["teacher"].metrics
    for name in jobs:
        assert parallel[name].metrics == serial[name].metrics
        assert again[name].metrics == serial[name].metrics
        assert parallel[name].detections.keys() == serial[name].detections.keys()


def test_workers_setting():
    assert resolve_workers(0) == 0 and resolve_workers(3, jobs=2) == 2 and resolve_workers("1") == 1
    assert resolve_workers("auto") in (0, 2)
    with pytest.raises(ValueError, match="scoring_workers"):
        resolve_workers("many")
