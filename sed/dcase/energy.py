"""Energy used by training and by testing, measured with codecarbon, as DCASE Task 4 asks submissions to report.

:class:`EnergyTracker` is a Lightning callback. It runs one ``codecarbon.OfflineEmissionsTracker`` (no network; the
carbon intensity comes from ``country_iso_code``) per stage — ``fit`` (training, validation and scaler fitting
included) and ``test`` — on the main process, and writes:

* ``<run_dir>/energy.json``: per stage the energy (kWh, total and CPU/GPU/RAM), duration, CO2-equivalent, how the
  power was obtained (``method``: measured from power counters, or estimated) and the hardware. A run resumed in
  the same directory adds its training segments to the earlier ones (``segments``); a stage cut short by a
  signal or an error is recorded with ``interrupted: true``.
* ``<run_dir>/codecarbon/emissions.csv``: codecarbon's own record (one row per stage).
* an ``energy`` block in every ``test/<model>/metrics.json``, TensorBoard scalars ``energy/<stage>_kwh``, and the
  lines of the run summary (:meth:`EnergyTracker.summary_lines`).

Without codecarbon, or if it fails, the run goes on and says so once. Where codecarbon cannot read power counters
(RAPL, NVML, powermetrics) it estimates CPU power from the TDP and the CPU load and RAM power from its size;
``method`` says which was used, so an estimate is never passed off as a measurement.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl

from sed.utils.io import atomic_write_text

log = logging.getLogger(__name__)

ENERGY_FILE = "energy.json"
CODECARBON_DIR = "codecarbon"
STAGES = ("fit", "test")
_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
    if key not in _warned:
        _warned.add(key)
        log.log(level, message, *args)


def _describe_hardware(tracker: Any) -> tuple[dict[str, str], bool]:
    """How codecarbon obtains the power of each device (``{"cpu": ..., "gpu": ..., "ram": ...}``) and whether all
    of it is measured. Reads codecarbon's hardware objects; an unknown kind is reported as such."""
    methods: dict[str, str] = {}
    measured = True
    for hw in getattr(tracker, "_hardware", []):
        kind = type(hw).__name__
        if kind == "CPU":
            mode = getattr(hw, "_mode", "unknown")
            if mode in ("intel_rapl", "intel_power_gadget", "windows_emi"):
                methods["cpu"] = f"measured ({mode})"
            else:
                generic = (
                    " (generic TDP: CPU model not in codecarbon's table)"
                    if getattr(hw, "_is_generic_tdp", False)
                    else ""
                )
                what = "TDP x CPU load" if mode == "cpu_load" else "constant TDP" if mode == "constant" else mode
                methods["cpu"] = f"estimated from {what}{generic}"
                measured = False
        elif kind == "GPU":
            methods["gpu"] = "measured (NVML)"
        elif kind == "RAM":
            methods["ram"] = "estimated from the RAM size"
            measured = False
        elif kind in ("AppleSiliconChip", "Raspberry"):
            methods[kind.lower()] = "measured (powermetrics)" if kind == "AppleSiliconChip" else "measured (PMIC)"
        else:
            methods[kind.lower()] = "unknown"
            measured = False
    return methods, measured


def _segment(data: Any, tracker: Any, interrupted: bool) -> dict[str, Any]:
    """One stage's numbers from codecarbon's ``EmissionsData``."""
    methods, measured = _describe_hardware(tracker)
    return {
        "energy_kwh": float(data.energy_consumed),
        "cpu_energy_kwh": float(data.cpu_energy),
        "gpu_energy_kwh": float(data.gpu_energy),
        "ram_energy_kwh": float(data.ram_energy),
        "duration_s": float(data.duration),
        "emissions_kg_co2eq": float(data.emissions),
        "country_iso_code": data.country_iso_code,
        "method": methods,
        "measured": measured,
        "hardware": {
            "cpu_model": data.cpu_model,
            "cpu_count": data.cpu_count,
            "gpu_model": data.gpu_model or None,
            "gpu_count": data.gpu_count,
            "ram_total_gb": round(float(data.ram_total_size), 3),
        },
        "tracking_mode": data.tracking_mode,
        "codecarbon_version": data.codecarbon_version,
        "timestamp": data.timestamp,
        "interrupted": interrupted,
    }


def _stage_totals(segments: list[dict[str, Any]]) -> dict[str, Any]:
    """A stage over all its segments: energies and durations summed, description of the last one."""
    total = dict(segments[-1])
    for key in ("energy_kwh", "cpu_energy_kwh", "gpu_energy_kwh", "ram_energy_kwh", "duration_s", "emissions_kg_co2eq"):
        total[key] = sum(s[key] for s in segments)
    total["measured"] = all(s["measured"] for s in segments)
    total["interrupted"] = any(s["interrupted"] for s in segments)
    total["segments"] = segments
    return total


