"""One table for a whole ``python train.py -m ...`` sweep: what differs between its jobs and how each did.

At the end of every multirun the Hydra callback :class:`SweepSummary` (``hydra.callbacks`` in conf/config.yaml)
reads each job's run directory and writes ``summary.md`` and ``summary.json`` into the sweep directory
(atomically) and prints the tables:

- **jobs**: one row per job with the overrides that differ between jobs (overrides common to all are left out),
  its status, its best validation objective (``best_val_objective``: the best checkpoint's ``val/obj_metric``)
  and, when it was tested, PSDS1, PSDS2 and the macro event-based F1 of every tested model (student, teacher);
- **seeds**: when ``seed`` is one of the differing overrides, the mean ± sample standard deviation (n − 1) over
  the seeds of each metric, one row per setting of the other differing overrides (DCASE reports a system as the
  mean ± std over several seeds: ``python train.py -m seed=1,2,3``).

Each job's numbers come from what the run wrote: ``status.json`` (status, ``best_val_objective``),
``test/<model>/metrics.json`` and, for a stopped or failed job, the best score kept in ``checkpoints/last.ckpt``.
The summary of any sweep directory, also one whose sweep did not end (a failed job, a cancelled SLURM array),
can be rebuilt with ``python -m sed.sweep_summary SWEEP_DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sed.utils.io import atomic_write_text

SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
SEED_KEY = "seed"


def _override_key(override: str) -> tuple[str, str]:
    """``key=value`` (also ``+key=value``, ``++key=value``, ``~key``) -> (key, value)."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _finite(value: Any) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _checkpoint_best_score(run_dir: Path) -> Optional[float]:
    """The best monitored score in ``last.ckpt`` (for a job that stopped before writing it in status.json)."""
    path = run_dir / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return None
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - a broken checkpoint just has no score to report
        return None
    for name, state in (checkpoint.get("callbacks") or {}).items():
        if str(name).startswith("ModelCheckpoint") and isinstance(state, dict):
            score = state.get("best_model_score")
            return _finite(float(score)) if score is not None else None
    return None


