"""``python -m sed.submit``: packages built from training runs, read back and checked as DCASE checks them.

The three runs of a system are the suite's shared tiny runs (conftest: ``tested_run`` and the two jobs of
``lr_sweep``), so no training runs for this file alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from sed.dcase.submit import MARKER, SubmissionError, build_package
from sed.submit import main

LABEL = "Doe_UNI_task4_1"
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
INFO = {
    "submission": {
        "name": "Tiny CRNN mean teacher",
        "abbreviation": "TinyCRNN",
        "authors": [
            {
                "lastname": "Doe",
                "firstname": "Jane",
                "email": "jane.doe@uni.edu",
                "corresponding": True,
                "affiliation": {"abbreviation": "UNI", "institute": "University", "location": "Paris, France"},
            }
        ],
    },
    "system": {"source_code": None},
    "results": {"devtest": {"maestro": {"mPAUC": 0.5}}},
}


@pytest.fixture(scope="module")
def runs(tested_run, lr_sweep) -> list[Path]:
    """Three independent tested 1-epoch trainings of the tiny configuration."""
    exp, _ = lr_sweep
    (sweep,) = [p for p in (exp / "tiny").iterdir() if p.name.startswith("multirun_")]
    return [tested_run[0], sweep / "0", sweep / "1"]


@pytest.fixture(scope="module")
def eval_audio(runs) -> Path:
    cfg = yaml.safe_load((runs[0] / ".hydra" / "config.yaml").read_text())
    return Path(cfg["data"]["root"]) / "audio" / "test"


def _run(*args: str) -> tuple[int, str]:
    """``python -m sed.submit ARGS`` (in this process), its exit status and stderr + stdout."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, err.getvalue() + out.getvalue()


