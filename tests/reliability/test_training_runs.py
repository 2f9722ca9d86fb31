"""``python train.py`` under faults: SIGTERM and SIGKILL in every epoch, a stale last.ckpt, concurrent runs, finished runs,
mismatched or broken checkpoints, poisoned audio, non-finite losses, configuration holes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import faults
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import LONG_EPOCHS, REPO, run_train, tiny_overrides


def _run_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in (exp / "tiny").iterdir() if p.is_dir()) if (exp / "tiny").is_dir() else []


def _metrics(run_dir: Path, model: str) -> dict:
    return json.loads((run_dir / "test" / model / "metrics.json").read_text())


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def _assert_refused(proc: subprocess.CompletedProcess, message: str) -> None:
    """A refused input as a user sees it (no HYDRA_FULL_ERROR): exit status 1, and stderr ending with the reason
    (``error: ...``, ``message`` in it), no traceback and no Hydra hint after it."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr, proc.stderr[-3000:]
    assert "\nerror: " in "\n" + proc.stderr, proc.stderr[-3000:]
    assert message in proc.stderr[proc.stderr.rindex("error: ") :], proc.stderr[-3000:]


def _progress(ckpt: Path) -> tuple[int, int]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return state["epoch"], state["global_step"]


@pytest.fixture(scope="module")
def finished(long_augmented_run) -> Path:
    """An uninterrupted 3-epoch run of 20 batches per epoch (conftest's LONG_EPOCHS, shared with the augmentation
    tests): the reference of the resume tests."""
    return long_augmented_run


