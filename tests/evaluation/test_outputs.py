from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_detections
from sed_scores_eval.base_modules.io import read_sed_scores

from sed.data.tsv import read_strong
from sed.evaluation.metrics import PSDS1, evaluate_full, psds
from sed.evaluation.outputs import read_scores_dir, write_scores_dir, write_test_outputs
from sed.evaluation.postprocess import batch_to_scores, median_filter

CLASSES = ["alarm", "dog", "speech"]


@pytest.fixture(scope="module")
def run():
    """Scores of 6 clips (0.064 s frames, float32 like a model's output) and their evaluation."""
    gt, durations, probs, names, ts = synthetic_detections(CLASSES, n_clips=6, n_frames=40, frame=0.064, max_onset=20)
    raw = batch_to_scores(probs, names, ts, CLASSES)
    post = batch_to_scores(median_filter(probs, [3, 5, 1]), names, ts, CLASSES)
    result = evaluate_full(raw, post, gt, durations, CLASSES, [0.3, 0.5])
    return gt, durations, raw, post, result


def test_write_test_outputs_layout_and_readability(tmp_path, run):
    gt, durations, raw, post, result = run
    out = write_test_outputs(tmp_path, "student", raw, post, result.detections, result.metrics, result.rocs)
    assert out == tmp_path / "student"
    for sub, scores in (("scores_raw", raw), ("scores_postprocessed", post)):
        back = read_sed_scores(out / sub)  # sed_scores_eval's own reader accepts the folder
        assert sorted(back) == sorted(scores)
        for key, df in scores.items():
            assert list(back[key].columns) == ["onset", "offset", *CLASSES]
            np.testing.assert_allclose(back[key].to_numpy(), df.to_numpy(), rtol=1e-7, atol=1e-9)
    # Scores read back give the same PSDS as in memory.
    assert psds(read_sed_scores(out / "scores_postprocessed"), gt, durations, PSDS1)[0] == pytest.approx(
        result.metrics["psds1"]
    )
    for t in (0.3, 0.5):
        events = read_strong(out / f"events_th{t:g}.tsv", classes=CLASSES, merge_overlaps=False)
        det = result.detections[t]
        assert len(events) == len(det) > 0
        assert set(events["filename"]) <= set(gt["filename"])  # with the extension, as in the ground truth
        np.testing.assert_allclose(events["onset"], det["onset"], atol=1e-9)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved.keys() == result.metrics.keys()
    for key, value in result.metrics.items():
        assert (saved[key] is None) if np.isnan(value) else saved[key] == pytest.approx(value)
    assert (out / "psd_roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    roc = pd.read_csv(out / "psd_roc_psds1.tsv", sep="\t")
    assert list(roc.columns) == ["efpr", "etpr"] and len(roc) == len(result.rocs["psds1"].efpr)


def test_rewrite_replaces_score_folder_and_skips_missing_parts(tmp_path, run):
    _, _, raw, post, result = run
    write_test_outputs(tmp_path, "teacher", raw, post, result.detections, result.metrics, result.rocs)
    fewer = {k: v for k, v in list(post.items())[:2]}
    out = write_test_outputs(tmp_path, "teacher", None, fewer, {}, {"psds1": float("nan")}, None)
    assert sorted(p.stem for p in (out / "scores_postprocessed").iterdir()) == sorted(fewer)
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary leftovers
    assert json.loads((out / "metrics.json").read_text()) == {"psds1": None}


def test_read_scores_dir_errors_name_the_file(tmp_path, run):
    _, _, raw, _, _ = run
    folder = write_scores_dir(raw, tmp_path / "scores")
    assert sorted(read_scores_dir(folder)) == sorted(raw)
    bad = folder / "c1.tsv"
    bad.write_text("start\tend\talarm\n0\t1\t0.5\n")
    with pytest.raises(ValueError, match="c1.tsv"):
        read_scores_dir(folder)
    bad.write_text("onset\toffset\tdog\tspeech\talarm\n0\t1\t0.5\t0.1\t0.2\n")
    with pytest.raises(ValueError, match="c1.tsv.*do not match"):
        read_scores_dir(folder)
    bad.write_text("onset\toffset\talarm\tdog\tspeech\n0\t1\tx\t0.1\t0.2\n")
    with pytest.raises(ValueError, match="c1.tsv.*non-numeric"):
        read_scores_dir(folder)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_scores_dir(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no .tsv"):
        read_scores_dir((tmp_path / "empty").mkdir() or tmp_path / "empty")


def test_score_folder_is_replaced_only_when_ours(tmp_path, run):
    """A folder written by write_scores_dir is replaced whole (no stale clips); a user's folder is refused."""
    _, _, raw, _, _ = run
    folder = write_scores_dir(raw, tmp_path / "scores")
    fewer = {k: raw[k] for k in sorted(raw)[:2]}
    write_scores_dir(fewer, folder)
    assert sorted(read_sed_scores(folder)) == sorted(fewer)  # the earlier run's other clips are gone

    (folder / "notes.txt").write_text("mine")  # the user put something of theirs in it
    with pytest.raises(ValueError, match="notes.txt"):
        write_scores_dir(raw, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{k}.tsv" for k in fewer] + ["notes.txt"])

    user = tmp_path / "user"
    user.mkdir()
    (user / "c9.tsv").write_text("onset\toffset\talarm\n0\t1\t0.5\n")
    with pytest.raises(ValueError, match=r"user.*not written by sed"):
        write_scores_dir(raw, user)
    assert sorted(p.name for p in user.iterdir()) == ["c9.tsv"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert sorted(read_sed_scores(write_scores_dir(raw, empty))) == sorted(raw)