def _files(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / name
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(yaml.safe_dump(data))
    return path


def _metrics(run: Path) -> dict:
    return json.loads((run / "test" / "teacher" / "metrics.json").read_text())


def test_three_runs_make_a_package_that_passes_the_check(runs, eval_audio, tmp_path):
    out = tmp_path / "submission"
    code, text = _run(
        *map(str, runs),
        "--label",
        LABEL,
        "--eval-audio",
        str(eval_audio),
        "-o",
        str(out),
        "--report",
        str(_files(tmp_path, "report.pdf", PDF)),
        "--info",
        str(_files(tmp_path, "info.yaml", INFO)),
    )
    assert code == 0, text
    package = out / "Doe_UNI_task4.zip"
    assert f"{package}: ready to submit (0 error(s), 0 warning(s))" in text
    code, text = _run("--check", str(package))
    assert code == 0 and "ready to submit" in text

    clips = sorted(p.stem for p in eval_audio.glob("*.wav"))
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        meta = yaml.safe_load(z.read(f"task4/{LABEL}/{LABEL}.meta.yaml"))
        run1 = pd.read_csv(io.BytesIO(z.read(f"task4/{LABEL}/{LABEL}_run1.output/{clips[0]}.tsv")), sep="\t")
        raw1 = pd.read_csv(
            io.BytesIO(z.read(f"task4/{LABEL}/{LABEL}_run1_unprocessed.output/{clips[0]}.tsv")), sep="\t"
        )
    expected = {"task4/Doe_UNI_task4.technical_report.pdf", f"task4/{LABEL}/{LABEL}.meta.yaml"}
    for i in (1, 2, 3):
        for folder in (f"{LABEL}_run{i}.output", f"{LABEL}_run{i}_unprocessed.output"):
            expected |= {f"task4/{LABEL}/{folder}/{clip}.tsv" for clip in clips}
        expected |= {
            f"task4/{LABEL}/{LABEL}_run{i}.codecarbon/emissions.csv",
            f"task4/{LABEL}/{LABEL}_run{i}.codecarbon/emissions_evaluation.csv",
        }
    assert names == expected
    # post-processed = the unprocessed scores median-filtered, on the same frames
    assert list(run1.columns) == list(raw1.columns) and np.allclose(
        run1[["onset", "offset"]], raw1[["onset", "offset"]]
    )
    assert not np.allclose(run1.iloc[:, 2:], raw1.iloc[:, 2:])

    metrics = [_metrics(r) for r in runs]
    energy = [json.loads((r / "energy.json").read_text()) for r in runs]
    complexity = meta["system"]["complexity"]
    assert complexity["total_parameters"] == metrics[0]["complexity"]["parameters"]
    assert complexity["macs"] == metrics[0]["complexity"]["per_10s"]["macs_thop"] > 0
    consumption = complexity["energy_consumption"]
    assert consumption["training"] == pytest.approx(np.mean([e["fit"]["energy_kwh"] for e in energy]), rel=1e-5)
    assert consumption["devtest_inference"] == pytest.approx(
        np.mean([e["test"]["energy_kwh"] for e in energy]), rel=1e-5
    )
    assert consumption["evaluation_inference"] > 0
    assert meta["results"]["devtest"]["desed"]["PSDS1"] == pytest.approx(
        np.mean([m["psds1"] for m in metrics]), abs=1e-6
    )
    assert meta["submission"]["name"] == INFO["submission"]["name"] and meta["system"]["source_code"] is None


def test_dev_test_package_is_not_submittable_and_says_what_is_left(runs, tmp_path, caplog):
    """Without --report and --info: a package all the same, and the check lists what the user still has to do."""
    out = tmp_path / "sub"
    built = build_package([(LABEL, runs[:1])], out, dev_test=True, year=2023)
    errors = [f"{f.where}: {f.message}" for f in built.findings if f.level == "error"]
    meta_file = f"task4/{LABEL}/{LABEL}.meta.yaml"
    assert (
        f"{meta_file}: not_submittable: outputs of the development test set (--dev-test), not of the evaluation "
        "set: not for submission" in errors
    )
    assert f"{meta_file}: submission.name: still TODO, fill it in" in errors
    assert f"{meta_file}: system.source_code: still TODO, fill it in" in errors
    assert "task4/: no technical report (a .pdf beside the system folders)" in errors
    assert any(e.startswith(f"task4/{LABEL}: no {LABEL}_run2.output/") for e in errors)
    assert "NOT SUBMITTABLE" in caplog.text
    # the runs' own dev-test scores, as the run wrote them
    from sed_scores_eval.base_modules.io import read_sed_scores

    for folder, source in (
        (f"{LABEL}_run1.output", "scores_postprocessed"),
        (f"{LABEL}_run1_unprocessed.output", "scores_raw"),
    ):
        packaged = read_sed_scores(str(out / "task4" / LABEL / folder))
        reference = read_sed_scores(str(runs[0] / "test" / "teacher" / source))
        assert packaged.keys() == reference.keys() and len(packaged) == 8
        for key in packaged:
            pd.testing.assert_frame_equal(packaged[key], reference[key])


@pytest.mark.parametrize(
    "label, message", [("Doe", "four parts"), ("Doe_UNI_task4_5", "1 to 4"), ("Doe_UNI_task1_1", "third part")]
)
def test_labels_are_validated(runs, tmp_path, label, message):
    code, text = _run(str(runs[0]), "--label", label, "--dev-test", "-o", str(tmp_path / "out"))
    assert code == 2 and message in text and not (tmp_path / "out").exists()


def test_evaluation_set_by_default(runs, tmp_path):
    code, text = _run(str(runs[0]), "--label", LABEL, "-o", str(tmp_path / "out"))
    assert code == 2 and "give --eval-audio DIR" in text and "--dev-test" in text


def test_systems_of_one_participant_up_to_four(runs, tmp_path):
    five = [(f"Doe_UNI_task4_{i}", runs[:1]) for i in range(1, 5)] + [("Doe_UNI_task4a_1", runs[:1])]
    with pytest.raises(SubmissionError, match="at most 4"):
        build_package(five, tmp_path / "out", dev_test=True)
    with pytest.raises(SubmissionError, match="several participants"):
        build_package([(LABEL, runs[:1]), ("Roe_LAB_task4_2", runs[:1])], tmp_path / "out", dev_test=True)


def test_a_bad_evaluation_file_fails_naming_it_and_leaves_the_package(runs, tmp_path):
    audio = tmp_path / "eval"
    audio.mkdir()
    sf.write(audio / "long.wav", np.zeros(16000 * 3, np.float32), 16000)  # any length
    out = tmp_path / "sub"
    build_package([(LABEL, runs[:1])], out, eval_audio=audio)
    before = sorted(p.name for p in (out / "task4" / LABEL / f"{LABEL}_run1.output").iterdir())
    assert before == ["long.tsv"]
    (audio / "broken.wav").write_bytes(b"not audio")
    with pytest.raises(SubmissionError, match="broken.wav"):
        build_package([(LABEL, runs[:1])], out, eval_audio=audio)
    assert sorted(p.name for p in (out / "task4" / LABEL / f"{LABEL}_run1.output").iterdir()) == before


def test_refuses_an_output_folder_that_is_not_ours(runs, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code, text = _run(str(runs[0]), "--label", LABEL, "--dev-test", "-o", str(foreign))
    assert code == 2 and "not written by sed.submit" in text
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    out = tmp_path / "sub"  # its own earlier output is replaced as a whole
    for _ in range(2):
        assert _run(str(runs[0]), "--label", LABEL, "--dev-test", "-o", str(out))[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "Doe_UNI_task4.zip", "task4"])


def test_refuses_a_run_without_test_results(tiny_dataset, tmp_path):
    code, text = _run(str(tmp_path), "--label", LABEL, "--dev-test", "-o", str(tmp_path / "out"))
    assert code == 2 and "test/teacher/metrics.json: not found" in text
    assert not (tmp_path / "out").exists()


def test_metadata_states_the_rate_auto_resolved_to(tmp_path):
    """``features.input_sample_rate=auto`` is resolved from the files when the model is built: the submission's
    input rate is the number saved in the tested checkpoint, not the model's rate of the run's YAML."""
    import torch
    from omegaconf import OmegaConf

    from sed.dcase.metadata import input_rate

    ckpt = tmp_path / "best.ckpt"
    torch.save(
        {
            "state_dict": {},
            "hyper_parameters": {"classes": ["a"], "config": {"features": {"input_sample_rate": 44100}}},
        },
        ckpt,
    )
    cfg = OmegaConf.create({"features": {"input_sample_rate": "auto"}, "data": {"sample_rate": 16000}})
    assert input_rate(cfg, {"checkpoint": str(ckpt)}) == 44100.0
    fixed = OmegaConf.create({"features": {"input_sample_rate": 22050}, "data": {"sample_rate": 16000}})
    assert input_rate(fixed, {}) == 22050.0
    loader = OmegaConf.create({"features": {"input_sample_rate": None}, "data": {"sample_rate": 16000}})
    assert input_rate(loader, {}) == 16000.0


def test_a_run_from_before_the_10_s_count_gets_it_from_its_checkpoint(runs, tmp_path):
    """Runs written before per_10s existed: the MACs for 10 s are counted from the tested checkpoint."""
    import shutil

    old = tmp_path / "old_run"
    shutil.copytree(runs[0], old)
    metrics_path = old / "test" / "teacher" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    expected = metrics["complexity"].pop("per_10s")
    metrics_path.write_text(json.dumps(metrics))
    build_package([(LABEL, [old])], tmp_path / "sub", dev_test=True)
    meta = yaml.safe_load((tmp_path / "sub" / "task4" / LABEL / f"{LABEL}.meta.yaml").read_text())
    assert meta["system"]["complexity"]["macs"] == expected["macs_thop"] > 0
