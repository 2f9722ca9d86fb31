"""``--check``: a package checked as DCASE's validators check one (sed.dcase.checker), one test per rule, on packages
made by hand here (tests/dcase/test_submit.py checks packages built from training runs)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import yaml

from sed.dcase.checker import check_package, report
from sed.submit import main

LABEL = "Doe_UNI_task4_1"
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
SCORES = "onset\toffset\tdog\tcat\n0.0\t0.5\t0.1\t0.7\n0.5\t1.0\t0.3\t0.2\n"
CSV = "timestamp,project_name,duration,emissions,energy_consumed\n2024-01-01T00:00:00,fit,10,0.001,0.002\n"


def _meta(label: str = LABEL) -> dict:
    author = {
        "lastname": "Doe",
        "firstname": "Jane",
        "email": "j@uni.edu",
        "corresponding": True,
        "affiliation": {"abbreviation": "UNI", "institute": "Uni", "location": "Paris, France"},
    }
    return {
        "submission": {"label": label, "name": "CRNN", "abbreviation": "CRNN", "authors": [author]},
        "system": {
            "description": {
                "input_sampling_rate": 16.0,
                "acoustic_features": "log-mel energies",
                "data_augmentation": None,
                "machine_learning_method": "CRNN",
                "ensemble_method_subsystem_count": None,
                "pretrained_models": None,
            },
            "complexity": {
                "total_parameters": 10,
                "macs": 100,
                "energy_consumption": {"training": 1.0, "devtest_inference": 0.1},
            },
            "external_datasets": [],
            "source_code": None,
        },
        "results": {"devtest": {"desed": {"PSDS1": 0.4}, "maestro": {"mPAUC": 0.6}}},
    }


def _files(label: str = LABEL, runs: int = 3, clips=("a", "b")) -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = {
        "task4/Doe_UNI_task4.technical_report.pdf": PDF,
        f"task4/{label}/{label}.meta.yaml": yaml.safe_dump(_meta(label)),
    }
    for run in range(1, runs + 1):
        for suffix in ("", "_unprocessed"):
            for clip in clips:
                files[f"task4/{label}/{label}_run{run}{suffix}.output/{clip}.tsv"] = SCORES
        files[f"task4/{label}/{label}_run{run}.codecarbon/emissions.csv"] = CSV
    return files


def _zip(tmp_path: Path, files: dict[str, str | bytes], name: str = "Doe_UNI_task4.zip") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:
        for member, data in files.items():
            z.writestr(member, data)
    return path


def _messages(path: Path, year: int = 2024, **kwargs) -> list[str]:
    return [f"{f.level} {f.where}: {f.message}" for f in check_package(path, year, **kwargs)]


def test_a_complete_package_passes(tmp_path, capsys):
    path = _zip(tmp_path, _files())
    assert check_package(path) == []
    assert main(["--check", str(path)]) == 0
    assert "ready to submit (0 error(s), 0 warning(s))" in capsys.readouterr().out


def test_not_a_zip(tmp_path):
    (tmp_path / "p.zip").write_text("no")
    assert _messages(tmp_path / "p.zip") == [
        f"error {tmp_path / 'p.zip'}: not a zip archive (DCASE takes one zip package)"
    ]


def test_everything_under_task4(tmp_path):
    files = _files()
    files["Doe_UNI_task4_1/notes.txt"] = "x"
    files["task4/readme.txt"] = "x"
    messages = _messages(_zip(tmp_path, files))
    assert "error Doe_UNI_task4_1/notes.txt: outside task4/ (every file goes under task4/)" in messages
    assert any(m.startswith("error task4/readme.txt: unexpected file") for m in messages)


def test_the_technical_report(tmp_path):
    files = _files()
    del files["task4/Doe_UNI_task4.technical_report.pdf"]
    assert _messages(_zip(tmp_path, files)) == ["error task4/: no technical report (a .pdf beside the system folders)"]
    files["task4/report.pdf"] = b"not a pdf"
    assert _messages(_zip(tmp_path, files)) == ["error task4/report.pdf: not a PDF file (no %PDF- header)"]


def test_at_most_four_systems_of_one_participant(tmp_path):
    files = {}
    for index in range(1, 5):
        files.update(_files(f"Doe_UNI_task4_{index}"))
    assert check_package(_zip(tmp_path, files)) == []
    files.update(_files("Roe_LAB_task4_1"))
    messages = _messages(_zip(tmp_path, files))
    assert "error task4/: 5 systems, at most 4 per task" in messages
    assert any("systems of several participants ['Doe_UNI_task4', 'Roe_LAB_task4']" in m for m in messages)


def test_system_folders_are_labels(tmp_path):
    files = {k.replace(LABEL, "Doe"): v for k, v in _files().items()}
    assert any("error task4/Doe: 'Doe' has 1 '_'-separated part(s)" in m for m in _messages(_zip(tmp_path, files)))


def test_files_are_named_after_the_label(tmp_path):
    files = _files()
    files[f"task4/{LABEL}/{LABEL}.output.tsv"] = "events"
    files[f"task4/{LABEL}/Doe_UNI_task4_2_run1.output/a.tsv"] = SCORES
    messages = _messages(_zip(tmp_path, files))
    assert sum(f"task4/{LABEL}/" in m and "not a file of the package" in m for m in messages) == 2


def test_the_metadata_is_checked(tmp_path):
    files = _files()
    meta = _meta()
    meta["submission"]["name"] = "TODO"
    meta["submission"]["label"] = "Doe_UNI_task4_2"
    files[f"task4/{LABEL}/{LABEL}.meta.yaml"] = yaml.safe_dump(meta)
    where = f"error task4/{LABEL}/{LABEL}.meta.yaml"
    assert _messages(_zip(tmp_path, files)) == [
        f"{where}: submission.name: still TODO, fill it in",
        f"{where}: submission.label: 'Doe_UNI_task4_2' differs from the label of its folder and files ('{LABEL}')",
    ]
    del files[f"task4/{LABEL}/{LABEL}.meta.yaml"]
    assert _messages(_zip(tmp_path, files)) == [f"error task4/{LABEL}: no {LABEL}.meta.yaml"]


def test_metadata_as_dcase_s_validator_reads_it(tmp_path):
    """DCASE's Task 4 validator drops everything after '#' on each line before parsing."""
    meta = _meta()
    meta["system"]["source_code"] = "https://example.org/repo#main"
    files = _files()
    files[f"task4/{LABEL}/{LABEL}.meta.yaml"] = yaml.safe_dump(meta)
    assert any("drops everything after '#'" in m for m in _messages(_zip(tmp_path, files)))