def _test_metrics(run_dir: Path) -> dict[str, dict[str, Optional[float]]]:
    """Headline test metrics per model from ``test/<model>/metrics.json`` (with several datasets per
    ``<dataset>/<model>`` from ``test/<dataset>/<model>/metrics.json``): PSDS, event F1 at the first threshold, or
    the mpAUC of a set of soft-labelled recordings."""
    out: dict[str, dict[str, Optional[float]]] = {}
    test_dir = run_dir / "test"
    if not test_dir.is_dir():
        return out
    files = sorted(test_dir.glob("*/metrics.json")) or sorted(test_dir.glob("*/*/metrics.json"))
    for metrics_file in files:
        metrics = _read_json(metrics_file)
        name = metrics_file.parent.relative_to(test_dir).as_posix()
        if "mpauc" in metrics:
            out[name] = {"mpauc": _finite(metrics.get("mpauc"))}
            continue
        event_keys = sorted(k for k in metrics if k.startswith("event_f1_macro@"))
        out[name] = {
            "psds1": _finite(metrics.get("psds1")),
            "psds2": _finite(metrics.get("psds2")),
            **{key: _finite(metrics[key]) for key in event_keys[:1]},
        }
    return out


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """The jobs of a sweep: sub-directories with a Hydra ``.hydra/overrides.yaml``, by job number."""
    jobs = [p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()]
    return sorted(jobs, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def read_job(run_dir: Path) -> dict[str, Any]:
    """One job's overrides, status, best validation objective and headline test metrics."""
    import yaml

    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8")) or []
    status = _read_json(run_dir / "status.json")
    best = _finite(status.get("best_val_objective"))
    if best is None and status.get("status") != "finished":
        best = _checkpoint_best_score(run_dir)
    return {
        "job": run_dir.name,
        "dir": str(run_dir),
        "overrides": dict(_override_key(str(o)) for o in overrides),
        "status": status.get("status", "unknown"),
        "error": status.get("error"),
        "best_val_objective": best,
        "test": _test_metrics(run_dir),
    }


def _metric_columns(jobs: list[dict[str, Any]]) -> list[tuple[str, Optional[str], str]]:
    """(label, model, metric) of every column with a value in at least one job."""
    columns: list[tuple[str, Optional[str], str]] = [("best val objective", None, "best_val_objective")]
    models = sorted({model for job in jobs for model in job["test"]})
    for model in models:
        metrics = [m for job in jobs for m in job["test"].get(model, {})]
        for metric in dict.fromkeys(metrics):  # psds1, psds2, event_f1_macro@<first threshold>
            if any(job["test"].get(model, {}).get(metric) is not None for job in jobs):
                columns.append((f"{model} {metric}", model, metric))
    return columns


def _value(job: dict[str, Any], model: Optional[str], metric: str) -> Optional[float]:
    return job[metric] if model is None else job["test"].get(model, {}).get(metric)


def summarize(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    """The summary of the sweep in ``sweep_dir`` as a JSON-ready dict (see the module docstring)."""
    sweep_dir = Path(sweep_dir)
    jobs = [read_job(d) for d in _job_dirs(sweep_dir)]
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job["overrides"] if k not in keys]
    varying = [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1]
    columns = _metric_columns(jobs)
    rows = [
        {
            "job": job["job"],
            "dir": job["dir"],
            "overrides": {k: job["overrides"].get(k) for k in varying},
            "status": job["status"],
            **({"error": job["error"]} if job["error"] else {}),
            "metrics": {label: _value(job, model, metric) for label, model, metric in columns},
        }
        for job in jobs
    ]
    summary: dict[str, Any] = {
        "sweep_dir": str(sweep_dir),
        "varying": varying,
        "common_overrides": {k: jobs[0]["overrides"][k] for k in keys if k not in varying},
        "jobs": rows,
    }
    if SEED_KEY in varying:
        summary["seed_groups"] = _seed_groups(rows, [k for k in varying if k != SEED_KEY])
    return summary


def _seed_groups(rows: list[dict[str, Any]], others: list[str]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of every metric, per setting of the other varying overrides."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row["overrides"].get(k) for k in others), []).append(row)
    out = []
    for setting, members in groups.items():
        stats = {}
        for label in members[0]["metrics"]:
            values = [m["metrics"][label] for m in members if m["metrics"][label] is not None]
            stats[label] = {
                "mean": statistics.fmean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "n": len(values),
            }
        out.append(
            {
                "overrides": dict(zip(others, setting)),
                "seeds": [m["overrides"].get(SEED_KEY) for m in members],
                "metrics": stats,
            }
        )
    return out


def _fmt(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.4f}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join(" --- " for _ in header) + "|", *(line(r) for r in body)]


def to_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables."""
    varying = summary["varying"]
    jobs = summary["jobs"]
    lines = [f"# Sweep summary: {summary['sweep_dir']}", ""]
    if summary["common_overrides"]:
        common = " ".join(f"{k}={v}" for k, v in summary["common_overrides"].items())
        lines += [f"Common to every job: `{common}`", ""]
    if not jobs:
        return "\n".join(lines + ["No job directories found.", ""])
    labels = list(jobs[0]["metrics"])
    lines += ["## Jobs", ""]
    lines += _table(
        ["job", *varying, "status", *labels],
        [
            [
                j["job"],
                *(str(j["overrides"][k]) for k in varying),
                j["status"],
                *(_fmt(j["metrics"][m]) for m in labels),
            ]
            for j in jobs
        ],
    )
    lines.append("")
    lines.append(
        "`best val objective`: the best checkpoint's val/obj_metric (evaluation.obj_metric), what a sweeper "
        "optimises; test metrics are for reporting only."
    )
    if "seed_groups" in summary:
        others = [k for k in varying if k != SEED_KEY]
        lines += ["", "## Mean ± std over seeds", ""]

        def cell(stat: dict[str, Any]) -> str:
            if stat["mean"] is None:
                return "—"
            std = "—" if stat["std"] is None else f"{stat['std']:.4f}"
            return f"{stat['mean']:.4f} ± {std}"

        lines += _table(
            [*others, "seeds", "n", *labels],
            [
                [
                    *(str(g["overrides"][k]) for k in others),
                    ",".join(str(s) for s in g["seeds"]),
                    str(max((s["n"] for s in g["metrics"].values()), default=0)),
                    *(cell(g["metrics"][m]) for m in labels),
                ]
                for g in summary["seed_groups"]
            ],
        )
        lines.append("")
        lines.append("std: sample standard deviation (n − 1) over the seeds with a value; n: jobs with a value.")
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: str | os.PathLike) -> str:
    """Write ``summary.json`` and ``summary.md`` into ``sweep_dir`` (atomically) and return the Markdown."""
    sweep_dir = Path(sweep_dir)
    summary = summarize(sweep_dir)
    markdown = to_markdown(summary)
    atomic_write_text(sweep_dir / SUMMARY_JSON, json.dumps(summary, indent=1) + "\n")
    atomic_write_text(sweep_dir / SUMMARY_MD, markdown)
    return markdown


class SweepSummary(Callback):
    """Hydra callback: the summary tables of a ``-m`` sweep, written into its sweep directory and printed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir():
            print(write_summary(sweep_dir), flush=True)
            print(f"Sweep summary written to {sweep_dir / SUMMARY_MD} and {SUMMARY_JSON}", flush=True)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sed.sweep_summary",
        description="Rebuild summary.md/summary.json of a train.py -m sweep directory (e.g. one whose sweep did "
        "not end) and print it.",
    )
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir() or not _job_dirs(args.sweep_dir):
        parser.error(
            f"{args.sweep_dir}: not a sweep directory of train.py -m (no job directory with "
            ".hydra/overrides.yaml in it)"
        )
    print(write_summary(args.sweep_dir), end="")


if __name__ == "__main__":
    main()
