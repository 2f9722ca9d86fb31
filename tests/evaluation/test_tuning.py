"""Post-processing tuned on validation: class-wise windows against a brute-force search, thresholds against
sed_scores_eval's best F1, the settings file round trip, SEBBs against the sebbs package, piPSDS against
sed_scores_eval."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from sed.evaluation.metrics import psds
from sed.evaluation.metrics.psd import PSDS1
from sed.evaluation.postprocess import (
    batch_to_scores,
    detections_from_scores,
    median_filter,
)
from sed.evaluation.tuning import (
    PostprocessingSettings,
    load_settings,
    save_settings,
    tune_on_scores,
    tune_thresholds,
)
from sed.run.config import EvaluationConfig

FRAME = 0.064
GRID = [1, 3, 5, 7, 9, 13, 17, 21]


def short_and_long_problem(n_clips: int = 16, n_frames: int = 300, flip: float = 0.2, seed: int = 0):
    """Class ``click``: two 3-frame events per clip, clean scores (a long median filter erases them). Class ``hum``:
    one 60-frame event per clip whose scores drop out inside and spike outside on isolated frames (``flip`` of the
    frames; a long filter repairs them)."""
    rng = np.random.default_rng(seed)
    ts = np.arange(n_frames + 1) * FRAME
    probs = np.zeros((n_clips, 2, n_frames), np.float32)
    rows = []
    for i in range(n_clips):
        name = f"clip{i}.wav"
        click = np.zeros(n_frames)
        for start in (int(rng.integers(2, n_frames // 2 - 10)), int(rng.integers(n_frames // 2, n_frames - 10))):
            click[start : start + 3] = 1
            rows.append((name, round(ts[start], 6), round(ts[start + 3], 6), "click"))
        probs[i, 0] = 0.85 * click + 0.1 * rng.random(n_frames)
        start = int(rng.integers(0, n_frames - 65))
        hum = np.zeros(n_frames)
        hum[start : start + 60] = 1
        rows.append((name, round(ts[start], 6), round(ts[start + 60], 6), "hum"))
        noisy = np.where(rng.random(n_frames) < flip, 1 - hum, hum)
        probs[i, 1] = 0.8 * noisy + 0.1 * rng.random(n_frames)
    gt = pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label"])
    names = [f"clip{i}.wav" for i in range(n_clips)]
    durations = {n: float(ts[-1]) for n in names}
    return gt, durations, probs, names, ts


def evaluation(**overrides):
    ev = OmegaConf.structured(EvaluationConfig)
    for key, value in overrides.items():
        OmegaConf.update(ev, key, value)
    return ev


def test_tuned_window_of_each_class_is_the_brute_force_best():
    gt, durations, probs, names, ts = short_and_long_problem()
    classes = ["click", "hum"]
    scores = batch_to_scores(probs, names, ts, classes, durations)
    settings = tune_on_scores(scores, gt, durations, evaluation(**{"tuning.thresholds": False}))

    # Reference: every window of the grid applied to every class, PSDS1 of each class read off sed_scores_eval.
    per_window = {
        w: psds(batch_to_scores(median_filter(probs, w), names, ts, classes, durations), gt, durations, PSDS1)[
            1
        ].per_class_psds
        for w in GRID
    }
    for i, c in enumerate(classes):
        values = [per_window[w][c] for w in GRID]
        assert settings.median_window[i] == GRID[int(np.argmax(values))], (c, values)
        assert settings.tuning["median_window"]["values"][c] == pytest.approx(max(values))
    short, long = settings.median_window
    assert short < 7 < long  # the fixed 7-frame window suits neither class
    assert settings.thresholds is None


def test_thresholds_maximise_each_class_f1_and_decode_as_scored():
    from sed.evaluation.metrics import event_f1

    gt, durations, probs, names, ts = short_and_long_problem()
    classes = ["click", "hum"]
    scores = batch_to_scores(median_filter(probs, [3, 13]), names, ts, classes, durations)
    thresholds, best = tune_thresholds(scores, gt, "event_f1")
    # The F1 of the events decoded at the tuned thresholds (sed_eval) is the best F1 sed_scores_eval reported,
    # and no threshold of a grid does better for any class.
    decoded = event_f1(detections_from_scores(scores, thresholds), gt, classes, 0.2, 0.2, filenames=names)
    for c in classes:
        assert decoded["per_class"][c] == pytest.approx(best[c])
        for t in np.linspace(0.05, 0.95, 19):
            other = event_f1(detections_from_scores(scores, t), gt, classes, 0.2, 0.2, filenames=names)
            assert other["per_class"][c] <= best[c] + 1e-9


def test_settings_round_trip_through_the_file(tmp_path):
    classes = ["click", "hum"]
    median = PostprocessingSettings(classes, "median", [3, 13], {"click": 0.41, "hum": 0.63}, tuning={"clips": 5})
    boxes = PostprocessingSettings(
        classes,
        "sebbs",
        sebbs={
            "step_filter_length": {"click": 0.32, "hum": 0.64},
            "merge_threshold_abs": {"click": 0.2, "hum": math.inf},
            "merge_threshold_rel": {"click": math.inf, "hum": 2.0},
        },
    )
    path = save_settings(
        tmp_path / "pp.json", {"student": median, "teacher": boxes}, "checkpoints/epoch003.ckpt", "teacher"
    )
    json.loads(path.read_text())  # standard JSON (no Infinity)
    assert load_settings(path, "student", classes) == median
    assert load_settings(path, "teacher", classes) == boxes
    with pytest.raises(ValueError, match="tuned for classes"):
        load_settings(path, "student", ["hum", "click"])
    data = json.loads(path.read_text())
    data["models"]["student"]["thresholds"]["hum"] = 1.5
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"pp.json: models.student.thresholds.hum: expected a threshold in \[0, 1\]"):
        load_settings(path, "student")


def test_sebb_events_are_those_sebbs_gives():
    from sebbs.csebbs import CSEBBsPredictor

    from sed.evaluation.bounding_boxes import predict_sebbs, sebb_scores

    gt, durations, probs, names, ts = short_and_long_problem(n_clips=6)
    classes = ["click", "hum"]
    scores = batch_to_scores(probs, names, ts, classes, durations)
    params = {
        "step_filter_length": {"click": 0.32, "hum": 0.64},
        "merge_threshold_abs": {"click": 0.2, "hum": math.inf},
        "merge_threshold_rel": {"click": math.inf, "hum": 2.0},
    }
    direct = CSEBBsPredictor(**params, sound_classes=classes)
    boxes = direct.predict(scores)
    assert predict_sebbs(params, scores) == boxes
    ours = sebb_scores(params, scores, {n[:-4]: d for n, d in durations.items()})
    for threshold in (0.3, 0.5, 0.7):
        expected = direct.detection_thresholding(boxes, threshold)
        decoded = detections_from_scores(ours, threshold)
        got = {(f, round(a, 6), round(b, 6), c) for f, a, b, c in decoded.itertuples(index=False)}
        want = {(f"{key}.wav", round(a, 6), round(b, 6), c) for key, events in expected.items() for a, b, c in events}
        assert want and got == want


def test_sebbs_tuning_reports_the_psds_of_its_choice():
    from sed.evaluation.bounding_boxes import sebb_scores

    gt, durations, probs, names, ts = short_and_long_problem(n_clips=10)
    classes = ["click", "hum"]
    scores = batch_to_scores(probs, names, ts, classes, durations)
    settings = tune_on_scores(scores, gt, durations, evaluation(postprocessing="sebbs"))
    assert settings.method == "sebbs" and set(settings.thresholds) == set(classes)
    # The per-class PSDS1 reported for the chosen parameters is what the boxes of those parameters score.
    rescored = psds(sebb_scores(settings.sebbs, scores, {n[:-4]: d for n, d in durations.items()}), gt, durations)[1]
    for c in classes:
        assert settings.tuning["sebbs"]["values"][c] == pytest.approx(rescored.per_class_psds[c])


def test_pipsds_equals_sed_scores_eval():
    from sed_scores_eval.intersection_based import (
        postprocessing_independent_psds_from_postprocessed_scores,
    )

    from sed.data.encoder import LabelEncoder
    from sed.evaluation.metrics.ground_truth import ground_truth_dict
    from sed.evaluation.scoring import score_model

    gt, durations, probs, names, ts = short_and_long_problem(n_clips=8)
    classes = ["click", "hum"]
    encoder = LabelEncoder(classes, sample_rate=16000, hop_length=256, clip_duration=ts[-1], time_pooling=4)
    assert encoder.n_frames == probs.shape[-1] and encoder.frame_timestamps(probs.shape[-1])[1] == pytest.approx(FRAME)
    weak = {n: np.zeros(2, np.float32) for n in names}
    result = score_model(
        dict(zip(names, probs)),
        weak,
        weak,
        encoder,
        gt,
        durations,
        evaluation(),
        per_class=True,
        psds=("psds1",),
        pipsds_windows=[1, 5, 7, 9],
    )
    sets = [
        batch_to_scores(median_filter(probs, w), names, encoder.frame_timestamps(probs.shape[-1]), classes, durations)
        for w in (1, 5, 7, 9)
    ]
    value, per_class, *_ = postprocessing_independent_psds_from_postprocessed_scores(
        sets,
        ground_truth_dict(gt),
        {n[:-4]: d for n, d in durations.items()},
        dtc_threshold=0.7,
        gtc_threshold=0.7,
        cttc_threshold=None,
        alpha_ct=0.0,
        alpha_st=1.0,
        unit_of_time="hour",
        max_efpr=100.0,
    )
    assert result.metrics["pipsds1"] == pytest.approx(value)
    for c in classes:
        assert result.metrics[f"pipsds1/{c}"] == pytest.approx(per_class[c])
    assert result.metrics["pipsds1"] >= result.metrics["psds1"] - 1e-9  # the 7-frame filter is one of many


def test_train_tunes_on_validation_and_infer_uses_it(tiny_dataset, tmp_path):
    """One tiny run with tuning on: settings saved in the run and beside the tested checkpoint, the same as tuning
    offline on the validation scores it saved (so the test set played no part), metrics.json says so, and
    sed.infer on the test audio with that checkpoint writes the run's events_tuned.tsv; the console shows one
    test table."""
    from conftest import run_train, tiny_overrides

    from sed.evaluation.outputs import read_scores_dir
    from sed.infer import main as infer_main

    exp = tmp_path / "exp"
    proc = run_train(
        [
            *tiny_overrides(tiny_dataset, exp, epochs=1),
            "evaluation.tune_postprocessing=true",
            "evaluation.save_validation_scores=true",
            "energy.enabled=false",
        ]
    )
    # The validation pass at test time (for tuning) adds no second, near-empty test table to the console.
    console = proc.stdout + proc.stderr
    assert "DataLoader 1" not in console and "val_at_test" not in console and "Test outputs:" in console
    (run,) = [p for p in (exp / "tiny").iterdir() if p.is_dir()]
    saved = json.loads((run / "postprocessing.json").read_text())
    assert saved["tuned_on"] == "validation" and set(saved["models"]) == {"student", "teacher"}
    ckpt = run / saved["checkpoint"]
    assert ckpt.is_file() and (ckpt.parent / f"{ckpt.stem}.postprocessing.json").is_file()
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    from sed.data.tsv import read_durations, read_strong

    val_gt = read_strong(tiny_dataset / cfg.data.val_tsv)
    val_durations = read_durations(tiny_dataset / cfg.data.val_durations)
    for name in ("student", "teacher"):
        metrics = json.loads((run / "test" / name / "metrics.json").read_text())
        assert metrics["postprocessing"]["tuned_on"] == "validation"
        assert {"pipsds1", "psds1", "event_f1_macro@tuned", "event_f1_macro@0.5"} <= set(metrics)
        assert (run / "test" / name / "events_tuned.tsv").is_file()
        offline = tune_on_scores(
            read_scores_dir(run / "validation" / name / "scores_raw"), val_gt, val_durations, cfg.evaluation, model=name
        )
        tuned = load_settings(run / "postprocessing.json", name)
        assert tuned.median_window == offline.median_window
        # Score files hold 9 significant digits: a threshold halfway between two scores moves by as much.
        assert tuned.thresholds == pytest.approx(offline.thresholds, abs=1e-7)
    out = tmp_path / "events.tsv"
    assert (
        infer_main(
            [
                str(ckpt),
                str(tiny_dataset / cfg.data.test_tsv),
                "--audio-dir",
                str(tiny_dataset / cfg.data.test_audio),
                "-o",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    preferred = saved["preferred_model"]
    assert out.read_text() == (run / "test" / preferred / "events_tuned.tsv").read_text()
    # sed.export embeds the settings; sed.infer on the exported file decodes the same events.
    from sed.inference.export import export_detector

    exported = export_detector(ckpt, tmp_path / "model.pt", check=False)
    assert exported.metadata.extra["postprocessing"]["method"] == "median"
    out_ts = tmp_path / "events_ts.tsv"
    assert (
        infer_main(
            [
                "--torchscript",
                str(tmp_path / "model.pt"),
                str(tiny_dataset / cfg.data.test_tsv),
                "--audio-dir",
                str(tiny_dataset / cfg.data.test_audio),
                "-o",
                str(out_ts),
                "-q",
            ]
        )
        == 0
    )
    assert out_ts.read_text() == out.read_text()
