"""Pluggable configuration groups: optimiser and scheduler factories, any model with the CRNN's output contract,
callbacks and loggers as named `_target_` entries, exp/debug/local groups, and a quiet console."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_train, tiny_overrides
from torch import nn

from sed.models.crnn import CRNNOutput
from sed.training.schedules import lr_factor

TINY_BATCHES = 4  # training batches per epoch of the tiny dataset with data.batch_sizes=[4,2,4]


def _run_dir(exp: Path, name: str = "tiny") -> Path:
    (run_dir,) = [p for p in (exp / name).iterdir() if p.is_dir()]
    return run_dir


def _events(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    import sed.run.config  # noqa: F401  (the schema)

    # Composing resolves the run-directory resolvers, which claim a directory: keep it out of the repository's exp/.
    scratch = f"paths.exp_dir={tempfile.gettempdir()}/sed-test-compose"
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[scratch, *overrides])


# ---------------------------------------------------------------------------------------------- optimiser, schedule
def test_default_optimizer_and_schedule_are_the_previous_hard_coded_ones_bit_for_bit():
    """conf/optimizer/adam + conf/scheduler/exp_warmup give the same parameters and rates, step after step, as
    the Adam + LambdaLR(lr_factor) that configure_optimizers hard-coded before."""
    from sed.run.instantiators import call_factory

    for schedule in ("constant", "cosine"):
        cfg = _compose(f"training.schedule={schedule}", "training.warmup_epochs=2", "training.weight_decay=1e-4")
        t = cfg.training
        total, per_epoch = 30, 5
        torch.manual_seed(0)
        old_params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(3))]
        new_params = [nn.Parameter(p.detach().clone()) for p in old_params]
        old_opt = torch.optim.Adam(old_params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        warmup = t.warmup_epochs * per_epoch
        old_sched = torch.optim.lr_scheduler.LambdaLR(
            old_opt,
            lambda step: lr_factor(step, warmup, total, t.schedule, t.min_lr / t.lr),  # noqa: B023  (this iteration)
        )
        new_opt = call_factory("optimizer", cfg.optimizer, new_params)
        spec = {k: v for k, v in cfg.scheduler.items() if k not in ("interval", "frequency", "monitor")}
        new_sched = call_factory("scheduler", spec, new_opt, total_steps=total, steps_per_epoch=per_epoch)
        assert type(new_opt) is torch.optim.Adam and cfg.scheduler.interval == "step"
        for step in range(total):
            assert new_opt.param_groups[0]["lr"] == old_opt.param_groups[0]["lr"], (schedule, step)
            grads = [torch.randn_like(p) for p in old_params]
            for opt, params in ((old_opt, old_params), (new_opt, new_params)):
                for p, g in zip(params, grads):
                    p.grad = g.clone()
                opt.step()
            old_sched.step()
            new_sched.step()
            for a, b in zip(old_params, new_params):
                assert torch.equal(a, b), (schedule, step)


def test_empty_groups_of_a_config_built_in_code_mean_the_shipped_defaults():
    """Config() (benchmarks, tests, checkpoints saved before these groups) leaves model/optimizer/scheduler empty:
    they mean conf/config.yaml's defaults, so both ways give the same nodes."""
    from omegaconf import OmegaConf

    from sed.run.config import Config, default_node

    composed = _compose("model=crnn")
    in_code = OmegaConf.structured(Config)
    in_code.training = composed.training
    for group in ("model", "optimizer", "scheduler"):
        assert default_node(group, in_code) == default_node(group, composed), group
    assert default_node("scheduler", _compose("scheduler=none")) is None


def test_lr_zero_freezes_the_student():
    from sed.run.instantiators import call_factory

    cfg = _compose("training.lr=0")
    p = nn.Parameter(torch.ones(3))
    opt = call_factory("optimizer", cfg.optimizer, [p])
    spec = {k: v for k, v in cfg.scheduler.items() if k not in ("interval", "frequency", "monitor")}
    sched = call_factory("scheduler", spec, opt, total_steps=10, steps_per_epoch=2)
    for _ in range(5):
        p.grad = torch.ones(3)
        opt.step()
        sched.step()
    assert torch.equal(p.detach(), torch.ones(3)) and opt.param_groups[0]["lr"] == 0.0


@pytest.fixture(scope="module")
def cosine_run(tiny_dataset, tmp_path_factory) -> Path:
    """3 epochs with a cosine schedule, PSDS2 in the checkpoint objective, a log line per step."""
    exp = tmp_path_factory.mktemp("exp_cosine")
    proc = run_train(
        [
            *tiny_overrides(tiny_dataset, exp, epochs=3),
            "training.schedule=cosine",
            "training.min_lr=1e-4",
            "evaluation.obj_metric=weak_f1+psds2",
        ]
    )
    run_dir = _run_dir(exp)
    (run_dir / "console.txt").write_text(proc.stdout + proc.stderr)
    return run_dir


