"""Sweeps end to end on the tiny dataset: what train.py returns to a sweeper, the Optuna search, the sweep summary
(config differences, headline metrics, mean ± std over seeds) and the submitit launchers (local run, SLURM job
script)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_train, run_train_returning, tiny_overrides


def _sweep_dir(exp_dir: Path) -> Path:
    (sweep,) = [p for p in (exp_dir / "tiny").iterdir() if p.is_dir()]  # one sweep directory, never a `_1`
    assert sweep.name.startswith("multirun_")
    return sweep


def _jobs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def _tensorboard_best(run_dir: Path) -> float:
    """The best (highest) val/obj_metric logged to the run's TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return max(e.value for e in events.Scalars("val/obj_metric"))


def test_returns_best_validation_objective_not_a_test_metric(trained_3_epochs, tiny_dataset, tmp_path):
    run_dir, value = trained_3_epochs  # a tested 3-epoch run and what train.py returned for it
    assert isinstance(value, float)
    assert value == pytest.approx(_tensorboard_best(run_dir), abs=1e-6)
    assert json.loads((run_dir / "status.json").read_text())["best_val_objective"] == value
    test_values = {m["psds1"] for m in (json.loads(f.read_text()) for f in (run_dir / "test").glob("*/metrics.json"))}
    assert test_values and value not in test_values

    # Nothing validated for checkpoint selection: nothing to optimise, None rather than a made-up number.
    exp = tmp_path / "exp_unmonitored"
    _, value = run_train_returning(
        [*tiny_overrides(tiny_dataset, exp, epochs=1), "callbacks.checkpoint.monitor=null", "test=false"], tmp_path
    )
    assert value is None


def test_optuna_search_optimises_the_validation_objective(tiny_dataset, tmp_path):
    exp = tmp_path / "exp"
    run_train(
        [
            "-m",
            "hparams_search=optuna",
            *tiny_overrides(tiny_dataset, exp, epochs=1),
            "test=false",
            "hydra.sweeper.n_trials=2",
        ]
    )
    sweep = _sweep_dir(exp)
    jobs = _jobs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    params = {"training.lr", "model.dropout", "training.mixup.prob", "evaluation.median_window"}
    assert set(results["best_params"]) == params
    best_values = [_tensorboard_best(j) for j in jobs]
    assert results["best_value"] == pytest.approx(max(best_values), abs=1e-6)
    best_job = jobs[best_values.index(max(best_values))]
    overrides = dict(o.split("=", 1) for o in yaml.safe_load((best_job / ".hydra" / "overrides.yaml").read_text()))
    for key, value in results["best_params"].items():
        assert overrides[key] == str(value)
    summary = json.loads((sweep / "summary.json").read_text())
    assert set(summary["varying"]) == params


def test_sweep_summary_lists_differences_and_headline_metrics(lr_sweep):
    exp, stdout = lr_sweep  # python train.py -m ... training.lr=1e-3,3e-4
    sweep = _sweep_dir(exp)
    jobs = _jobs(sweep)
    assert len(jobs) == 2
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["varying"] == ["training.lr"]  # overrides common to both jobs are not columns
    assert summary["common_overrides"]["exp_name"] == "tiny"
    assert "seed_groups" not in summary
    for row, job in zip(summary["jobs"], jobs):
        assert row["status"] == "finished"
        assert row["metrics"]["best val objective"] == pytest.approx(_tensorboard_best(job), abs=1e-6)
        for model in ("student", "teacher"):
            metrics = json.loads((job / "test" / model / "metrics.json").read_text())
            assert row["metrics"][f"{model} psds1"] == metrics["psds1"]
            assert row["metrics"][f"{model} psds2"] == metrics["psds2"]
            assert row["metrics"][f"{model} event_f1_macro@0.5"] == metrics["event_f1_macro@0.5"]
    assert [r["overrides"]["training.lr"] for r in summary["jobs"]] == ["0.001", "0.0003"]
    markdown = (sweep / "summary.md").read_text()
    assert "| job | training.lr | status | best val objective | student psds1 |" in markdown
    assert "data.root" not in markdown.split("## Jobs")[1]
    assert markdown.strip() in stdout  # printed at the end of the sweep


