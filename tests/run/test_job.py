"""``python train.py`` end to end on a tiny dataset: run, resume, test-only, scaler reuse, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_train, tiny_overrides


def _run_dirs(exp_dir: Path) -> list[Path]:
    return sorted(p for p in (exp_dir / "tiny").iterdir() if p.is_dir())


def _metrics(run_dir: Path, model: str) -> dict:
    return json.loads((run_dir / "test" / model / "metrics.json").read_text())


@pytest.fixture(scope="module")
def trained(trained_3_epochs) -> Path:
    """One uninterrupted 3-epoch run (the reference for the resume test): conftest's shared run."""
    return trained_3_epochs[0]


def test_run_writes_every_output(trained):
    from sed_scores_eval.base_modules.io import read_sed_scores
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert (trained / ".hydra" / "config.yaml").is_file()
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    for model in ("student", "teacher"):
        out = trained / "test" / model
        metrics = _metrics(trained, model)
        for key in ("psds1", "psds2", "weak_f1", "event_f1_macro@0.5", "segment_f1_macro@0.5"):
            assert key in metrics
        scores = read_sed_scores(str(out / "scores_postprocessed"))
        assert len(scores) == 8  # every test clip, with or without events
        assert (out / "events_th0.5.tsv").read_text().startswith("filename\tonset\toffset\tevent_label")
        assert (out / "psd_roc.png").stat().st_size > 0
    events = EventAccumulator(str(trained / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "train/loss_strong",
        "train/loss_weak",
        "train/loss_consistency_strong",
        "train/lr",
        "train/consistency_weight",
        "train/ema_factor",
        "val/obj_metric",
        "val/teacher/psds1",
        "val/student/event_f1_macro@0.5",
        "hp/teacher/psds1",
    ):
        assert tag in scalars, tag
    assert events.Tags()["images"], "no validation-clip figure"
    assert len(events.Scalars("val/obj_metric")) == 3


def test_test_only_rebuilds_model_from_checkpoint(trained, tiny_dataset, tmp_path):
    """train=false evaluates a checkpoint with its own architecture even when the YAML now says otherwise."""
    exp = tmp_path / "exp"
    changed = ["model.filters=[4,4,4]", "model.rnn_hidden=8", "features.n_mels=64"]
    ckpt = sorted((trained / "checkpoints").glob("epoch*.ckpt"))[-1]
    run_train([*tiny_overrides(tiny_dataset, exp), *changed, "train=false", f"ckpt_path={ckpt}"])
    (run_dir,) = _run_dirs(exp)
    assert run_dir != trained
    for model in ("student", "teacher"):  # the reference run tested its best checkpoint: the same file
        assert _metrics(run_dir, model)["psds1"] == pytest.approx(_metrics(trained, model)["psds1"], abs=1e-9)


def test_dataset_scaler_is_saved_reused_and_refused_on_mismatch(tiny_dataset, tmp_path):
    common = [*tiny_overrides(tiny_dataset, tmp_path / "exp", epochs=1), "scaler=dataset_standard", "test=false"]
    first = run_train(common)
    (run_dir,) = _run_dirs(tmp_path / "exp")
    scaler = run_dir / "scaler.pt"
    assert scaler.is_file()
    assert "Fitted the dataset scaler" in first.stdout + first.stderr

    reused = run_train([*common, f"scaler.path={scaler}"])
    log = reused.stdout + reused.stderr
    assert "Reusing the scaler" in log and "Fitted the dataset scaler" not in log

    refused = run_train([*common, f"scaler.path={scaler}", "features.f_max=6000"], check=False)
    assert refused.returncode != 0
    assert "ScalerMismatchError" in refused.stderr and "f_max" in refused.stderr


def test_misspelled_key_fails_at_start_with_its_name(tiny_dataset, tmp_path):
    proc = run_train([*tiny_overrides(tiny_dataset, tmp_path / "exp"), "training.lrr=0.1"], check=False)
    assert proc.returncode != 0
    assert "lrr" in proc.stderr
    assert not (tmp_path / "exp").exists() or not list((tmp_path / "exp").rglob("*.ckpt"))


def test_ddp_two_cpu_processes_score_the_whole_set(tiny_dataset, tmp_path):
    """DDP over gloo with two processes: each trains on its shard, but metrics are computed on the outputs
    of all processes, so they equal a single-process evaluation of the same checkpoint."""
    ddp = [
        *tiny_overrides(tiny_dataset, tmp_path / "ddp", epochs=1),
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.deterministic=true",
    ]
    run_train(ddp)
    (ddp_dir,) = _run_dirs(tmp_path / "ddp")
    (ckpt,) = (ddp_dir / "checkpoints").glob("epoch*.ckpt")
    run_train([*tiny_overrides(tiny_dataset, tmp_path / "single"), "train=false", f"ckpt_path={ckpt}"])
    (single_dir,) = _run_dirs(tmp_path / "single")
    for model in ("student", "teacher"):
        distributed, single = _metrics(ddp_dir, model), _metrics(single_dir, model)
        for key in ("psds1", "psds2", "weak_f1", "event_f1_macro@0.5", "segment_f1_macro@0.5"):
            assert distributed[key] == pytest.approx(single[key], abs=1e-9), (model, key)


def test_multirun_sweep_makes_one_directory_per_job(lr_sweep):
    exp, _ = lr_sweep  # python train.py -m ... training.lr=1e-3,3e-4
    (sweep,) = list((exp / "tiny").glob("multirun_*"))
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job in jobs:
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()


def test_bf16_mixed_precision_trains(tiny_dataset, tmp_path):
    """Mixed precision (bf16 autocast; on the CPU here, on the GPU with trainer=gpu) runs and logs finite losses."""
    import math

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_train([*tiny_overrides(tiny_dataset, tmp_path / "exp", epochs=1), "trainer.precision=bf16-mixed", "test=false"])
    (run_dir,) = _run_dirs(tmp_path / "exp")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert math.isfinite(events.Scalars("val/obj_metric")[-1].value)


def test_weak_clips_held_out_for_the_validation_objective(tiny_dataset, tmp_path):
    """data.weak_val_fraction (DCASE baseline: 0.1): the objective's weak F1 comes from held-out real weak clips,
    listed in the run directory; the synthetic validation's clip-level F1 is kept as weak_f1_synthetic."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sed.data.tsv import read_weak

    run_train([*tiny_overrides(tiny_dataset, tmp_path / "exp", epochs=1), "data.weak_val_fraction=0.25", "test=false"])
    (run_dir,) = _run_dirs(tmp_path / "exp")
    held = read_weak(run_dir / "weak_validation.tsv")
    assert len(held) == 2
    tags = set(EventAccumulator(str(run_dir / "tensorboard")).Reload().Tags()["scalars"])
    assert {"val/student/weak_f1", "val/student/weak_f1_synthetic", "val/obj_metric"} <= tags


def test_checkpoints_record_the_model_validation_prefers(trained):
    """At short budgets the EMA teacher can lag the student: each checkpoint names the model (student or teacher)
    with the higher validation objective at its epoch, and the module's forward uses it."""
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained / "tensorboard")).Reload()
    last = {name: events.Scalars(f"val/{name}/obj_metric")[-1].value for name in ("student", "teacher")}
    checkpoint = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["preferred_model"] == ("student" if last["student"] > last["teacher"] else "teacher")