def test_learning_rate_per_step_follows_the_schedule(cosine_run):
    """train/lr of every step of a real run equals training.lr * lr_factor(step) (warm-up then cosine)."""
    lr, min_lr, warmup, total = 3e-3, 1e-4, 1 * TINY_BATCHES, 3 * TINY_BATCHES
    logged = {e.step: e.value for e in _events(cosine_run / "tensorboard").Scalars("train/lr")}
    assert sorted(logged) == list(range(total))
    for step, value in logged.items():
        expected = lr * lr_factor(step, warmup, total, "cosine", min_lr / lr)
        assert value == pytest.approx(expected, rel=1e-6, abs=1e-12), step
    assert logged[total - 1] < logged[warmup]  # decaying after the warm-up


def test_tensorboard_gets_test_details_config_and_validation_psds2(cosine_run):
    events = _events(cosine_run / "tensorboard")
    scalars = set(events.Tags()["scalars"])
    assert "val/student/psds2" in scalars and "val/teacher/psds2" in scalars  # computed: it is in the objective
    metrics = json.loads((cosine_run / "test" / "student" / "metrics.json").read_text())
    per_class = [k for k, v in metrics.items() if "/" in k and v is not None]  # NaN is null
    assert any(k.startswith("psds1/") for k in per_class) and any(k.startswith("event_f1@0.5/") for k in per_class)
    for key in per_class:
        assert f"test/student/per_class/{key}" in scalars, key
        assert f"test/teacher/per_class/{key}" in scalars, key
    images = set(events.Tags()["images"])
    assert {"test/student/psd_roc", "test/teacher/psd_roc"} <= images
    assert "lr-Adam" in scalars  # callbacks.learning_rate_monitor
    text = events.Tags()["tensors"]
    assert any(tag.startswith("config") for tag in text), text
    config = events.Tensors([t for t in text if t.startswith("config")][0])[0].tensor_proto.string_val[0].decode()
    assert "warmup_lambda_lr" in config and "schedule: cosine" in config


def test_console_is_quiet(cosine_run):
    out = (cosine_run / "console.txt").read_text()
    assert "💡" not in out and "LeafSpec" not in out
    assert "`weights_only` was not set" not in out
    assert "multiple `ModelCheckpoint` callbacks" not in out
    # once per set (validation, test), not per metric, model and epoch
    assert out.count("no ground-truth event for class") <= 2


def type_is(group: dict, name: str) -> bool:
    return group["_config"]["_target_"] == f"torch.optim.{name}"