def test_submitit_local_seed_sweep_with_mean_and_std(tiny_dataset, tmp_path):
    """Jobs in their own processes (submitit's local executor) write into the launcher's sweep directory; the
    summary gives the mean ± std over the seeds."""
    exp = tmp_path / "exp"
    run_train(
        ["-m", "hydra/launcher=submitit_local", *tiny_overrides(tiny_dataset, exp, epochs=1), "test=false", "seed=1,2"],
        timeout=600,
    )
    sweep = _sweep_dir(exp)
    jobs = _jobs(sweep)
    logs = "\n".join(p.read_text()[-2000:] for p in (sweep / ".submitit").rglob("*_log.*"))
    assert len(jobs) == 2, logs
    for job in jobs:
        assert json.loads((job / "status.json").read_text())["status"] == "finished", logs
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert list((job / "checkpoints").glob("epoch*.ckpt"))
        assert (job / ".hydra" / "config.yaml").is_file()
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["varying"] == ["seed"]
    (group,) = summary["seed_groups"]
    assert group["seeds"] == ["1", "2"]
    values = [_tensorboard_best(j) for j in jobs]
    stat = group["metrics"]["best val objective"]
    assert stat["n"] == 2
    assert stat["mean"] == pytest.approx(statistics.fmean(values), abs=1e-6)
    assert stat["std"] == pytest.approx(statistics.stdev(values), abs=1e-6)
    assert "## Mean ± std over seeds" in (sweep / "summary.md").read_text()


