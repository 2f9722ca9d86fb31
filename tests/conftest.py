"""Shared fixtures: a tiny generated dataset and the overrides of a tiny, fast run.

The suite runs in parallel (pytest-xdist, ``--dist loadfile``: one file's tests on one worker, so a module fixture
is made once). A session fixture made by a training run is made once for all workers: :func:`once_per_session`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
TINY_SIZES = {"strong": 16, "weak": 8, "unlabeled": 16, "validation": 8, "test": 8}
TINY_CLIP = 2.0


def once_per_session(tmp_path_factory, name: str, make: Callable[[Path], Any]) -> Any:
    """``make(folder)``'s JSON value, made once per test session whichever xdist worker asks first.

    The others wait on a lock and read the value it left, so a training run several test files read is run
    once, not once per worker. ``folder`` is new and the fixture's own.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the folder the workers' base folders share
    folder, done = base / f"shared_{name}", base / f"shared_{name}.json"
    with FileLock(str(base / f"shared_{name}.lock")):
        if not done.is_file():
            folder.mkdir()
            try:
                done.write_text(json.dumps({"value": make(folder)}))
            except BaseException as error:
                done.write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}))
                raise
    made = json.loads(done.read_text())
    if "error" in made:
        raise RuntimeError(f"the shared fixture {name!r} failed in another test: {made['error']}")
    return made["value"]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A 2-second-clip synthetic DCASE dataset (generated once per test session)."""
    from sed.synth import generate_dataset

    def make(root: Path) -> str:
        generate_dataset(root, seed=3, clip_duration=TINY_CLIP, sizes=TINY_SIZES, workers=1)
        return str(root)

    return Path(once_per_session(tmp_path_factory, "tiny_dataset", make))


def tiny_overrides(data_root: Path, exp_dir: Path, epochs: int = 2) -> list[str]:
    """Command-line overrides for a run that takes seconds on a CPU."""
    return [
        f"data.root={data_root}",
        "data.generate=false",
        f"data.clip_duration={TINY_CLIP}",
        "data.batch_sizes=[4,2,4]",
        "data.eval_batch_size=8",
        "data.num_workers=0",
        "features.n_fft=512",
        "features.win_length=512",
        "features.n_mels=32",
        "model.filters=[8,16,16]",
        "model.pooling=[[2,2],[2,4],[1,4]]",
        "model.rnn_hidden=16",
        "model.rnn_layers=1",
        f"trainer.max_epochs={epochs}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.deterministic=true",
        "trainer.log_every_n_steps=1",
        "training.warmup_epochs=1",
        # The quick start's augmentations and validation tuning off: the tests that exercise them turn them on.
        "training.augment.filter_augment.prob=0",
        "training.augment.frame_shift.prob=0",
        "evaluation.tune_postprocessing=false",
        "evaluation.plot_every_n_epochs=1",
        "evaluation.n_plot_clips=1",
        f"paths.exp_dir={exp_dir}",
        "exp_name=tiny",
    ]


def run_train(args: list[str], check: bool = True, full_error: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` from the repository root, as a user runs it (with ``HYDRA_FULL_ERROR=1``, so that a
    failure shows its whole traceback in the test's output, unless ``full_error`` is false: what users see)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
    if not full_error:
        env.pop("HYDRA_FULL_ERROR")
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        **kwargs,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"train.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


#: What tested_run adds to the tiny 1-epoch overrides (a test that repeats the run with one change uses them too).
TESTED_RUN_OPTIONS = ["trainer.enable_model_summary=true", "energy.country_iso_code=DEU"]


@pytest.fixture(scope="session")
def tested_run(tiny_dataset, tmp_path_factory) -> tuple[Path, str]:
    """One tested epoch of the tiny configuration, with the model summary on and codecarbon's country set: the
    run the tests of sed.export, sed.submit and the energy report read (never write into it). Shared because each
    ``train.py`` process spends most of its ~10 s importing Lightning. Returns ``(run_dir, console output)``."""

    def make(exp: Path) -> tuple[str, str]:
        proc = run_train([*tiny_overrides(data_root=tiny_dataset, exp_dir=exp, epochs=1), *TESTED_RUN_OPTIONS])
        (run_dir,) = [p for p in (exp / "tiny").iterdir() if p.is_dir()]
        return str(run_dir), proc.stdout + proc.stderr

    run_dir, output = once_per_session(tmp_path_factory, "exp_tested", make)
    return Path(run_dir), output


# Long enough epochs (20 batches) that a signal lands mid-epoch; last.ckpt also every 3 steps. Every augmentation
# on (filter augment with its non-default per-band steps, two SpecAugment masks), so that a resume must also restore
# the random state they draw from.
LONG_EPOCHS = [
    "data.epoch_length=20",
    "callbacks.checkpoint.every_n_train_steps=3",
    *(f"training.augment.{name}.prob=0.5" for name in ("filter_augment", "frame_shift", "spec_augment")),
    "training.augment.filter_augment.kind=step",
    "training.augment.spec_augment.n_masks=2",
]


@pytest.fixture(scope="session")
def long_augmented_run(tiny_dataset, tmp_path_factory) -> Path:
    """An uninterrupted, tested 3-epoch run of 20 batches per epoch with every augmentation on (LONG_EPOCHS): the
    reference of tests/reliability's resume tests and the end-to-end run of tests/training/test_augment.py. Never
    write into it (new run directories beside it are fine)."""

    def make(exp: Path) -> str:
        run_train([*tiny_overrides(tiny_dataset, exp, epochs=3), *LONG_EPOCHS])
        (run_dir,) = [p for p in (exp / "tiny").iterdir() if p.is_dir()]
        return str(run_dir)

    return Path(once_per_session(tmp_path_factory, "reference", make))


_CAPTURE_RETURN = (
    "import json\n"
    "from hydra.experimental.callback import Callback\n\n"
    "class Capture(Callback):\n"
    "    def on_job_end(self, config, job_return, **kwargs):\n"
    "        print('RETURNED=' + json.dumps(job_return.return_value))\n"
)


def run_train_returning(args: list[str], capture_dir: Path) -> tuple[subprocess.CompletedProcess, object]:
    """``python train.py ARGS`` and what its task function returned (the value a sweeper receives), captured by
    an extra Hydra callback (a module written into ``capture_dir``)."""
    (capture_dir / "capture_return.py").write_text(_CAPTURE_RETURN)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([str(capture_dir), os.environ.get("PYTHONPATH", "")]))
        proc = run_train([*args, "+hydra.callbacks.capture._target_=capture_return.Capture"])
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("RETURNED=")]
    return proc, json.loads(line[len("RETURNED=") :])


@pytest.fixture(scope="session")
def trained_3_epochs(tiny_dataset, tmp_path_factory) -> tuple[Path, object]:
    """One uninterrupted, tested 3-epoch tiny run (never write into it) and the value train.py's task function
    returned for it: the run of tests/run/test_job.py (outputs, test-only, resume reference) and of the sweeper's
    return-value test in tests/run/test_sweeps.py. Returns ``(run_dir, returned value)``."""

    def make(exp: Path) -> tuple[str, object]:
        (exp / "capture").mkdir()
        _, value = run_train_returning(tiny_overrides(tiny_dataset, exp / "runs", epochs=3), exp / "capture")
        (run_dir,) = [p for p in (exp / "runs" / "tiny").iterdir() if p.is_dir()]
        return str(run_dir), value

    run_dir, value = once_per_session(tmp_path_factory, "exp_3_epochs", make)
    return Path(run_dir), value


@pytest.fixture(scope="session")
def lr_sweep(tiny_dataset, tmp_path_factory) -> tuple[Path, str]:
    """``python train.py -m ... training.lr=1e-3,3e-4``: a tested 1-epoch multirun of two jobs with Hydra's basic
    launcher (never write into it); with tested_run, the three runs of tests/dcase/test_submit.py's system.
    Returns ``(exp_dir, stdout)``."""

    def make(exp: Path) -> tuple[str, str]:
        proc = run_train(["-m", *tiny_overrides(tiny_dataset, exp, epochs=1), "training.lr=1e-3,3e-4"])
        return str(exp), proc.stdout

    exp, stdout = once_per_session(tmp_path_factory, "exp_lr_sweep", make)
    return Path(exp), stdout


def tiny_module(classes: list[str], sample_rate: int = 16000, clip_duration: float = 1.0, **overrides):
    """A tiny untrained ``SEDModule`` (seeded); ``overrides`` are dotted config keys, e.g.
    ``{"training.mixup.prob": 1.0}``."""
    import torch
    from omegaconf import OmegaConf

    from sed.run.config import Config
    from sed.training.module import SEDModule

    cfg = OmegaConf.structured(Config)
    for key, value in {
        "paths.run_dir": "unused",
        "data.root": "unused",
        "data.sample_rate": sample_rate,
        "data.clip_duration": clip_duration,
        "features.n_fft": 512,
        "features.win_length": 512,
        "features.n_mels": 16,
        "model.filters": [4, 8],
        "model.pooling": [[2, 4], [2, 4]],
        "model.rnn_hidden": 8,
        "model.rnn_layers": 1,
        "evaluation.median_window": [3],
        "evaluation.thresholds": [0.5],
        **overrides,
    }.items():
        OmegaConf.update(cfg, key, value, merge=False)
    torch.manual_seed(0)
    return SEDModule(OmegaConf.to_container(cfg, resolve=True), classes)


def synthetic_detections(classes: list[str], n_clips: int, n_frames: int, frame: float, max_onset: int):
    """A small detection problem: ground truth (clip c0 without events, every other clip one event per class at
    random frames), clip durations, and frame probabilities ``[n, C, T]`` correlated with the events.
    Returns ``(ground_truth, durations, probs, filenames, timestamps)``."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    ts = np.arange(n_frames + 1) * frame
    target = np.zeros((n_clips, len(classes), n_frames), np.float32)
    rows = [("c0.wav", np.nan, np.nan, "")]
    for i in range(1, n_clips):
        for c in range(len(classes)):
            a = int(rng.integers(0, max_onset))
            b = int(rng.integers(a + 4, n_frames))
            target[i, c, a:b] = 1
            rows.append((f"c{i}.wav", round(ts[a], 6), round(ts[b], 6), classes[c]))
    gt = pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label"])
    durations = {f"c{i}.wav": float(round(ts[-1], 6)) for i in range(n_clips)}
    probs = (0.5 * target + 0.6 * rng.random(target.shape)).astype(np.float32)
    return gt, durations, probs, [f"c{i}.wav" for i in range(n_clips)], ts
