"""The DCASE baseline's reference energy on this machine, which the organisers use to normalise a system's energy.

DCASE 2024 Task 4 (DESED_task ``recipes/dcase2024_task4_baseline/README.md``) asks, besides a system's own energy,
for the energy of **training the baseline for 10 epochs and its dev-test inference** on the same hardware, with
codecarbon; 2023 asked for the baseline's dev-test (and evaluation) inference. This project's faithful baseline
recipe is ``exp=desed_crnn`` (the 2023 baseline CRNN and mean teacher on DESED, ``conf/exp/desed_crnn.yaml``)::

    python -m sed.dcase.baseline_energy -o baseline_energy/ data.root=/data/desed_prepared

runs ``python train.py exp=desed_crnn trainer.max_epochs=10 test=true`` (energy measured as in every run, on the GPU
it uses) into ``baseline_energy/`` and writes ``baseline_energy/baseline_energy.json``: kWh of the 10 training
epochs and of the dev-test inference, the hardware, codecarbon's CSV. ``python -m sed.submit ...
--baseline-energy baseline_energy/`` puts it in the metadata and the CSV in the package. Extra arguments are
train.py overrides (the data, ``trainer.devices=[1]`` for the GPU your systems used); ``--from-run RUN_DIR``
summarises a run made so already.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

from sed.utils.io import atomic_write_text

log = logging.getLogger(__name__)

REFERENCE_FILE = "baseline_energy.json"
RECIPE = ("exp=desed_crnn", "trainer.max_epochs=10", "test=true")
EXP_NAME = "baseline_energy"


def train_command(out: Path, overrides: Sequence[str] = ()) -> list[str]:
    """The ``train.py`` command of the reference: the recipe, its run folder under ``out``, then ``overrides``."""
    train_py = Path(__file__).resolve().parents[2] / "train.py"
    if not train_py.is_file():
        raise FileNotFoundError(f"{train_py}: not found; run from a checkout of the project (train.py beside sed/)")
    return [sys.executable, str(train_py), *RECIPE, f"paths.exp_dir={out}", f"exp_name={EXP_NAME}", *overrides]


def _faithful(run_dir: Path) -> Optional[str]:
    """Why the run is not the baseline recipe (``None`` when it is): ``exp=desed_crnn`` and 10 epochs."""
    import yaml

    overrides_path = run_dir / ".hydra" / "overrides.yaml"
    config_path = run_dir / ".hydra" / "config.yaml"
    if not overrides_path.is_file() or not config_path.is_file():
        return f"{run_dir}: no .hydra/overrides.yaml and config.yaml; is it a run directory written by train.py?"
    overrides = yaml.safe_load(overrides_path.read_text()) or []
    config = yaml.safe_load(config_path.read_text()) or {}
    if "exp=desed_crnn" not in overrides and "+exp=desed_crnn" not in overrides:
        return f"{run_dir}: not made with exp=desed_crnn (overrides: {overrides})"
    epochs = (config.get("trainer") or {}).get("max_epochs")
    if epochs != 10:
        return f"{run_dir}: trainer.max_epochs={epochs}, the reference trains 10 epochs"
    return None


def summarise(run_dir: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write ``out/baseline_energy.json`` from the run ``run_dir`` (its ``energy.json`` and codecarbon CSV).
    A run that is not the recipe is refused unless ``force`` (then the file says so)."""
    from sed.dcase.energy import read_energy

    run_dir, out = Path(run_dir), Path(out)
    problem = _faithful(run_dir)
    if problem and not force:
        raise ValueError(f"{problem} (--force records it anyway, marked)")
    energy = read_energy(run_dir)
    fit, test = energy.get("fit"), energy.get("test")
    if not fit or not test:
        raise ValueError(
            f"{run_dir}/energy.json: no training and test energy (is codecarbon installed? energy.enabled?)"
        )
    record: dict[str, Any] = {
        "recipe": " ".join(RECIPE),
        "faithful": problem is None,
        "not_faithful_because": problem,
        "run_dir": str(run_dir.resolve()),
        "training_kwh": fit["energy_kwh"],
        "training_duration_s": fit["duration_s"],
        "devtest_inference_kwh": test["energy_kwh"],
        "devtest_inference_duration_s": test["duration_s"],
        "evaluation_inference_kwh": None,
        "measured": bool(fit.get("measured")) and bool(test.get("measured")),
        "method": test.get("method"),
        "hardware": test.get("hardware"),
        "gpu_ids": test.get("gpu_ids"),
        "codecarbon_csv": [str(p.resolve()) for p in sorted((run_dir / "codecarbon").glob("*.csv"))],
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / REFERENCE_FILE
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def _newest_run(out: Path) -> Path:
    runs = sorted((p for p in (out / EXP_NAME).iterdir() if (p / ".hydra").is_dir()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"{out / EXP_NAME}: train.py left no run directory")
    return runs[-1]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sed.dcase.baseline_energy", description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--output", required=True, help="folder of the reference run and baseline_energy.json")
    parser.add_argument("--from-run", default=None, help="summarise this run instead of training one")
    parser.add_argument("--force", action="store_true", help="with --from-run: accept a run that is not the recipe")
    parser.add_argument("--dry-run", action="store_true", help="print the train.py command and exit")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. data.root=/data/desed_prepared")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.output)
    try:
        if args.from_run is None:
            command = train_command(out.resolve(), args.overrides)
            print(" ".join(command), file=sys.stderr)
            if args.dry_run:
                return 0
            code = subprocess.call(command)
            if code != 0:
                print(f"error: train.py exited with {code}", file=sys.stderr)
                return 2
            run_dir = _newest_run(out.resolve())
        else:
            run_dir = Path(args.from_run)
        path = summarise(run_dir, out, force=args.force)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    record = json.loads(path.read_text())
    print(
        f"Baseline reference: training {record['training_kwh']:.4g} kWh, dev-test inference "
        f"{record['devtest_inference_kwh']:.4g} kWh -> {path} (give it to sed.submit with --baseline-energy {out})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
