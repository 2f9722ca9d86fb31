"""train.py on two datasets at once (exp=multi_dataset_quick, tiny): metrics per set, sed.infer on the checkpoint
(the union of the classes), resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import once_per_session, run_train, tiny_overrides

from sed.synth import DEFAULT_CLASSES, RECORDING_CLASSES

UNION = DEFAULT_CLASSES + [c for c in RECORDING_CLASSES if c not in DEFAULT_CLASSES]


def _overrides(clips: Path, recordings: Path, exp_dir: Path, epochs: int) -> list[str]:
    """The tiny run's overrides, on the recipe's two datasets: 2-s clips and 20-s recordings already generated."""
    return [
        "exp=multi_dataset_quick",
        *tiny_overrides(clips, exp_dir, epochs=epochs),
        f"data.datasets.clips.root={clips}",
        f"data.datasets.recordings.root={recordings}",
        "data.datasets.clips.train.strong.batch_size=4",
        "data.datasets.clips.train.weak.batch_size=2",
        "data.datasets.clips.train.unlabeled.batch_size=4",
        "data.datasets.recordings.train.train.batch_size=4",
    ]


@pytest.fixture(scope="session")
def multi_run(tiny_dataset, tmp_path_factory) -> tuple[Path, Path, str]:
    """One tested 2-epoch run on the tiny clips and three 20-s recordings (never write into it)."""

    def make(folder: Path) -> tuple[str, str, str]:
        from sed.synth import generate_recordings

        recordings = generate_recordings(
            folder / "rec", seed=3, sizes={"train": 2, "validation": 1, "test": 1}, duration=20.0
        )
        proc = run_train(_overrides(tiny_dataset, recordings, folder / "exp", epochs=2))
        (run_dir,) = [p for p in (folder / "exp" / "tiny").iterdir() if p.is_dir()]
        return str(run_dir), str(recordings), proc.stdout + proc.stderr

    run_dir, recordings, output = once_per_session(tmp_path_factory, "multi_run", make)
    return Path(run_dir), Path(recordings), output


def test_each_set_is_scored_with_its_metrics_and_reported(multi_run):
    run_dir, _, output = multi_run
    assert "  footsteps: clips, recordings" in output and "  people_talking: recordings" in output  # class list
    assert "'recordings/train': 38" in output  # two 20-s recordings in 2-s windows every second
    clips = json.loads((run_dir / "test" / "clips" / "student" / "metrics.json").read_text())
    recordings = json.loads((run_dir / "test" / "recordings" / "teacher" / "metrics.json").read_text())
    assert "psds1" in clips and "weak_f1" in clips and "mpauc" not in clips
    assert 0.0 <= recordings["mpauc"] <= 1.0 and {"mauc", "segment_f1_best"} <= set(recordings)
    assert "psds1" not in recordings and not math.isnan(recordings["mauc"])
    status = json.loads((run_dir / "status.json").read_text())
    assert set(status["test"]) == {"clips/student", "clips/teacher", "recordings/student", "recordings/teacher"}
    assert "mpauc" in status["test"]["recordings/student"] and status["best_val_objective"] is not None
    assert "recordings/student" in output and "'mpauc':" in output  # the run summary
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {
        "val/clips/student/psds1",
        "val/recordings/teacher/mpauc",
        "val/obj_metric",
        "test/recordings/student/mpauc",
        "test/clips/teacher/psds1",
    } <= tags


def test_infer_uses_the_union_of_the_classes_on_a_long_recording(multi_run, tmp_path):
    from sed.infer import Detector, main

    run_dir, recordings, _ = multi_run
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    detector = Detector.from_checkpoint(checkpoint)
    assert detector.classes == UNION
    wav = sorted((recordings / "audio" / "test").iterdir())[0]
    prediction = detector.predict_file(wav)
    assert prediction.probabilities.shape[0] == len(UNION)
    assert prediction.timestamps[-1] == pytest.approx(20.0, abs=detector.encoder.frame_duration)
    out = tmp_path / "events.tsv"
    assert main([str(checkpoint), str(wav), "-o", str(out), "--threshold", "0.3"]) == 0
    assert set(pd.read_csv(out, sep="\t")["event_label"]) <= set(UNION)


def test_resume_continues_a_several_dataset_run(multi_run, tiny_dataset, tmp_path):
    run_dir, recordings, _ = multi_run
    proc = run_train(
        [
            *_overrides(tiny_dataset, recordings, tmp_path, epochs=3),
            "test=false",
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        ]
    )
    assert "Restored all states" in proc.stdout + proc.stderr
    (resumed,) = [p for p in (tmp_path / "tiny").iterdir() if p.is_dir()]
    assert json.loads((resumed / "status.json").read_text())["status"] == "finished"
    import torch

    state = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    before = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (state["epoch"], before["epoch"]) == (2, 1)  # the third epoch, after the two of the resumed run
    assert state["global_step"] == 3 * before["global_step"] // 2 and state["hyper_parameters"]["classes"] == UNION