@pytest.mark.parametrize(
    "overrides, check",
    [
        (["optimizer=adamw"], lambda g: type_is(g, "AdamW") and g["weight_decay"] == pytest.approx(0.01)),
        (
            ["optimizer._target_=torch.optim.SGD", "~optimizer.betas", "+optimizer.momentum=0.9"],
            lambda g: "betas" not in g and g["momentum"] == 0.9,
        ),
        (["scheduler=none"], lambda g: "initial_lr" not in g and g["lr"] == pytest.approx(3e-3)),
    ],
    ids=["adamw", "user_sgd", "no_scheduler"],
)
def test_other_optimizers_and_schedulers_train(tiny_dataset, tmp_path, overrides, check):
    run_train([*tiny_overrides(tiny_dataset, tmp_path, epochs=1), "test=false", *overrides])
    state = torch.load(_run_dir(tmp_path) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (group,) = state["optimizer_states"][0]["param_groups"]
    group["_config"] = state["hyper_parameters"]["config"]["optimizer"]
    assert check(group), group
    assert bool(state["lr_schedulers"]) == ("scheduler=none" not in overrides)


def test_optimizer_refusing_a_key_fails_naming_the_group(tiny_dataset, tmp_path):
    proc = run_train(
        [*tiny_overrides(tiny_dataset, tmp_path, epochs=1), "optimizer._target_=torch.optim.SGD"], check=False
    )
    assert proc.returncode != 0
    assert "optimizer._target_=torch.optim.SGD" in proc.stderr and "betas" in proc.stderr
    assert "~optimizer.KEY" in proc.stderr


# ---------------------------------------------------------------------------------------------- any model
class TinySED(nn.Module):
    """A model of a user's own: one conv layer over [B, F, T], time pooled by 4, sigmoid heads."""

    def __init__(self, n_classes: int, n_features: int, hidden: int = 8) -> None:
        super().__init__()
        self.time_pooling = 4
        self.conv = nn.Conv1d(n_features, hidden, kernel_size=3, padding=1)
        self.pool = nn.AvgPool1d(self.time_pooling)
        self.head = nn.Conv1d(hidden, n_classes, kernel_size=1)

    def forward(self, features: torch.Tensor) -> CRNNOutput:
        strong_logits = self.head(self.pool(torch.relu(self.conv(features))))
        weak_logits = torch.logsumexp(strong_logits, dim=-1) - math.log(strong_logits.shape[-1])
        return CRNNOutput(strong_logits, weak_logits, torch.sigmoid(strong_logits), torch.sigmoid(weak_logits))


# train.py imports TinySED from this file, which imports the suite's conftest
HERE_AND_CONFTEST = os.pathsep.join(str(Path(__file__).parents[i]) for i in (0, 1))


def test_any_module_with_the_crnn_output_contract_trains_and_evaluates(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", HERE_AND_CONFTEST)
    base = [o for o in tiny_overrides(tiny_dataset, tmp_path / "exp", epochs=1) if not o.startswith("model.")]
    run_train([*base, "~model", "+model._target_=test_config_groups.TinySED", "+model.hidden=6"])
    run_dir = _run_dir(tmp_path / "exp")
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["config"]["model"] == {"_target_": "test_config_groups.TinySED", "hidden": 6}
    assert state["state_dict"]["student.conv.weight"].shape[0] == 6
    assert (run_dir / "test" / "teacher" / "metrics.json").is_file()
    # evaluation rebuilds it from the checkpoint
    run_train([*base, "train=false", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"])


def test_crnn_keys_are_still_checked_and_foreign_keys_get_a_hint(tiny_dataset, tmp_path, monkeypatch):
    base = tiny_overrides(tiny_dataset, tmp_path / "exp", epochs=1)
    proc = run_train([*base, "+model.dropot=0.1"], check=False)
    assert proc.returncode != 0 and "model.dropot" in proc.stderr
    monkeypatch.setenv("PYTHONPATH", HERE_AND_CONFTEST)
    proc = run_train([*base, "model._target_=test_config_groups.TinySED"], check=False)
    assert proc.returncode != 0 and "~model" in proc.stderr


# ---------------------------------------------------------------------------------------------- callbacks, loggers
def test_every_shipped_logger_writes_its_files(tiny_dataset, tmp_path):
    """logger=many_loggers: TensorBoard, CSV, MLflow (file store in the run directory) and W&B (offline)."""
    proc = run_train(
        [*tiny_overrides(tiny_dataset, tmp_path, epochs=2), "logger=many_loggers", "trainer.log_every_n_steps=50"]
    )
    run_dir = _run_dir(tmp_path)
    assert "smaller than the logging interval" not in proc.stdout + proc.stderr
    # TensorBoard: per-step losses at the adapted interval (one point per 4-batch epoch), figures
    events = _events(run_dir / "tensorboard")
    assert [e.step for e in events.Scalars("train/loss")] == [3, 7]
    assert events.Tags()["images"]
    # CSV
    (metrics_csv,) = (run_dir / "csv").glob("version_*/metrics.csv")
    header = metrics_csv.read_text().splitlines()[0].split(",")
    assert "val/obj_metric" in header and "test/student/psds1" in header
    # MLflow: a local file store under the run directory
    (run,) = [p for p in (run_dir / "mlruns").glob("*/*") if (p / "meta.yaml").is_file()]
    assert (run / "metrics" / "val" / "obj_metric").is_file()
    assert (run / "metrics" / "test" / "student" / "psds1").is_file()
    assert (run / "params").is_dir()
    # W&B, offline
    (wandb_run,) = (run_dir / "wandb").glob("offline-run-*")
    assert list(wandb_run.glob("*.wandb"))


def test_csv_logger_alone_and_no_optional_callbacks(tiny_dataset, tmp_path):
    """The TensorBoard-only logging (figures, text, hparams) is skipped without TensorBoard; without optional
    callbacks last.ckpt is still written (and no best checkpoint)."""
    run_train([*tiny_overrides(tiny_dataset, tmp_path, epochs=1), "logger=csv", "callbacks=none"])
    run_dir = _run_dir(tmp_path)
    assert not (run_dir / "tensorboard").exists()
    (metrics_csv,) = (run_dir / "csv").glob("version_*/metrics.csv")
    assert "test/teacher/psds1" in metrics_csv.read_text().splitlines()[0]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not list((run_dir / "checkpoints").glob("epoch*.ckpt"))


def test_a_logger_target_next_to_named_loggers_is_refused(tiny_dataset, tmp_path):
    proc = run_train(
        [*tiny_overrides(tiny_dataset, tmp_path, epochs=1), "+logger._target_=pytorch_lightning.loggers.CSVLogger"],
        check=False,
    )
    assert proc.returncode != 0 and "logger=csv" in proc.stderr


def test_early_stopping_callback(tiny_dataset, tmp_path):
    """callbacks=early_stopping stops on a metric that stops improving; last.ckpt follows the last epoch."""
    run_train(
        [
            *tiny_overrides(tiny_dataset, tmp_path, epochs=6),
            "test=false",
            "callbacks=early_stopping",
            "callbacks.early_stopping.patience=1",
            "callbacks.early_stopping.monitor=train/consistency_weight",
        ]
    )
    run_dir = _run_dir(tmp_path)
    # the weight ramps up during epoch 0, is at its maximum from epoch 1 on: no improvement in epoch 2
    assert len(_events(run_dir / "tensorboard").Scalars("val/obj_metric")) == 3
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 or state["global_step"] == 3 * TINY_BATCHES


# ---------------------------------------------------------------------------------------------- exp, debug, local
def test_every_experiment_is_global_and_selected_with_or_without_plus(tmp_path):
    for path in sorted((REPO / "conf" / "exp").glob("*.yaml")):
        assert path.read_text().startswith("# @package _global_\n"), path
    scratch = f"paths.exp_dir={tmp_path}"  # resolving the config claims a run directory: not in the repository
    plain = run_train(["exp=desed_crnn", scratch, "--cfg", "job"]).stdout
    plus = run_train(["+exp=desed_crnn", scratch, "--cfg", "job"]).stdout
    assert plain == plus
    assert "exp_name: desed_crnn" in plain and "n_mels: 128" in plain
    assert "exp_name: quickstart" in run_train([scratch, "--cfg", "job"]).stdout


def test_local_config_is_optional_and_loaded_after_the_experiment(tmp_path):
    assert "/conf/local/*.yaml" in (REPO / ".gitignore").read_text()
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "default.yaml").write_text("# @package _global_\ndata:\n  num_workers: 7\n")
    out = run_train(
        ["exp=desed_crnn", f"hydra.searchpath=[file://{tmp_path}]", f"paths.exp_dir={tmp_path}", "--cfg", "job"]
    ).stdout
    assert "num_workers: 7" in out and "exp_name: desed_crnn" in out


def test_debug_runs_go_to_their_own_directory(tiny_dataset, tested_run, tmp_path):
    """debug=limit trains a few batches in <exp_dir>/debug/; debug=fast_dev_run from the checkpoint of a real,
    resumable run (a copy of conftest's one-epoch tested_run) leaves that run's directory untouched."""
    import shutil

    exp = tmp_path / "exp"
    run_train([*tiny_overrides(tiny_dataset, exp, epochs=2), "debug=limit", "trainer.limit_train_batches=2"])
    assert not (exp / "tiny").exists()
    limited = _run_dir(exp / "debug")
    assert len(_events(limited / "tensorboard").Scalars("train/loss")) == 2 * 2  # 2 epochs of 2 batches

    real = exp / "tiny" / tested_run[0].name
    shutil.copytree(tested_run[0], real, ignore=shutil.ignore_patterns(".lock"))  # a real train.py run
    (real / "status.json").write_text('{"status": "stopped"}')  # as after a SIGTERM: a resume would continue it
    before = {p: p.read_bytes() for p in real.rglob("*") if p.is_file() and p.name != ".lock"}
    run_train(
        [*tiny_overrides(tiny_dataset, exp), "debug=fast_dev_run", f"ckpt_path={real / 'checkpoints' / 'last.ckpt'}"]
    )
    assert {p: p.read_bytes() for p in real.rglob("*") if p.is_file() and p.name != ".lock"} == before
    assert len([p for p in (exp / "debug" / "tiny").iterdir() if p.is_dir()]) == 2


# ---------------------------------------------------------------------------------------------- console
def test_log_lines_do_not_break_the_progress_bar():
    from tqdm import tqdm

    from sed.run.console import TqdmHandler

    def console(handler_cls) -> list[str]:
        stream = io.StringIO()
        logger = logging.getLogger(f"test_console_{handler_cls.__name__}")
        logger.propagate = False
        handler = handler_cls(stream)
        logger.addHandler(handler)
        try:
            with tqdm(total=10, file=stream, ascii=True, mininterval=0) as bar:
                bar.update(3)
                logger.warning("a log line")
                bar.update(3)
        finally:
            logger.removeHandler(handler)
        return re.split(r"[\r\n]", stream.getvalue())

    assert "a log line" in console(TqdmHandler)  # a line of its own
    assert "a log line" not in console(logging.StreamHandler)  # glued to the bar: the reference shows the problem
