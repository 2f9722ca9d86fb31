from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
import sed_eval
from sed_scores_eval import intersection_based
from sed_scores_eval.base_modules.scores import create_score_dataframe

from sed.evaluation import metrics
from sed.evaluation.metrics import PSDS1, PSDS2, EvalConfig, evaluate, evaluate_full
from sed.evaluation.postprocess import detections_from_scores

CLASSES = ["alarm", "dog", "speech"]
FRAME = 0.1
N_FRAMES = 50  # 5-second clips
TS = np.arange(N_FRAMES + 1) * FRAME


def _dataset(seed: int = 0, n_clips: int = 12):
    """Ground truth on the frame grid (so a perfect score matrix decodes exactly) and durations.

    Two clips have no events and are listed with a no-event row, as DCASE files do.
    """
    rng = np.random.default_rng(seed)
    rows, targets = [], {}
    for n in range(n_clips):
        name = f"clip{n:02d}.wav"
        target = np.zeros((N_FRAMES, len(CLASSES)))
        if n < 2:
            rows.append((name, np.nan, np.nan, ""))
        else:
            for c in range(len(CLASSES)):
                if rng.random() < 0.7 or n == 2:
                    start = int(rng.integers(0, 30))
                    stop = int(rng.integers(start + 3, N_FRAMES + 1))
                    rows.append((name, round(start * FRAME, 6), round(stop * FRAME, 6), CLASSES[c]))
                    target[start:stop, c] = 1
        targets[name[:-4]] = target
    gt = pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label"])
    durations = {f"clip{n:02d}.wav": N_FRAMES * FRAME for n in range(n_clips)}
    return gt, durations, targets