def _fake_slurm(tmp_path: Path) -> dict[str, str]:
    """sbatch/srun stand-ins that keep the job script they are given and refuse to run it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):
        path = bin_dir / tool
        path.write_text(
            '#!/bin/sh\nfor last; do :; done\ncp "$last" "$FAKE_SBATCH_OUT"\necho "not a SLURM cluster" >&2\nexit 1\n'
        )
        path.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SBATCH_OUT": str(tmp_path / "job.sh")}


@pytest.mark.parametrize(
    ("launcher", "extra", "expected"),
    [
        ("submitit_slurm", ["trainer=gpu"], {"--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=1"}),
        (
            "submitit_slurm_multinode",
            ["trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4"],
            {"--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4"},
        ),
    ],
)
def test_slurm_job_script_follows_the_launcher_and_trainer(tiny_dataset, tmp_path, launcher, extra, expected):
    """The sbatch script the launcher configs produce (single node; several nodes matching trainer.num_nodes and
    one task per GPU), written into the sweep directory."""
    env = dict(os.environ, **_fake_slurm(tmp_path))
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "-m",
            f"hydra/launcher={launcher}",
            "hydra.launcher.partition=gpu",
            *tiny_overrides(tiny_dataset, tmp_path / "exp"),
            *extra,
            "seed=1,2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "not a SLURM cluster" in proc.stderr
    script = (tmp_path / "job.sh").read_text()
    options = {line.split()[1] for line in script.splitlines() if line.startswith("#SBATCH")}
    assert expected | {"--partition=gpu", "--array=0-1%2", "--time=1440"} <= options
    sweep = _sweep_dir(tmp_path / "exp")
    assert f"--output={sweep}/.submitit/" in script


def test_config_is_saved_by_the_first_slurm_task_only(tmp_path, monkeypatch):
    from sed.run.rundir import config_subdir

    monkeypatch.setenv("SLURM_PROCID", "1")
    assert config_subdir(str(tmp_path / "a")) is None
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert config_subdir(str(tmp_path / "a")) == ".hydra"


def _fake_job(sweep: Path, num: int, overrides: list[str], status: dict | None, psds1: float | None = None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if status is not None:
        (job / "status.json").write_text(json.dumps(status))
    if psds1 is not None:
        (job / "test" / "student").mkdir(parents=True)
        (job / "test" / "student" / "metrics.json").write_text(json.dumps({"psds1": psds1, "psds2": None}))


def test_summary_groups_seeds_per_setting_and_keeps_unfinished_jobs(tmp_path):
    from sed.sweep_summary import main, summarize

    sweep = tmp_path / "multirun"
    values = {("1e-3", "1"): 0.1, ("1e-3", "2"): 0.3, ("3e-4", "1"): 0.2, ("3e-4", "2"): 0.6}
    for num, ((lr, seed), v) in enumerate(values.items()):
        _fake_job(
            sweep,
            num,
            ["exp_name=x", f"training.lr={lr}", f"seed={seed}"],
            {"status": "finished", "best_val_objective": v},
            psds1=v / 2,
        )
    _fake_job(sweep, 4, ["exp_name=x", "training.lr=3e-4", "seed=3"], {"status": "failed", "error": "boom"})
    _fake_job(sweep, 5, ["exp_name=x", "training.lr=3e-4", "seed=4"], None)  # never started

    summary = summarize(sweep)
    assert summary["varying"] == ["training.lr", "seed"]
    assert [(r["job"], r["status"]) for r in summary["jobs"]] == [
        ("0", "finished"),
        ("1", "finished"),
        ("2", "finished"),
        ("3", "finished"),
        ("4", "failed"),
        ("5", "unknown"),
    ]
    assert summary["jobs"][4]["error"] == "boom"
    groups = {g["overrides"]["training.lr"]: g for g in summary["seed_groups"]}
    assert groups["1e-3"]["seeds"] == ["1", "2"]
    assert groups["3e-4"]["seeds"] == ["1", "2", "3", "4"]
    best = groups["3e-4"]["metrics"]["best val objective"]
    assert best == {"mean": pytest.approx(0.4), "std": pytest.approx(statistics.stdev([0.2, 0.6])), "n": 2}
    assert groups["1e-3"]["metrics"]["student psds1"]["mean"] == pytest.approx(0.1)
    assert "student psds2" not in groups["1e-3"]["metrics"]  # no value in any job: no column

    main([str(sweep)])  # the command that rebuilds a summary (here: a sweep that never ended)
    markdown = (sweep / "summary.md").read_text()
    assert "| 3e-4 | 1,2,3,4 | 2 | 0.4000 ± 0.2828 | 0.2000 ± 0.1414 |" in markdown
    assert json.loads((sweep / "summary.json").read_text()) == json.loads(json.dumps(summary))

    with pytest.raises(SystemExit):
        main([str(tmp_path)])  # not a sweep directory: refused, nothing written
    assert not (tmp_path / "summary.md").exists()


def test_requeued_submitit_job_resumes_from_its_last_checkpoint(tiny_dataset, tmp_path):
    """Preemption (submitit's USR2): the job is requeued and continues from last.ckpt in its run directory instead
    of training again from epoch 0 over its own checkpoints."""
    import signal
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp = tmp_path / "exp"
    sweep = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "train.py"),
            "-m",
            "hydra/launcher=submitit_local",
            *tiny_overrides(tiny_dataset, exp, epochs=5),
            "test=false",
            "seed=1",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(exp.glob("tiny/*/0/checkpoints/last.ckpt")):
            assert time.monotonic() < deadline and sweep.poll() is None, "no checkpoint written"
            time.sleep(0.5)
        (controller,) = [p.name for p in _sweep_dir(exp).joinpath(".submitit").iterdir() if p.name.isdigit()]
        job = subprocess.run(["pgrep", "-P", controller], capture_output=True, text=True).stdout.split()
        os.kill(int(job[0]), signal.SIGUSR2)  # what SLURM sends a preempted submitit job
        assert sweep.wait(timeout=300) == 0
    finally:
        if sweep.poll() is None:
            sweep.kill()
    run_dir = _sweep_dir(exp) / "0"
    log = (run_dir / "train.log").read_text()
    assert "this job is preempted" in log and "Requeued sweep job: resuming from" in log
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    assert (run_dir / ".hydra" / "resume_1" / "config.yaml").is_file()  # the first attempt's config kept
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("val/obj_metric")]
    assert len(steps) == len(set(steps)) == 5  # every epoch validated once: none redone from epoch 0


def test_summary_of_runs_on_several_datasets_shows_each_sets_headline(tmp_path):
    from sed.sweep_summary import summarize

    sweep = tmp_path / "multirun"
    for num, (lr, psds1, mpauc) in enumerate([("1e-3", 0.3, 0.6), ("3e-4", 0.2, 0.7)]):
        _fake_job(
            sweep,
            num,
            ["exp=multi_dataset_quick", f"training.lr={lr}"],
            {"status": "finished", "best_val_objective": psds1 + mpauc},
        )
        for model in ("student", "teacher"):
            (sweep / str(num) / "test" / "clips" / model).mkdir(parents=True)
            (sweep / str(num) / "test" / "clips" / model / "metrics.json").write_text(
                json.dumps({"psds1": psds1, "psds2": 0.5, "event_f1_macro@0.5": 0.4})
            )
            (sweep / str(num) / "test" / "recordings" / model).mkdir(parents=True)
            (sweep / str(num) / "test" / "recordings" / model / "metrics.json").write_text(
                json.dumps({"mpauc": mpauc, "mauc": 0.9})
            )
    summary = summarize(sweep)
    metrics = summary["jobs"][1]["metrics"]
    assert metrics["clips/student psds1"] == 0.2 and metrics["recordings/teacher mpauc"] == 0.7
    assert metrics["clips/teacher event_f1_macro@0.5"] == 0.4 and "recordings/student psds1" not in metrics