def _train_until_stopped(args: list[str]) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` that a fault of tests/reliability/faults.py may stop (any exit status)."""
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **faults.ENV),
        timeout=600,
    )


def _printed_resume_command(output: str) -> list[str]:
    """The arguments of the ``Resume with: python train.py ...`` line a stopped run printed, less its fault."""
    (line,) = [ln for ln in output.splitlines() if ln.startswith("Resume with: python train.py ")]
    return [
        a
        for a in shlex.split(line.removeprefix("Resume with: python train.py "))
        if not a.startswith("+callbacks.fault")
    ]


def _assert_equal_runs(run_dir: Path, reference: Path) -> None:
    """Weights (student, teacher, scaler) and every test metric of both models within 1e-6."""
    weights = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    expected = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert weights.keys() == expected.keys()
    tensors = {name: value for name, value in expected.items() if isinstance(value, torch.Tensor)}
    assert len(tensors) > 10
    for name, value in tensors.items():
        difference = float((weights[name].double() - value.double()).abs().max()) if value.numel() else 0.0
        assert difference <= 1e-6, f"{name}: differs by up to {difference:.3g}"
    for model in ("student", "teacher"):
        resumed, reference_metrics = _metrics(run_dir, model), _metrics(reference, model)
        numbers = {k: v for k, v in reference_metrics.items() if isinstance(v, (int, float))}
        assert len(numbers) > 10
        for key, value in numbers.items():
            assert resumed[key] == pytest.approx(value, abs=1e-6, nan_ok=True), (model, key)


def test_stopped_in_every_epoch_and_resumed_each_time_equals_the_uninterrupted_run(finished, tiny_dataset, tmp_path):
    """SIGTERM mid-epoch 0, SIGTERM mid-epoch 1, then SIGKILL mid-epoch 2 (no chance to save: the run resumes from
    the step-interval last.ckpt), each time resumed with the command the stopped run printed: the run ends where the
    uninterrupted one ended (weights and test metrics within 1e-6), in its own directory, with one TensorBoard run
    whose validation curve has every epoch once. (Resuming mid-epoch 1 or later once retrained the epoch's first
    batches: the sampler drew epoch 0's order in every epoch.)"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp = tmp_path / "exp"
    args = [*tiny_overrides(tiny_dataset, exp, epochs=3), *LONG_EPOCHS]
    proc = _train_until_stopped([*args, *faults.overrides(7, "SIGTERM")])  # 20 steps per epoch
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    (run_dir,) = _run_dirs(exp)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert _progress(last) == (0, 8)  # stopped after the step under way
    assert json.loads((run_dir / "status.json").read_text())["status"] == "stopped"
    first_config = (run_dir / ".hydra" / "config.yaml").read_bytes()
    resume = _printed_resume_command(proc.stdout + proc.stderr)
    assert resume[-1] == f"ckpt_path={last}"

    proc = _train_until_stopped([*resume, *faults.overrides(27, "SIGTERM")])
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert _progress(last) == (1, 28)
    assert _printed_resume_command(proc.stdout + proc.stderr) == resume

    proc = _train_until_stopped([*resume, *faults.overrides(47, "SIGKILL")])
    assert proc.returncode == -signal.SIGKILL
    assert _progress(last) == (2, 45) and not (run_dir / "test").exists()  # saved every 3 steps

    run_train(resume)
    assert _run_dirs(exp) == [run_dir], "resumes continue in the run's own directory"
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == first_config
    assert sorted(p.name for p in (run_dir / ".hydra").glob("resume_*")) == ["resume_1", "resume_2", "resume_3"]
    _assert_equal_runs(run_dir, finished)
    steps = [e.step for e in EventAccumulator(str(run_dir / "tensorboard")).Reload().Scalars("val/obj_metric")]
    assert steps == [e.step for e in EventAccumulator(str(finished / "tensorboard")).Reload().Scalars("val/obj_metric")]


def test_sigterm_while_testing_stops_the_run_and_prints_how_to_test_again(tiny_dataset, tmp_path):
    """SIGTERM at a run's test stage: exit 143, status.json ``stopped`` at stage ``test``, the run directory's lock
    released, and a printed command that tests the tested checkpoint again (train=false), which works. (The run
    exited 0 with status ``failed`` and the reason ``SIGTERMException: ``: a scheduler recorded a success.)"""
    exp = tmp_path / "exp"
    proc = _train_until_stopped([*tiny_overrides(tiny_dataset, exp, epochs=1), *faults.overrides(0, stage="test")])
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    (run_dir,) = _run_dirs(exp)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "stopped" and status["stage"] == "test", status
    assert not (run_dir / "test").exists()
    assert (run_dir / ".lock").read_text() == ""  # no pid left: released
    (best,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
    lines = [
        ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Test again with: python train.py ")
    ]
    assert len(lines) == 1 and status["rerun"] == lines[0].removeprefix("Test again with: ")
    command = shlex.split(lines[0].removeprefix("Test again with: python train.py "))
    assert command[-2:] == ["train=false", f"ckpt_path={best}"]
    run_train([a for a in command if not a.startswith("+callbacks.fault")])
    (tested,) = [d for d in _run_dirs(exp) if d != run_dir]
    assert json.loads((tested / "status.json").read_text())["status"] == "finished"
    assert (tested / "test" / "teacher" / "metrics.json").is_file()


def test_corrupt_and_truncated_audio_are_all_reported_before_training(tiny_dataset, tmp_path):
    """Corrupt and truncated audio files and every bad line of a TSV, in one error before training."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    strong = sorted((data / "audio" / "train" / "strong").iterdir())[0]
    strong.write_bytes(b"RIFF garbage, not a wav file")
    val = sorted((data / "audio" / "validation").iterdir())[0]
    val.write_bytes(val.read_bytes()[: val.stat().st_size // 2])  # data chunk cut short
    weak = data / "metadata" / "train" / "weak.tsv"
    lines = weak.read_text().splitlines()
    weak.write_text("\n".join([*lines, lines[1], "extra.wav\tno_such_class"]) + "\n")  # two bad lines
    exp = tmp_path / "exp"
    proc = run_train(tiny_overrides(data, exp, epochs=1), check=False, full_error=False)
    _assert_refused(proc, strong.name)
    assert strong.name in proc.stderr and val.name in proc.stderr
    assert f"{weak}:{len(lines) + 1}: duplicate filename" in proc.stderr
    assert f"{weak}:{len(lines) + 2}: unknown label 'no_such_class'" in proc.stderr
    (run_dir,) = _run_dirs(exp)
    assert not list(run_dir.rglob("*.ckpt"))
    assert strong.name in (run_dir / "train.log").read_text()


def test_last_ckpt_is_the_latest_epoch_when_the_metric_stops_improving(tiny_dataset, tmp_path):
    """The consistency weight only rises: with mode=min only epoch 0 is a top-k checkpoint. Lightning's own
    save_last then left last.ckpt at epoch 0 and a resume re-ran the later epochs."""
    exp = tmp_path / "exp"
    run_train(
        [
            *tiny_overrides(tiny_dataset, exp, epochs=3),
            "test=false",
            "callbacks.checkpoint.monitor=train/consistency_weight",
            "callbacks.checkpoint.mode=min",
        ]
    )
    (run_dir,) = _run_dirs(exp)
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))] == ["epoch000.ckpt"]
    epoch, step = _progress(run_dir / "checkpoints" / "last.ckpt")
    assert (epoch, step) == (2, 12)  # 3 epochs of 4 batches


def test_resuming_a_finished_run_keeps_its_results(finished, tiny_dataset, tmp_path):
    before = _snapshot(finished)
    exp = finished.parent.parent
    run_train(
        [
            *tiny_overrides(tiny_dataset, exp, epochs=4),
            *LONG_EPOCHS,
            "test=false",
            f"ckpt_path={finished / 'checkpoints' / 'last.ckpt'}",
        ]
    )
    assert _snapshot(finished) == before
    new = [d for d in _run_dirs(exp) if d != finished]
    assert len(new) == 1 and _progress(new[0] / "checkpoints" / "last.ckpt") == (3, 80)


def test_concurrent_runs_with_one_name_get_their_own_directories(tiny_dataset, tmp_path):
    exp = tmp_path / "exp"
    args = [*tiny_overrides(tiny_dataset, exp, epochs=1), "test=false", "data.epoch_length=2"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *args],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    dirs = _run_dirs(exp)
    assert len(dirs) == 2
    for run_dir in dirs:
        assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_a_run_directory_in_use_is_refused(finished, tiny_dataset, tmp_path):
    """Resuming into a run directory a live process holds is refused in one line, and writes nothing into it (it
    used to add .hydra/resume_1/ and two error lines to the live run's train.log)."""
    exp = tmp_path / "exp"
    args = [*tiny_overrides(tiny_dataset, exp, epochs=3), *LONG_EPOCHS]
    run_dir = exp / "tiny" / finished.name
    shutil.copytree(finished, run_dir, ignore=shutil.ignore_patterns(".lock"))  # a run of train.py, not trained again
    (run_dir / "status.json").write_text('{"status": "stopped"}')  # resumable, and held by another process:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from sed.run.rundir import lock_run_dir; "
            f"lock_run_dir({str(run_dir)!r}); print('held', flush=True); time.sleep(60)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(run_dir)
        proc = run_train([*args, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], check=False, full_error=False)
    finally:
        holder.kill()
        holder.wait()
    _assert_refused(proc, f"{run_dir} is in use by another process (pid {holder.pid})")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _snapshot(run_dir) == before and not (run_dir / ".hydra" / "resume_1").exists()


def test_resume_with_other_classes_or_model_or_a_broken_file_is_refused_in_one_line(finished, tiny_dataset, tmp_path):
    args = [*tiny_overrides(tiny_dataset, tmp_path / "exp", epochs=3), *LONG_EPOCHS]
    last = finished / "checkpoints" / "last.ckpt"
    classes = (tiny_dataset / "classes.txt").read_text().split()
    swapped = [classes[1], classes[0], *classes[2:]]
    cases = {
        f"data.classes=[{','.join(swapped)}]": f"ckpt_path={last} was trained on classes",
        "model.rnn_hidden=8": f"ckpt_path={last} was trained with another model/front-end (model.rnn_hidden=16 in "
        "the checkpoint, 8 now)",
    }
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[:1000])
    for override, message in cases.items():
        proc = run_train([*args, override, f"ckpt_path={last}"], check=False)
        assert proc.returncode != 0 and message in proc.stderr, (override, proc.stderr[-2000:])
        assert "size mismatch" not in proc.stderr
    proc = run_train([*args, f"ckpt_path={truncated}"], check=False)
    assert proc.returncode != 0
    assert f"ckpt_path={truncated}: unreadable checkpoint (truncated or corrupt" in proc.stderr


def _poisoned_copy(tiny_dataset: Path, tmp_path: Path) -> tuple[Path, str]:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    strong = data / "audio" / "train" / "strong"
    name = sorted(p.name for p in strong.iterdir())[0]
    x, sr = sf.read(strong / name, dtype="float32")
    x[len(x) // 2] = np.nan
    sf.write(strong / name, x, sr, subtype="FLOAT")
    return data, name


def test_nan_audio_stops_the_run_naming_the_file_in_train_log(tiny_dataset, tmp_path):
    data, name = _poisoned_copy(tiny_dataset, tmp_path)
    exp = tmp_path / "exp"
    proc = run_train([*tiny_overrides(data, exp, epochs=1), "test=false"], check=False)
    assert proc.returncode != 0
    assert name in proc.stderr and "non-finite" in proc.stderr
    (run_dir,) = _run_dirs(exp)
    log = (run_dir / "train.log").read_text()
    assert "Run failed" in log and name in log and "non-finite" in log
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert not list(run_dir.rglob("*.ckpt"))
    # the documented alternative: zero the samples, with a warning naming the file
    proc = run_train([*tiny_overrides(data, exp, epochs=1), "test=false", "data.nonfinite_audio=zero"])
    assert name in proc.stdout + proc.stderr


def test_configuration_holes(tiny_dataset, tmp_path):
    base = [*tiny_overrides(tiny_dataset, tmp_path / "exp", epochs=1), "test=false"]
    refused = run_train([*base, "+training.lrr=1e-3"], check=False, full_error=False)
    _assert_refused(refused, "unknown configuration key 'training.lrr'")
    # accepted as a user writes them, in one run: sizes from the command line, an int epoch length, lr=0 (frozen
    # student)
    bom = tmp_path / "bom"
    shutil.copytree(tiny_dataset, bom)
    (bom / "classes.txt").write_text("\ufeff" + (tiny_dataset / "classes.txt").read_text(), encoding="utf-8")
    sizes = "{strong:4,weak:2,unlabeled:4,validation:2,test:2}"
    generated = tmp_path / "generated"
    run_train(
        [
            *tiny_overrides(generated, tmp_path / "exp2", epochs=1),
            "data.generate=true",
            f"data.generate_sizes={sizes}",
            "data.batch_sizes=[2,1,2]",
            "test=false",
            "data.epoch_length=3",
            "training.lr=0",
        ]
    )
    assert json.loads((generated / ".complete").read_text())["sizes"]["strong"] == 4
    (run_dir,) = _run_dirs(tmp_path / "exp2")
    assert _progress(run_dir / "checkpoints" / "last.ckpt") == (0, 3)  # one epoch of data.epoch_length=3 batches
    from sed.data.datamodule import SEDDataModule

    assert SEDDataModule(root=str(bom)).classes == (tiny_dataset / "classes.txt").read_text().split()
    missing = run_train(
        [*tiny_overrides(tmp_path / "nowhere", tmp_path / "exp3", epochs=1)], check=False, full_error=False
    )
    _assert_refused(missing, f"data.root={tmp_path / 'nowhere'} does not exist")


def test_refused_generation_and_an_unusable_exp_dir_end_with_their_reason(tiny_dataset, tmp_path):
    """What train.py refuses ends with the reason, in one line naming the key, and exit status 1: no traceback
    and no Hydra hint after it. (A refused generation printed its reason, then Hydra's traceback; a paths.exp_dir
    that is a file printed 104 lines beginning "An error occurred during Hydra's exception formatting".)"""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / ".complete").unlink()
    (data / "notes.txt").write_text("not the generator's")
    args = [a for a in tiny_overrides(data, tmp_path / "exp", epochs=1) if a != "data.generate=false"]
    _assert_refused(run_train(args, check=False, full_error=False), "files the generator did not write")
    exp_file = tmp_path / "exp_file"
    exp_file.write_text("a file, not a folder")
    proc = run_train(tiny_overrides(tiny_dataset, exp_file, epochs=1), check=False, full_error=False)
    _assert_refused(proc, f"paths.exp_dir={exp_file}")
    assert len(proc.stderr.strip().splitlines()) == 1 and exp_file.read_text() == "a file, not a folder"
