"""``python -m sed.submit``: the package read back with sed_scores_eval, YAML and the archive listing."""

from __future__ import annotations

import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf
import yaml

from sed.dcase.submit import MARKER, SubmissionError, build_submission

LABEL = "Doe_UNI_task4_1"


@pytest.fixture(scope="module")
def run_dir(tested_run) -> Path:
    """A tested one-epoch run of the tiny configuration (conftest's shared run)."""
    return tested_run[0]


def _submit(*args: str) -> subprocess.CompletedProcess:
    """``python -m sed.submit ARGS`` (in this process: its ``main``), with its exit status and stderr."""
    import contextlib
    import io

    from sed.dcase.submit import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["python", "-m", "sed.submit", *args], code, "", err.getvalue())


def _read_package(out: Path, label: str = LABEL):
    from sed_scores_eval.base_modules.io import read_sed_scores

    folder = out / label
    scores = read_sed_scores(str(folder / f"{label}.output_scores"))
    events = pd.read_csv(folder / f"{label}.output.tsv", sep="\t")
    meta = yaml.safe_load((folder / f"{label}.meta.yaml").read_text())
    return scores, events, meta


def test_package_of_the_run_test_outputs(run_dir, tmp_path):
    from sed_scores_eval.base_modules.io import read_sed_scores

    out = tmp_path / "submission"
    proc = _submit(str(run_dir), "-o", str(out), "--label", LABEL)
    assert proc.returncode == 0, proc.stderr
    scores, events, meta = _read_package(out)
    test = run_dir / "test" / "teacher"
    reference = read_sed_scores(str(test / "scores_postprocessed"))
    assert scores.keys() == reference.keys() and len(scores) == 8
    for key in scores:
        pd.testing.assert_frame_equal(scores[key], reference[key])
    assert events.equals(pd.read_csv(test / "events_th0.5.tsv", sep="\t"))

    metrics = json.loads((test / "metrics.json").read_text())
    energy = json.loads((run_dir / "energy.json").read_text())
    assert meta["submission"]["label"] == LABEL
    complexity = meta["system"]["complexity"]
    assert complexity["total_parameters"] == metrics["complexity"]["parameters"] > 0
    assert complexity["macs"] == metrics["complexity"]["macs"] > 0
    assert complexity["energy_consumption"]["training"] == pytest.approx(energy["fit"]["energy_kwh"], rel=1e-5)
    assert complexity["energy_consumption"]["inference"] == pytest.approx(energy["test"]["energy_kwh"], rel=1e-5)
    dev = meta["results"]["development_dataset"]
    for key in ("psds1", "psds2"):
        assert dev[key] == pytest.approx(metrics[key], abs=1e-6)
    assert dev["event_f1_macro"] == pytest.approx(metrics["event_f1_macro@0.5"], abs=1e-6)
    description = meta["system"]["description"]
    assert description["input_sampling_rate"] == 16.0 and description["acoustic_features"] == "log-mel energies"
    # what the user must complete is marked
    text = (out / LABEL / f"{LABEL}.meta.yaml").read_text()
    assert "name: TODO  # TODO" in text and "email: TODO  # TODO" in text

    with zipfile.ZipFile(out / f"{LABEL}.zip") as archive:
        names = set(archive.namelist())
        assert archive.read(f"{LABEL}/{LABEL}.meta.yaml").decode() == text
    expected = {f"{LABEL}/{LABEL}.meta.yaml", f"{LABEL}/{LABEL}.output.tsv"}
    expected |= {f"{LABEL}/{LABEL}.output_scores/{key}.tsv" for key in scores}
    assert names == expected


def test_package_of_evaluation_audio_of_any_length(run_dir, tmp_path):
    """Evaluation clips of other lengths go through the checkpoint the run tested (sed.infer.Detector)."""
    audio_dir = tmp_path / "eval"
    audio_dir.mkdir()
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    test_audio = Path(cfg["data"]["root"]) / "audio" / "test"
    clips = sorted(test_audio.glob("*.wav"))[:2]
    a, rate = sf.read(clips[0])
    b, _ = sf.read(clips[1])
    sf.write(audio_dir / "long.wav", list(a) + list(b) + list(a[: rate // 2]), rate)  # 4.5 s
    sf.write(audio_dir / "short.wav", a[: rate], rate)  # 1 s
    out = tmp_path / "submission"
    path = build_submission(run_dir, out, eval_audio=audio_dir, label=LABEL, archive="tar.gz")
    scores, events, meta = _read_package(out)
    assert set(scores) == {"long", "short"}
    assert scores["long"]["offset"].iloc[-1] == pytest.approx(4.5)
    assert scores["short"]["offset"].iloc[-1] == pytest.approx(1.0)
    assert set(events["filename"]) <= {"long.wav", "short.wav"}
    # the development results stay those of the run's test set
    metrics = json.loads((run_dir / "test" / "teacher" / "metrics.json").read_text())
    assert meta["results"]["development_dataset"]["psds1"] == pytest.approx(metrics["psds1"], abs=1e-6)
    with tarfile.open(path) as archive:
        assert f"{LABEL}/{LABEL}.output_scores/long.tsv" in archive.getnames()
    # a bad evaluation file is an error naming it, and the earlier package stays as it was
    (audio_dir / "broken.wav").write_bytes(b"not audio")
    before = sorted(p.name for p in (out / LABEL / f"{LABEL}.output_scores").iterdir())
    with pytest.raises(SubmissionError, match="broken.wav"):
        build_submission(run_dir, out, eval_audio=audio_dir, label=LABEL)
    assert sorted(p.name for p in (out / LABEL / f"{LABEL}.output_scores").iterdir()) == before


def test_refuses_an_output_folder_that_is_not_ours(run_dir, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    proc = _submit(str(run_dir), "-o", str(foreign))
    assert proc.returncode == 2 and "not written by sed.submit" in proc.stderr
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    # its own earlier output is replaced as a whole (default label, zip)
    out = tmp_path / "sub"
    for _ in range(2):
        assert _submit(str(run_dir), "-o", str(out)).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "Lastname_INST_task4_1", "Lastname_INST_task4_1.zip"])


def test_refuses_a_run_without_test_results(tiny_dataset, tmp_path):
    proc = _submit(str(tmp_path), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and "test/teacher/metrics.json: not found" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_metadata_states_the_rate_auto_resolved_to(tmp_path):
    """``features.input_sample_rate=auto`` is resolved from the files when the model is built: the submission's
    input rate is the number saved in the tested checkpoint, not the model's rate of the run's YAML."""
    import torch
    from omegaconf import OmegaConf

    from sed.dcase.submit import _input_rate

    ckpt = tmp_path / "best.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"classes": ["a"], "config": {
        "features": {"input_sample_rate": 44100}}}}, ckpt)
    cfg = OmegaConf.create({"features": {"input_sample_rate": "auto"}, "data": {"sample_rate": 16000}})
    assert _input_rate(cfg, {"complexity": {"checkpoint": str(ckpt)}}) == 44100.0
    fixed = OmegaConf.create({"features": {"input_sample_rate": 22050}, "data": {"sample_rate": 16000}})
    assert _input_rate(fixed, {}) == 22050.0
    loader = OmegaConf.create({"features": {"input_sample_rate": None}, "data": {"sample_rate": 16000}})
    assert _input_rate(loader, {}) == 16000.0