def test_three_runs_post_processed_and_unprocessed(tmp_path):
    files = {k: v for k, v in _files().items() if "_run3" not in k and "_run2_unprocessed" not in k}
    messages = _messages(_zip(tmp_path, files))
    assert any(m.startswith(f"error task4/{LABEL}: no {LABEL}_run3.output/") for m in messages)
    assert any(m.startswith(f"warning task4/{LABEL}: no {LABEL}_run2_unprocessed.output/") for m in messages)
    assert not any(m.startswith("error") and "run2_unprocessed" in m for m in messages)


def test_score_files_are_read_by_sed_scores_eval(tmp_path):
    files = _files()
    files[f"task4/{LABEL}/{LABEL}_run2.output/a.tsv"] = "start\tend\tdog\tcat\n0.0\t0.5\t0.1\t0.2\n"  # columns
    files[f"task4/{LABEL}/{LABEL}_run2.output/b.tsv"] = SCORES.replace("0.5\t1.0", "0.6\t1.0")  # frames do not chain
    messages = _messages(_zip(tmp_path, files))
    assert sum("not readable by sed_scores_eval" in m for m in messages) == 2


def test_every_run_covers_the_same_clips_and_classes(tmp_path):
    files = _files()
    files[f"task4/{LABEL}/{LABEL}_run2.output/c.tsv"] = SCORES
    files[f"task4/{LABEL}/{LABEL}_run3.output/a.tsv"] = SCORES.replace("cat", "bird")
    files[f"task4/{LABEL}/{LABEL}_run3.output/b.tsv"] = SCORES.replace("cat", "bird")
    messages = _messages(_zip(tmp_path, files))
    assert any(f"{LABEL}_run2.output: holds 3 clips" in m for m in messages)
    assert any(f"{LABEL}_run3.output: classes ['dog', 'bird']" in m for m in messages)
    assert any(
        "2 score files, the evaluation set has 2200" in m for m in _messages(_zip(tmp_path, _files()), eval_clips=2200)
    )


@pytest.mark.parametrize("year, level", [(2024, "error"), (2023, "warning")])
def test_codecarbon_files(tmp_path, year, level):
    files = {k: v for k, v in _files().items() if "_run2.codecarbon" not in k}
    files[f"task4/{LABEL}/{LABEL}_run1.codecarbon/emissions.csv"] = "a,b\n1,2\n"
    if year == 2023:
        meta = _meta()
        meta["results"] = {"development_dataset": {"psds1": 0.4, "psds2": 0.5}}
        meta["system"]["complexity"]["energy_consumption"]["evaluation_inference"] = 0.2
        files[f"task4/{LABEL}/{LABEL}.meta.yaml"] = yaml.safe_dump(meta)
    messages = _messages(_zip(tmp_path, files), year)
    assert sorted(messages) == sorted(
        [
            f"error task4/{LABEL}/{LABEL}_run1.codecarbon/emissions.csv: not a codecarbon emissions CSV (no energy_consumed column)",
            f"{level} task4/{LABEL}: no codecarbon CSV for run(s) [2] (<label>_run<i>.codecarbon/*.csv; 2024 asks for "
            "the whole codecarbon files)",
        ]
    )


def test_report_lines(tmp_path):
    files = _files()
    del files["task4/Doe_UNI_task4.technical_report.pdf"]
    path = _zip(tmp_path, files)
    text = report(check_package(path), path)
    assert text.splitlines()[-1] == f"{path}: NOT ready to submit (1 error(s), 0 warning(s))"
    assert main(["--check", str(path)]) == 1
