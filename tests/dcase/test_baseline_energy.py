"""The baseline reference energy (sed.dcase.baseline_energy): the recipe it runs, the file it writes, and
sed.submit putting it in the metadata and the package."""

from __future__ import annotations

import contextlib
import io
import json
import zipfile

import pytest
import yaml

from sed.dcase.baseline_energy import REFERENCE_FILE, main, summarise, train_command
from sed.dcase.submit import build_package


def test_the_command_runs_the_faithful_baseline_recipe_for_10_epochs(tmp_path):
    command = train_command(tmp_path, ["data.root=/data/desed", "trainer.devices=[1]"])
    assert command[1].endswith("train.py")
    assert command[2:] == [
        "exp=desed_crnn",
        "trainer.max_epochs=10",
        "test=true",
        f"paths.exp_dir={tmp_path}",
        "exp_name=baseline_energy",
        "data.root=/data/desed",
        "trainer.devices=[1]",
    ]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["-o", str(tmp_path), "--dry-run", "data.root=/data/desed"]) == 0
    assert "exp=desed_crnn trainer.max_epochs=10 test=true" in err.getvalue()
    assert not (tmp_path / REFERENCE_FILE).exists()


def test_only_a_run_of_the_recipe_is_the_reference(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["exp=desed_crnn", "trainer.max_epochs=10"]))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 10}}))
    with pytest.raises(ValueError, match="energy.json: no training and test energy"):
        summarise(run, tmp_path / "out")  # the recipe, but nothing measured
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": 200}}))
    with pytest.raises(ValueError, match="trainer.max_epochs=200, the reference trains 10 epochs"):
        summarise(run, tmp_path / "out")


def test_the_reference_goes_into_the_package(tested_run, tmp_path):
    run_dir = tested_run[0]
    with pytest.raises(ValueError, match="not made with exp=desed_crnn"):
        summarise(run_dir, tmp_path / "ref")
    path = summarise(run_dir, tmp_path / "ref", force=True)  # a tiny run stands in for the 10-epoch one
    record = json.loads(path.read_text())
    energy = json.loads((run_dir / "energy.json").read_text())
    assert record["faithful"] is False and "exp=desed_crnn" in record["not_faithful_because"]
    assert record["training_kwh"] == energy["fit"]["energy_kwh"]
    assert record["devtest_inference_kwh"] == energy["test"]["energy_kwh"]

    out = tmp_path / "sub"
    label = "Doe_UNI_task4_1"
    build_package([(label, [run_dir])], out, dev_test=True, baseline_energy=tmp_path / "ref")
    with zipfile.ZipFile(out / "Doe_UNI_task4.zip") as z:
        meta = yaml.safe_load(z.read(f"task4/{label}/{label}.meta.yaml"))
        assert f"task4/{label}/{label}.baseline_codecarbon/emissions.csv" in z.namelist()
    consumption = meta["system"]["complexity"]["energy_consumption"]
    assert consumption["baseline_training"] == pytest.approx(record["training_kwh"], rel=1e-5)
    assert consumption["baseline_devtest_inference"] == pytest.approx(record["devtest_inference_kwh"], rel=1e-5)
