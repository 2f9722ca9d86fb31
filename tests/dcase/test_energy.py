"""Energy of training and testing (sed.dcase.energy): what a run records, with codecarbon, without it, and when cut short."""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch.utils.data import DataLoader

from sed.dcase import energy
from sed.dcase.energy import EnergyTracker, read_energy


class _Tiny(pl.LightningModule):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.fail = fail

    def training_step(self, batch, batch_idx):
        if self.fail:
            raise RuntimeError("broken step")
        return self.layer(batch).pow(2).mean()

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self.layer(batch).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(torch.randn(8, 4), batch_size=4)

    def test_dataloader(self):
        return DataLoader(torch.randn(8, 4), batch_size=4)


def _trainer(root: Path, tracker: EnergyTracker, logger=False) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=str(root),
        max_epochs=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[tracker],
    )


def _consistent(stage: dict) -> None:
    assert stage["energy_kwh"] > 0 and stage["duration_s"] > 0
    assert stage["energy_kwh"] == pytest.approx(
        stage["cpu_energy_kwh"] + stage["gpu_energy_kwh"] + stage["ram_energy_kwh"]
    )
    assert "cpu" in stage["method"]
    # "measured" only when every device's power was read from counters, never for an estimate
    assert stage["measured"] == all(v.startswith("measured") for v in stage["method"].values())


def test_fit_and_test_are_recorded_and_resumed_training_adds_up(tmp_path):
    first = EnergyTracker(measure_power_secs=1)
    _trainer(tmp_path, first, CSVLogger(str(tmp_path), name="csv", version="")).fit(_Tiny())
    fit = read_energy(tmp_path)["fit"]
    _consistent(fit)
    assert len(fit["segments"]) == 1 and not fit["interrupted"]
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        logged = [row for row in csv.DictReader(handle) if row.get("energy/fit_kwh")]
    assert float(logged[0]["energy/fit_kwh"]) == pytest.approx(fit["energy_kwh"])

    # Training continued in the same run directory: its energy is added to the first part's.
    second = EnergyTracker(measure_power_secs=1)
    trainer = _trainer(tmp_path, second)
    trainer.fit(_Tiny())
    trainer.test(_Tiny())
    record = read_energy(tmp_path)
    assert len(record["fit"]["segments"]) == 2
    assert record["fit"]["energy_kwh"] == pytest.approx(sum(s["energy_kwh"] for s in record["fit"]["segments"]))
    assert record["fit"]["energy_kwh"] > fit["energy_kwh"]
    _consistent(record["test"])
    (line,) = second.summary_lines()
    assert line.startswith("Energy: fit ") and " test " in line and "energy.json" in line
    # codecarbon's own record stays inside the run directory: one row per measured stage
    with open(tmp_path / "codecarbon" / "emissions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["project_name"] for r in rows] == ["fit", "fit", "test"]
    assert {r["country_iso_code"] for r in rows} == {"FRA"}


def test_a_failed_fit_is_recorded_as_interrupted(tmp_path):
    with pytest.raises(RuntimeError, match="broken step"):
        _trainer(tmp_path, EnergyTracker(country_iso_code="usa")).fit(_Tiny(fail=True))
    fit = read_energy(tmp_path)["fit"]
    assert fit["interrupted"] and fit["country_iso_code"] == "USA"


def test_without_codecarbon_the_run_goes_on_and_says_so_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "codecarbon", None)  # import fails as if not installed
    monkeypatch.setattr(energy, "_warned", set())
    caplog.set_level(logging.WARNING, logger="sed.dcase.energy")
    trackers = [EnergyTracker(), EnergyTracker()]
    for tracker in trackers:
        _trainer(tmp_path, tracker).fit(_Tiny())
    assert sum("codecarbon is not installed" in r.getMessage() for r in caplog.records) == 1
    assert not (tmp_path / "energy.json").exists()
    assert trackers[1].summary_lines() == ["Energy: not measured (see the warning above)"]


def test_disabled_measures_nothing(tmp_path):
    tracker = EnergyTracker(enabled=False)
    _trainer(tmp_path, tracker).fit(_Tiny())
    assert not (tmp_path / "energy.json").exists() and not (tmp_path / "codecarbon").exists()
    assert tracker.summary_lines() == []


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"country_iso_code": "France"}, "country_iso_code"),
        ({"tracking_mode": "node"}, "tracking_mode"),
        ({"measure_power_secs": 0}, "measure_power_secs"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs, key):
    with pytest.raises(ValueError, match=f"energy.{key}"):
        EnergyTracker(**kwargs)


def test_train_py_reports_energy_and_complexity(tested_run):
    """A real run (conftest's tested_run: trainer.enable_model_summary=true energy.country_iso_code=DEU):
    energy.json, the blocks in metrics.json, TensorBoard scalars, the run summary, and a model summary that counts
    FLOPs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, out = tested_run
    record = read_energy(run_dir)
    _consistent(record["fit"])
    _consistent(record["test"])
    assert record["test"]["country_iso_code"] == "DEU"
    for model in ("student", "teacher"):
        metrics = json.loads((run_dir / "test" / model / "metrics.json").read_text())
        assert metrics["energy"]["training_kwh"] == pytest.approx(record["fit"]["energy_kwh"])
        assert metrics["energy"]["test_kwh"] == pytest.approx(record["test"]["energy_kwh"])
        assert (run_dir / "test" / model / metrics["energy"]["details"]).resolve() == (
            run_dir / "energy.json"
        ).resolve()
        complexity = metrics["complexity"]
        assert (
            complexity["macs"]
            == complexity["macs_frontend"] + complexity["macs_scaler"] + complexity["macs_network"]
            > 0
        )
        assert Path(complexity["checkpoint"]).parent == (run_dir / "checkpoints").resolve()
        assert "psds1" in metrics  # the test metrics are still there
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"energy/fit_kwh", "energy/test_kwh", "complexity/macs", "complexity/parameters"} <= scalars
    assert "Energy: fit " in out and "Model: " in out and "MACs per 2-s clip" in out
    assert "Total FLOPs" in out and "Total FLOPs: 0 " not in out
    assert "[codecarbon" not in out  # codecarbon's own console logging is quiet


def test_only_the_gpus_the_run_uses_are_measured(monkeypatch, tmp_path):
    """codecarbon counts every GPU of the machine unless given gpu_ids (DCASE 2024 asks for the device used)."""
    from types import SimpleNamespace

    import codecarbon

    from sed.dcase.energy import gpu_ids, start_tracker

    assert gpu_ids("cpu") is None and gpu_ids(torch.device("cuda", 1)) == [1]
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 2)), device_ids=[2, 3])
    assert EnergyTracker._gpu_ids(trainer) == [2, 3]  # DDP on one node: its processes' GPUs
    trainer.strategy.root_device = torch.device("cpu")
    assert EnergyTracker._gpu_ids(trainer) is None

    seen = []

    class Recording(codecarbon.OfflineEmissionsTracker):
        def __init__(self, **kwargs):
            seen.append(kwargs)
            super().__init__(**{k: v for k, v in kwargs.items() if k != "gpu_ids"})

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", Recording)
    for ids in ([1], None):
        start_tracker(tmp_path, "eval", ids, measure_power_secs=1).stop()
    assert seen[0]["gpu_ids"] == [1] and "gpu_ids" not in seen[1]
