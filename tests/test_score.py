from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_detections

from sed.data.tsv import write_durations, write_strong
from sed.evaluation.metrics import evaluate, event_f1, segment_f1
from sed.evaluation.outputs import write_scores_dir
from sed.evaluation.postprocess import batch_to_scores, detections_from_scores
from sed.score import main

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["alarm", "dog", "speech"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Ground truth, durations, a score folder and an event TSV for 6 short clips."""
    root = tmp_path_factory.mktemp("score")
    gt, durations, probs, names, ts = synthetic_detections(CLASSES, n_clips=6, n_frames=30, frame=0.1, max_onset=15)
    scores = batch_to_scores(probs, names, ts, CLASSES)
    write_strong(gt, root / "gt.tsv")
    write_durations(durations, root / "durations.tsv")
    write_scores_dir(scores, root / "scores")
    events = detections_from_scores(scores, 0.5)
    write_strong(events, root / "events.tsv")
    return {"root": root, "gt": gt, "durations": durations, "scores": scores, "events": events}


def test_score_folder_end_to_end(files, capsys):
    root = files["root"]
    out = root / "scores.json"
    rc = main(
        [
            str(root / "scores"),
            "-g",
            str(root / "gt.tsv"),
            "-d",
            str(root / "durations.tsv"),
            "-t",
            "0.5",
            "--json",
            str(out),
            "--per-class",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "psds1" in text and "event_f1_macro@0.5" in text and "speech" in text
    saved = json.loads(out.read_text())
    expected = evaluate(None, files["scores"], files["gt"], files["durations"], CLASSES, [0.5])
    assert saved.keys() == expected.keys()
    for key, value in expected.items():
        assert (saved[key] is None) if np.isnan(value) else saved[key] == pytest.approx(value, abs=1e-9), key
    assert 0 < saved["psds1"] < 1 and 0 < saved["event_f1_macro@0.5"] < 1


def test_score_event_tsv_end_to_end(files, capsys):
    root = files["root"]
    out = root / "events.json"
    rc = main(
        [str(root / "events.tsv"), "-g", str(root / "gt.tsv"), "-d", str(root / "durations.tsv"), "--json", str(out)]
    )
    assert rc == 0
    saved = json.loads(out.read_text())
    ev = event_f1(files["events"], files["gt"], CLASSES)
    seg = segment_f1(files["events"], files["gt"], CLASSES, durations=files["durations"])
    assert saved["event_f1_macro"] == pytest.approx(ev["f1_macro"])
    assert saved["segment_f1_micro"] == pytest.approx(seg["f1_micro"])
    assert saved["event_f1/dog"] == pytest.approx(ev["per_class"]["dog"])
    assert "psds1" not in saved
    assert "event_f1_macro" in capsys.readouterr().out


def test_perfect_events_score_one(files, tmp_path, capsys):
    gt = files["gt"]
    write_strong(gt[gt["event_label"] != ""], tmp_path / "perfect.tsv")
    out = tmp_path / "p.json"
    assert main([str(tmp_path / "perfect.tsv"), "-g", str(files["root"] / "gt.tsv"), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["event_f1_macro"] == pytest.approx(1.0) and saved["segment_f1_macro"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_folder", "nowhere"),
        ("bad_score_file", "c2.tsv"),
        ("missing_score_file", "no score file for 1 clip"),
        ("bad_ground_truth", "bad_gt.tsv:3"),
        ("no_durations", "needs --durations"),
        ("threshold_on_events", "--threshold applies to score folders"),
    ],
)
def test_bad_inputs_give_clear_errors(files, tmp_path, capsys, case, expected):
    root = files["root"]
    gt, dur, pred = root / "gt.tsv", ["-d", str(root / "durations.tsv")], root / "scores"
    extra: list[str] = []
    if case == "missing_folder":
        pred = tmp_path / "nowhere"
    elif case in ("bad_score_file", "missing_score_file"):
        pred = tmp_path / "scores"
        write_scores_dir(files["scores"], pred)
        if case == "bad_score_file":
            (pred / "c2.tsv").write_text("onset\toffset\talarm\n0\t1\n")
        else:
            (pred / "c3.tsv").unlink()
    elif case == "bad_ground_truth":
        gt = tmp_path / "bad_gt.tsv"
        gt.write_text("filename\tonset\toffset\tevent_label\nc1.wav\t0.0\t1.0\tdog\nc2.wav\t2.0\t1.0\tdog\n")
    elif case == "no_durations":
        dur = []
    elif case == "threshold_on_events":
        pred, extra = root / "events.tsv", ["-t", "0.5"]
    rc = main([str(pred), "-g", str(gt), *dur, *extra])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err


def test_module_entry_point(files):
    root = files["root"]
    proc = subprocess.run(
        [sys.executable, "-m", "sed.score", str(root / "events.tsv"), "-g", str(root / "gt.tsv")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "event_f1_macro" in proc.stdout and "segment_f1_macro" in proc.stdout


def _score(args: list[str], capsys) -> tuple[int, str]:
    rc = main(args)
    return rc, capsys.readouterr().err


def test_predictions_outside_ground_truth_are_a_visible_warning(files, tmp_path, capsys):
    """Clips in the predictions but not in the ground truth are left out with a warning that names the count,
    for score folders and event TSVs alike, without -v."""
    root = files["root"]
    extra = dict(files["scores"])
    extra["stray"] = files["scores"]["c1"]
    write_scores_dir(extra, tmp_path / "scores")
    durations = {**files["durations"], "stray.wav": 3.0}
    write_durations(durations, tmp_path / "durations.tsv")
    out = tmp_path / "m.json"
    rc, err = _score(
        [
            str(tmp_path / "scores"),
            "-g",
            str(root / "gt.tsv"),
            "-d",
            str(tmp_path / "durations.tsv"),
            "--json",
            str(out),
        ],
        capsys,
    )
    assert rc == 0
    assert "warning: 1 of 7 predicted clip(s) are not in" in err and "stray" in err, err
    expected = evaluate(None, files["scores"], files["gt"], files["durations"], CLASSES, [0.5])
    assert json.loads(out.read_text())["psds1"] == pytest.approx(expected["psds1"], abs=1e-9)

    events = pd.concat([files["events"], files["events"].head(2).assign(filename="stray.wav")])
    write_strong(events, tmp_path / "events.tsv")
    rc, err = _score([str(tmp_path / "events.tsv"), "-g", str(root / "gt.tsv")], capsys)
    assert rc == 0 and "warning: 1 of" in err and "stray" in err, err


def test_duration_clips_outside_ground_truth_are_a_visible_warning(files, tmp_path, capsys):
    root = files["root"]
    write_durations({**files["durations"], "lost1.wav": 3.0, "lost2.wav": 3.0}, tmp_path / "durations.tsv")
    rc, err = _score(
        [str(root / "events.tsv"), "-g", str(root / "gt.tsv"), "-d", str(tmp_path / "durations.tsv")], capsys
    )
    assert rc == 0
    assert "warning: 2 clip(s) of" in err and "lost1" in err and "not evaluated" in err, err


def test_header_only_event_file_scores_zero(files, tmp_path, capsys):
    """An event TSV without events (what sed.infer writes when nothing is detected) is a valid prediction."""
    (tmp_path / "none.tsv").write_text("filename\tonset\toffset\tevent_label\n")
    out = tmp_path / "m.json"
    rc, err = _score([str(tmp_path / "none.tsv"), "-g", str(files["root"] / "gt.tsv"), "--json", str(out)], capsys)
    assert rc == 0, err
    saved = json.loads(out.read_text())
    assert saved["event_f1_macro"] == 0 and saved["segment_f1_micro"] == 0 and saved["event_recall_micro"] == 0