def test_between_full_validations_only_the_objective_is_scored(tiny_dataset, tmp_path):
    """evaluation.full_metrics_every_n_epochs=2 over 3 epochs: every metric at epoch 0 and at the last, only the
    objective's terms (weak F1 + intersection F1) at epoch 1; the objective, and so the checkpoint choice, every
    epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_train(
        [
            *tiny_overrides(tiny_dataset, tmp_path / "exp", epochs=3),
            "evaluation.full_metrics_every_n_epochs=2",
            "test=false",
        ]
    )
    (run_dir,) = _run_dirs(tmp_path / "exp")
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    epochs = {tag: len(events.Scalars(tag)) for tag in events.Tags()["scalars"] if tag.startswith("val/")}
    for tag in (
        "val/obj_metric",
        "val/teacher/obj_metric",
        "val/student/weak_f1",
        "val/student/intersection_f1_macro@0.5",
    ):
        assert epochs[tag] == 3, tag
    for tag in ("val/student/psds1", "val/teacher/event_f1_macro@0.5", "val/student/segment_f1_macro@0.5"):
        assert epochs[tag] == 2, tag


def test_fp32_training_on_a_cpu_with_bf16_instructions_suggests_bf16(monkeypatch):
    """The hint appears for an fp32 run of a DESED-size network on a CPU with AVX512-BF16/AMX; never for
    bf16-mixed, a small network, or a CPU without those instructions."""
    import pytorch_lightning as pl
    import torch

    from sed.run.job import cpu_bf16_hint

    def trainer(precision: str) -> pl.Trainer:
        return pl.Trainer(
            accelerator="cpu",
            precision=precision,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    desed, small = 1_112_420, 50_300
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert "trainer.precision=bf16-mixed" in cpu_bf16_hint(trainer("32-true"), desed)
    assert cpu_bf16_hint(trainer("32-true"), small) is None
    assert cpu_bf16_hint(trainer("bf16-mixed"), desed) is None
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert cpu_bf16_hint(trainer("32-true"), desed) is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_bf16_hint(trainer("32-true"), desed) is not None