def read_energy(run_dir: str | Path) -> dict[str, Any]:
    """``<run_dir>/energy.json`` (``{}`` when absent): ``{"fit": {...}, "test": {...}}``."""
    path = Path(run_dir) / ENERGY_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def gpu_ids(device: Any) -> Optional[list[int]]:
    """codecarbon's ``gpu_ids`` for a run on ``device``: the one CUDA device it uses (DCASE 2024: "specify the GPU IDs
    that you want to track", else every GPU of the machine is counted); ``None`` (no GPU measured) off CUDA."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return [device.index if device.index is not None else torch.cuda.current_device()]


def start_tracker(
    output_dir: Path,
    project_name: str,
    ids: Optional[list[int]],
    country_iso_code: str = "FRA",
    measure_power_secs: float = 15.0,
    tracking_mode: str = "machine",
    output_file: str = "emissions.csv",
) -> Any:
    """A started ``codecarbon.OfflineEmissionsTracker`` writing its rows to ``output_dir/output_file`` and measuring
    the CUDA devices ``ids`` only (``None``: no GPU is used). Raises ImportError without codecarbon."""
    from codecarbon import OfflineEmissionsTracker

    logging.getLogger("codecarbon").setLevel(logging.ERROR)  # its import resets the level to INFO
    tracker = OfflineEmissionsTracker(
        country_iso_code=country_iso_code,
        project_name=project_name,
        measure_power_secs=measure_power_secs,
        tracking_mode=tracking_mode,
        output_dir=str(output_dir),
        output_file=output_file,
        save_to_file=True,
        log_level="error",
        allow_multiple_runs=True,  # no lock file outside the run directory; sweeps run side by side
        **({"gpu_ids": ids} if ids is not None else {}),
    )
    tracker.start()
    return tracker


class EnergyTracker(pl.Callback):
    """Measure the energy of ``trainer.fit`` and ``trainer.test`` with codecarbon (offline mode).

    Args:
        enabled: False turns measuring off (nothing is written).
        country_iso_code: ISO 3166-1 alpha-3 country of the machine, for the carbon intensity of its electricity
            (energy in kWh does not depend on it).
        measure_power_secs: seconds between power readings.
        tracking_mode: ``"machine"`` (everything the machine draws, codecarbon's default) or ``"process"``
            (this process's share of the CPU load; GPUs and RAM are still per device).
    """

    def __init__(
        self,
        enabled: bool = True,
        country_iso_code: str = "FRA",
        measure_power_secs: float = 15.0,
        tracking_mode: str = "machine",
    ) -> None:
        if tracking_mode not in ("machine", "process"):
            raise ValueError(f"energy.tracking_mode must be 'machine' or 'process', got {tracking_mode!r}")
        if not measure_power_secs > 0:
            raise ValueError(f"energy.measure_power_secs must be > 0, got {measure_power_secs}")
        if not (isinstance(country_iso_code, str) and len(country_iso_code) == 3 and country_iso_code.isalpha()):
            raise ValueError(
                f"energy.country_iso_code must be a 3-letter ISO 3166-1 code such as FRA or USA, got {country_iso_code!r}"
            )
        self.enabled = bool(enabled)
        self.country_iso_code = country_iso_code.upper()
        self.measure_power_secs = float(measure_power_secs)
        self.tracking_mode = tracking_mode
        self._tracker: Any = None
        self._stage: Optional[str] = None
        self._run_dir: Optional[Path] = None
        self._ids: Optional[list[int]] = None
        self.results: dict[str, Any] = {}  # stage -> totals, as in energy.json

    # ------------------------------------------------------------------ codecarbon
    @staticmethod
    def _gpu_ids(trainer: pl.Trainer) -> Optional[list[int]]:
        """The CUDA devices this node's processes train on (all of them under DDP on one node), else ``None``."""
        if trainer.strategy.root_device.type != "cuda":
            return None
        return [int(i) for i in trainer.device_ids] or gpu_ids(trainer.strategy.root_device)

    def _start(self, trainer: pl.Trainer, stage: str) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        self._run_dir = Path(trainer.default_root_dir)
        if trainer.num_nodes > 1:
            _warn_once("nodes", "Energy is measured on the first node only (%d nodes)", trainer.num_nodes)
        try:
            from codecarbon import OfflineEmissionsTracker  # noqa: F401  (is codecarbon installed?)
        except ImportError:
            _warn_once(
                "missing",
                "Energy not measured: codecarbon is not installed (pip install codecarbon; "
                "energy.enabled=false silences this)",
            )
            return
        logging.getLogger("codecarbon").setLevel(logging.ERROR)  # its import resets the level to INFO
        output_dir = self._run_dir / CODECARBON_DIR
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            self._ids = self._gpu_ids(trainer)
            tracker = start_tracker(
                output_dir, stage, self._ids, self.country_iso_code, self.measure_power_secs, self.tracking_mode
            )
        except Exception as err:  # energy is a report, never a reason for a run to fail
            _warn_once("failed", "Energy not measured: codecarbon failed to start: %s: %s", type(err).__name__, err)
            return
        self._tracker, self._stage = tracker, stage
        methods, measured = _describe_hardware(tracker)
        if not measured:
            _warn_once(
                "estimated",
                "Energy: codecarbon cannot read every power counter on this machine, so part of the "
                "figure is estimated (%s)",
                "; ".join(f"{k}: {v}" for k, v in methods.items()),
                level=logging.INFO,
            )

    def _stop(self, interrupted: bool = False) -> Optional[dict[str, Any]]:
        tracker, stage = self._tracker, self._stage
        self._tracker = self._stage = None
        if tracker is None:
            return None
        try:
            tracker.stop()
            data = tracker.final_emissions_data
            segment = _segment(data, tracker, interrupted)
            segment["gpu_ids"] = self._ids  # the GPUs measured (None: none used)
        except Exception as err:
            _warn_once("failed", "Energy not measured: codecarbon failed to stop: %s: %s", type(err).__name__, err)
            return None
        assert self._run_dir is not None and stage is not None
        record = read_energy(self._run_dir)
        # Training resumed in this directory continues the same training: its segments add up. A test is
        # measured whole; a later one replaces it.
        earlier = record.get(stage, {}).get("segments", []) if stage == "fit" else []
        record[stage] = _stage_totals([*earlier, segment])
        atomic_write_text(self._run_dir / ENERGY_FILE, json.dumps(record, indent=1) + "\n")
        self.results[stage] = record[stage]
        return record[stage]

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, "fit")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_scalars(trainer, "fit", self._stop())

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start(trainer, "test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        totals = self._stop()
        self._log_scalars(trainer, "test", totals)
        if trainer.is_global_zero and self._run_dir is not None and self.enabled:
            self._add_to_test_metrics(self._run_dir)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._stop(interrupted=True)  # a stopped or failed stage still used energy: recorded, marked

    # ------------------------------------------------------------------ reporting
    def _log_scalars(self, trainer: pl.Trainer, stage: str, totals: Optional[dict[str, Any]]) -> None:
        if totals is None:
            return
        scalars = {
            f"energy/{stage}_kwh": totals["energy_kwh"],
            f"energy/{stage}_duration_s": totals["duration_s"],
            f"energy/{stage}_kg_co2eq": totals["emissions_kg_co2eq"],
        }
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)

    def metrics_block(self, run_dir: str | Path) -> dict[str, Any]:
        """What ``test/<model>/metrics.json`` says about energy (the details are in ``energy.json``)."""
        record = read_energy(run_dir)
        fit, test = record.get("fit"), record.get("test")
        last = test or fit or {}
        return {
            "training_kwh": fit["energy_kwh"] if fit else None,
            "training_duration_s": fit["duration_s"] if fit else None,
            "test_kwh": test["energy_kwh"] if test else None,
            "test_duration_s": test["duration_s"] if test else None,
            "measured": last.get("measured"),
            "method": last.get("method"),
            "country_iso_code": last.get("country_iso_code"),
            "details": f"../../{ENERGY_FILE}",
            "note": "test energy covers one pass scoring both student and teacher on shared features",
        }

    def _add_to_test_metrics(self, run_dir: Path) -> None:
        from sed.evaluation.outputs import update_metrics_json

        block = self.metrics_block(run_dir)
        for path in sorted((run_dir / "test").glob("*/metrics.json")):
            update_metrics_json(path, {"energy": block})

    def summary_lines(self) -> list[str]:
        """Lines for the run summary the app prints."""
        if not self.enabled:
            return []
        if not self.results:
            return ["Energy: not measured (see the warning above)"]
        parts = [
            f"{stage} {t['energy_kwh']:.3g} kWh in {t['duration_s']:.0f} s"
            + (" (interrupted)" if t["interrupted"] else "")
            for stage, t in self.results.items()
        ]
        last = next(reversed(self.results.values()))
        how = (
            "measured" if last["measured"] else "estimated: " + "; ".join(f"{k} {v}" for k, v in last["method"].items())
        )
        return [f"Energy: {', '.join(parts)} ({how}; {last['country_iso_code']}); details in {ENERGY_FILE}"]