def _scores(targets: dict, noise: float, seed: int = 1, false_alarms: int = 0) -> dict:
    """Scores: 0.6 on target frames plus uniform noise, rescaled to [0, 1], and optional spurious 3-frame bursts."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, target in targets.items():
        probs = (0.6 * target + noise * rng.random(target.shape)) / (0.6 + noise)
        for _ in range(false_alarms):
            t, c = int(rng.integers(0, N_FRAMES - 3)), int(rng.integers(0, len(CLASSES)))
            probs[t : t + 3, c] = np.maximum(probs[t : t + 3, c], rng.uniform(0.5, 1.0))
        out[key] = create_score_dataframe(probs, TS, CLASSES)
    return out


@pytest.fixture(scope="module")
def data():
    gt, durations, targets = _dataset()
    return gt, durations, targets, _scores(targets, noise=0.7)


def _gt_dict(gt: pd.DataFrame) -> dict:
    out = {}
    for name, on, off, lab in gt.itertuples(index=False):
        events = out.setdefault(name[:-4], [])
        if lab:
            events.append((on, off, lab))
    return out


def _stem_durations(durations):
    return {k[:-4]: v for k, v in durations.items()}


# ----------------------------------------------------------------------------- PSDS
@pytest.mark.parametrize("scenario", [PSDS1, PSDS2])
def test_psds_equals_sed_scores_eval_called_directly(data, scenario):
    gt, durations, targets, _ = data
    # Hard scores, and clips declared 60 s long so that a few false positives stay below max eFPR:
    # neither scenario saturates nor collapses to 0.
    scores = _scores(targets, noise=0.8, seed=5, false_alarms=2)
    durations = {k: 60.0 for k in durations}
    value, roc = metrics.psds(scores, gt, durations, scenario)
    ref = intersection_based.psds(
        scores=scores,
        ground_truth=_gt_dict(gt),
        audio_durations=_stem_durations(durations),
        dtc_threshold=scenario.dtc,
        gtc_threshold=scenario.gtc,
        cttc_threshold=scenario.cttc,
        alpha_ct=scenario.alpha_ct,
        alpha_st=scenario.alpha_st,
        max_efpr=scenario.max_efpr,
    )
    assert 0.05 < value < 0.999
    assert value == pytest.approx(ref[0], abs=1e-12)
    assert roc.value == value and roc.scenario == scenario
    np.testing.assert_allclose(roc.etpr, ref[2][0])
    np.testing.assert_allclose(roc.efpr, ref[2][1])
    assert set(roc.per_class_psds) == set(CLASSES)


def test_scenario_parameters():
    assert (PSDS1.dtc, PSDS1.gtc, PSDS1.cttc, PSDS1.alpha_ct, PSDS1.alpha_st, PSDS1.max_efpr) == (
        0.7,
        0.7,
        None,
        0.0,
        1.0,
        100.0,
    )
    assert (PSDS2.dtc, PSDS2.gtc, PSDS2.cttc, PSDS2.alpha_ct, PSDS2.alpha_st, PSDS2.max_efpr) == (
        0.1,
        0.1,
        0.3,
        0.5,
        1.0,
        100.0,
    )


def test_psds_keeps_clips_without_events(data):
    """Scores on event-free clips add false positives: PSDS must see them (DESED drops them)."""
    gt, durations, targets, _ = data
    scores = _scores(targets, noise=0.0)  # perfect
    loud = dict(scores)
    loud["clip00"] = create_score_dataframe(np.full((N_FRAMES, len(CLASSES)), 1.0), TS, CLASSES)
    perfect, _ = metrics.psds(scores, gt, durations, PSDS1)
    with_fp, _ = metrics.psds(loud, gt, durations, PSDS1)
    assert perfect > 0.99
    assert with_fp < perfect


def test_psds_alignment_rules(data, caplog):
    gt, durations, targets, scores = data
    partial = {k: v for k, v in scores.items() if k != "clip05"}
    with pytest.raises(ValueError, match="have no scores"):
        metrics.psds(partial, gt, durations, PSDS1, strict=True)
    with caplog.at_level(logging.WARNING, logger="sed.evaluation.metrics"):
        value, _ = metrics.psds(partial, gt, durations, PSDS1)
    assert "have no scores" in caplog.text and math.isfinite(value)
    with pytest.raises(ValueError, match="no duration"):
        metrics.psds(scores, gt, {k: v for k, v in durations.items() if k != "clip03.wav"}, PSDS1)
    renamed = {f"x{k}": v for k, v in scores.items()}
    with pytest.raises(ValueError, match="do not match"):
        metrics.psds(renamed, gt, durations, PSDS1)


def test_psds_merges_overlapping_ground_truth_and_handles_classes_without_events(data, caplog):
    gt, durations, _, scores = data
    row = gt[gt["event_label"] != ""].iloc[0]
    overlapping = pd.concat(
        [gt, pd.DataFrame([(row.filename, row.onset + 0.05, row.offset + 0.2, row.event_label)], columns=gt.columns)],
        ignore_index=True,
    )
    with pytest.raises(AssertionError):  # what sed_scores_eval does with it
        intersection_based.psds(
            scores=scores,
            ground_truth=_gt_dict(overlapping),
            audio_durations=_stem_durations(durations),
            dtc_threshold=0.7,
            gtc_threshold=0.7,
            alpha_st=1.0,
        )
    with caplog.at_level(logging.WARNING, logger="sed.evaluation.metrics"):
        value, _ = metrics.psds(scores, overlapping, durations, PSDS1)
    assert "merged 1" in caplog.text and math.isfinite(value)
    no_dog = gt[gt["event_label"] != "dog"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sed.evaluation.metrics"):
        value, roc = metrics.psds(scores, no_dog, durations, PSDS1)
    assert "dog" in caplog.text and math.isfinite(value) and "dog" not in roc.per_class_psds
    empty = gt.iloc[:2]
    assert math.isnan(metrics.psds(scores, empty, durations, PSDS1)[0])


def test_psds_bootstrap_interval(data):
    gt, durations, _, scores = data
    boot = metrics.psds_bootstrap(scores, gt, durations, PSDS1, n_bootstrap=20, seed=3)
    again = metrics.psds_bootstrap(scores, gt, durations, PSDS1, n_bootstrap=20, seed=3)
    assert boot == again
    assert boot["psds"] == pytest.approx(metrics.psds(scores, gt, durations, PSDS1)[0])
    assert 0.0 <= boot["low"] <= boot["mean"] <= boot["high"] <= 1.0
    assert boot["low"] < boot["high"] and boot["std"] > 0


# ----------------------------------------------------------------------------- F1 metrics
def _sed_eval_reference(kind, detections, gt, filenames, **kw):
    """sed_eval driven directly, file by file, the way DCASE scripts do it."""
    if kind == "event":
        m = sed_eval.sound_event.EventBasedMetrics(
            event_label_list=CLASSES,
            t_collar=0.2,
            percentage_of_length=0.2,
            evaluate_onset=True,
            evaluate_offset=True,
            empty_system_output_handling="zero_score",
        )
    else:
        m = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=CLASSES, time_resolution=1.0)
        m.empty_system_output_handling = "zero_score"
    for name in filenames:
        ref = [r for r in gt[gt["filename"] == name].to_dict("records") if r["event_label"]]
        est = detections[detections["filename"] == name].to_dict("records")
        if kind == "event":
            m.evaluate(reference_event_list=ref, estimated_event_list=est)
        else:
            m.evaluate(reference_event_list=ref, estimated_event_list=est, evaluated_length_seconds=kw["duration"])
    return m


@pytest.mark.parametrize("kind", ["event", "segment"])
def test_f1_equals_sed_eval_called_directly(data, kind):
    gt, durations, _, scores = data
    det = detections_from_scores(scores, 0.5)
    det = det[det["filename"] != "clip03.wav"]  # one clip with events but no output at all
    files = sorted(gt["filename"].unique())
    if kind == "event":
        mine = metrics.event_f1(det, gt, CLASSES)
    else:
        mine = metrics.segment_f1(det, gt, CLASSES, durations=durations)
    ref = _sed_eval_reference(kind, det, gt, files, duration=N_FRAMES * FRAME)
    overall = ref.results_overall_metrics()
    assert 0.05 < mine["f1_macro"] < 1
    assert mine["f1_macro"] == pytest.approx(ref.results_class_wise_average_metrics()["f_measure"]["f_measure"])
    assert mine["f1_micro"] == pytest.approx(overall["f_measure"]["f_measure"])
    assert mine["error_rate"] == pytest.approx(overall["error_rate"]["error_rate"])
    for c in CLASSES:
        assert mine["per_class"][c] == pytest.approx(ref.results_class_wise_metrics()[c]["f_measure"]["f_measure"])


def test_intersection_f1_equals_sed_scores_eval_fscore(data):
    gt, _, _, scores = data
    mine = metrics.intersection_f1(scores, gt, [0.3, 0.5])
    for t in (0.3, 0.5):
        f, p, r, _ = intersection_based.fscore(scores, _gt_dict(gt), t, dtc_threshold=0.5, gtc_threshold=0.5)
        assert mine[t]["f1_macro"] == pytest.approx(f["macro_average"])
        assert mine[t]["f1_micro"] == pytest.approx(f["micro_average"])
        assert mine[t]["per_class"] == pytest.approx({c: f[c] for c in CLASSES})


def test_intersection_f1_equals_sed_scores_eval_on_off_grid_events_and_class_thresholds():
    """Exact counts against sed_scores_eval's fscore: events off the frame grid, several per class and clip,
    clips without events, a class without any event (left out), dtc/gtc met exactly, thresholds equal to scores,
    class-wise thresholds."""
    rng = np.random.default_rng(7)
    classes = ["alarm", "dog", "speech", "never"]
    frame, n_frames = 0.064, 80
    ts = np.round(np.arange(n_frames + 1) * frame, 6)
    gt_rows, scores = [], {}
    for n in range(40):
        name = f"c{n:02d}"
        activity = np.zeros((n_frames, len(classes)))
        for c in range(3):
            for _ in range(int(rng.integers(0, 4)) if n % 9 else 0):
                on = round(float(rng.uniform(0, 4.5)), 3)
                off = round(min(on + float(rng.uniform(0.05, 1.5)), n_frames * frame), 3)
                gt_rows.append((f"{name}.wav", on, off, classes[c]))
                activity[int(on / frame) : int(np.ceil(off / frame)), c] = 1
        values = np.clip(0.7 * activity + rng.normal(0.15, 0.25, activity.shape), 0, 1).round(2)  # ties
        scores[name] = create_score_dataframe(values, ts, classes)
    # a detection of exactly half a ground-truth event: dtc and gtc met with equality
    gt_rows.append(("c00.wav", 0.128, 0.384, "alarm"))
    exact = np.zeros((n_frames, len(classes)))
    exact[2:4, 0] = 0.9
    scores["c00"] = create_score_dataframe(exact, ts, classes)
    gt = pd.DataFrame(gt_rows, columns=["filename", "onset", "offset", "event_label"])
    present = classes[:3]
    tuned = {"alarm": 0.3, "dog": 0.55, "speech": 0.41, "never": 0.5}
    mine = metrics.intersection_f1(scores, gt, [0.3, 0.5, 0.41], classwise=tuned)
    for key, t in ((0.3, 0.3), (0.5, 0.5), (0.41, 0.41), ("tuned", {c: tuned[c] for c in present})):
        ref_scores = {k: v[["onset", "offset", *present]] for k, v in scores.items()}
        ref_gt = metrics.ground_truth_dict(gt, clips=list(scores))
        f, p, r, _ = intersection_based.fscore(ref_scores, ref_gt, t, dtc_threshold=0.5, gtc_threshold=0.5)
        assert mine[key]["f1_macro"] == pytest.approx(f["macro_average"], abs=1e-12), key
        assert mine[key]["f1_micro"] == pytest.approx(f["micro_average"], abs=1e-12), key
        assert mine[key]["precision_micro"] == pytest.approx(p["micro_average"], abs=1e-12), key
        assert mine[key]["recall_micro"] == pytest.approx(r["micro_average"], abs=1e-12), key
        assert mine[key]["per_class"] == pytest.approx({c: f[c] for c in present}, abs=1e-12), key
    assert 0.1 < mine[0.5]["f1_macro"] < 0.95


def test_event_f1_counts_clips_without_detections_and_matches_by_audio_id(data):
    gt, _, targets, _ = data
    perfect = detections_from_scores(_scores(targets, noise=0.0), 0.5, default_extension=".flac")
    assert metrics.event_f1(perfect, gt, CLASSES)["f1_macro"] == pytest.approx(1.0)  # .flac vs .wav: same clips
    missing_one = perfect[perfect["filename"] != "clip04.flac"]
    assert metrics.event_f1(missing_one, gt, CLASSES)["f1_micro"] < 1.0
    # A clip absent from the ground truth counts when listed explicitly (its detections are false positives).
    extra = pd.concat([perfect, pd.DataFrame([("new.wav", 0.0, 1.0, "dog")], columns=perfect.columns)])
    assert metrics.event_f1(extra, gt, CLASSES)["f1_micro"] == pytest.approx(1.0)
    listed = list(gt["filename"].unique()) + ["new.wav"]
    assert metrics.event_f1(extra, gt, CLASSES, filenames=listed)["f1_micro"] < 1.0


# ----------------------------------------------------------------------------- evaluate
def test_perfect_and_empty_predictions(data):
    gt, durations, targets, _ = data
    perfect = _scores(targets, noise=0.0)
    m = evaluate(perfect, perfect, gt, durations, CLASSES, [0.5])
    assert m["psds1"] > 0.99 and m["psds2"] > 0.99
    for key in ("event_f1_macro@0.5", "event_f1_micro@0.5", "segment_f1_macro@0.5", "intersection_f1_macro@0.5"):
        assert m[key] == pytest.approx(1.0), key
    silent = {k: create_score_dataframe(np.zeros((N_FRAMES, len(CLASSES))), TS, CLASSES) for k in targets}
    m = evaluate(silent, silent, gt, durations, CLASSES, [0.5])
    assert m["psds1"] == 0.0 and m["psds2"] == 0.0
    for key in (
        "event_f1_macro@0.5",
        "event_f1_micro@0.5",
        "segment_f1_macro@0.5",
        "segment_f1_micro@0.5",
        "intersection_f1_macro@0.5",
    ):
        assert m[key] == 0.0, key


def test_evaluate_keys_and_consistency(data):
    gt, durations, targets, scores = data
    raw = _scores(targets, noise=0.7, seed=9)
    res = evaluate_full(raw, scores, gt, durations, CLASSES, [0.4, 0.5], {"psds_on": "both", "bootstrap": 5})
    m = res.metrics
    expected = {
        "psds1",
        "psds2",
        "psds1_raw",
        "psds2_raw",
        "psds1_ci_low",
        "psds1_ci_high",
        "psds1_boot_mean",
        "psds1_boot_std",
        "psds2_raw_ci_high",
    }
    for t in ("0.4", "0.5"):
        expected |= {f"intersection_f1_macro@{t}", f"intersection_f1_micro@{t}"}
        for kind in ("event", "segment"):
            expected |= {
                f"{kind}_f1_macro@{t}",
                f"{kind}_f1_micro@{t}",
                f"{kind}_precision_micro@{t}",
                f"{kind}_recall_micro@{t}",
                f"{kind}_error_rate@{t}",
            }
            expected |= {f"{kind}_f1@{t}/{c}" for c in CLASSES}
        expected |= {f"intersection_f1@{t}/{c}" for c in CLASSES}
    expected |= {f"psds1/{c}" for c in CLASSES}
    assert expected <= set(m), sorted(expected - set(m))
    assert all(isinstance(v, float) for v in m.values())
    assert m["psds1"] == pytest.approx(metrics.psds(scores, gt, durations, PSDS1)[0])
    assert m["psds2_raw"] == pytest.approx(metrics.psds(raw, gt, durations, PSDS2)[0])
    assert m["event_f1_macro@0.5"] == pytest.approx(
        metrics.event_f1(detections_from_scores(scores, 0.5), gt, CLASSES)["f1_macro"]
    )
    assert set(res.detections) == {0.4, 0.5} and set(res.rocs) == {"psds1", "psds2", "psds1_raw", "psds2_raw"}
    assert set(res.detections[0.5]["filename"]) <= set(gt["filename"])  # filenames as in the ground truth

    lean = evaluate(
        None,
        scores,
        gt,
        durations,
        CLASSES,
        [0.5],
        {"psds": ["psds1"], "per_class": False, "segment_f1": False, "event_f1": False},
    )
    assert set(lean) == {"psds1", "intersection_f1_macro@0.5", "intersection_f1_micro@0.5"}
    assert lean["psds1"] == m["psds1"]


def test_eval_config_validation():
    assert EvalConfig.from_any(None) == EvalConfig(psds=("psds1", "psds2"))
    assert EvalConfig.from_any({"psds": False}).psds == ()
    with pytest.raises(ValueError, match="unknown evaluation option"):
        EvalConfig.from_any({"psds_scenarios": 1})
    with pytest.raises(ValueError, match="unknown PSDS scenario"):
        EvalConfig.from_any({"psds": ["psds3"]})
    with pytest.raises(ValueError, match="psds_on"):
        EvalConfig.from_any({"psds_on": "smoothed"})


def test_ground_truth_dict():
    df = pd.DataFrame(
        [
            ("a.wav", 0.0, 1.0, "dog"),
            ("a.wav", 1.0, 2.0, "dog"),
            ("a.wav", 0.5, 0.7, "cat"),
            ("b.wav", np.nan, np.nan, ""),
        ],
        columns=["filename", "onset", "offset", "event_label"],
    )
    gt = metrics.ground_truth_dict(df, clips=["c.wav"])
    assert gt == {"a": [(0.0, 2.0, "dog"), (0.5, 0.7, "cat")], "b": [], "c": []}


def test_desed_style_names_with_dots(data):
    """``Y..._30.000_40.000.wav``: ids keep their dots, so scores, ground truth and durations still match."""
    gt, durations, _, scores = data
    rename = {k: f"Y{k}_30.000_40.000" for k in scores}
    gt2 = gt.assign(filename=[rename[f[:-4]] + ".wav" for f in gt["filename"]])
    dur2 = {rename[k[:-4]] + ".wav": v for k, v in durations.items()}
    scores2 = {rename[k]: v for k, v in scores.items()}
    cfg = {"psds": ["psds1"], "segment_f1": False, "per_class": False}
    assert evaluate(None, scores2, gt2, dur2, CLASSES, [0.5], cfg) == evaluate(
        None, scores, gt, durations, CLASSES, [0.5], cfg
    )


def test_psds2_with_a_single_event_class():
    """With events of one class only, PSDS2 has no other class to cross-trigger: it equals PSDS2 without the
    cross-trigger term instead of failing inside sed_scores_eval (a validation set with one event class did)."""
    rng = np.random.default_rng(1)
    ts = np.arange(21) * 0.1
    values = {k: 0.3 * rng.random((20, 2)) for k in ("x", "y")}
    values["x"][1:5, 0] = 0.9  # class a detected where its event is
    scores = {k: create_score_dataframe(v, ts, ["a", "b"]) for k, v in values.items()}
    gt = {"x": [(0.1, 0.5, "a")], "y": []}
    durations = {"x": 2.0, "y": 2.0}
    value, _ = metrics.psds(scores, gt, durations, PSDS2)
    no_ct = metrics.PSDSScenario(dtc=PSDS2.dtc, gtc=PSDS2.gtc, alpha_st=PSDS2.alpha_st, max_efpr=PSDS2.max_efpr)
    assert value == pytest.approx(metrics.psds(scores, gt, durations, no_ct)[0]) and value > 0
