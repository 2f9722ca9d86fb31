"""Post-processing options against the fixed-window baseline on the same trained checkpoints, without retraining.

For each finished run directory (trained with ``evaluation.save_validation_scores=true``, or with tuning on, so
that ``validation/<model>/scores_raw/`` exists beside ``test/<model>/scores_raw/``), every option is tuned on the
run's validation scores only and scored on its test scores:

- ``median7``: the baseline, a fixed 7-frame median filter, threshold 0.5 (``--baseline-window``);
- ``median_tuned``: class-wise windows (per-class PSDS1 on validation), threshold 0.5;
- ``median_tuned+thr``: the same windows with class-wise thresholds (per-class best event F1 on validation);
- ``sebbs+thr``: Sound Event Bounding Boxes tuned on validation (sebbs), with class-wise thresholds.

Each prints ``RESULT postprocessing: run=... model=... option=... psds1=... psds1_class_mean=... psds2=...
event_f1=... ratio_psds1=...`` (ratios against ``median7`` of the same run and model; ``event_f1`` is macro event F1
at 0.5, or at the tuned thresholds for ``+thr``; ``psds1_class_mean`` the mean single-class PSDS1, which still
moves when PSDS1's across-class penalty holds it at 0), plus the test set's piPSDS1 over the window grid.
``--mean`` adds the mean over runs.

    python benchmarks/postprocessing.py exp/quickstart/2026-11-22_10-00-00 [RUN_DIR ...] [--model teacher]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from _common import ROOT  # noqa: F401  (puts the checkout on sys.path)
from omegaconf import OmegaConf

OPTIONS = ("median7", "median_tuned", "median_tuned+thr", "sebbs+thr")


def _sets(cfg, data_root: Path | None) -> dict:
    """Ground truth and durations of the run's validation and test sets (``data.root`` as the run had it, relative
    to where this is run, i.e. the checkout, unless ``--data-root`` says otherwise)."""
    from sed.data.tsv import read_durations, read_strong

    root = data_root or Path(cfg.data.root)
    out = {}
    for name, tsv, dur in (
        ("validation", cfg.data.val_tsv, cfg.data.val_durations),
        ("test", cfg.data.test_tsv, cfg.data.test_durations),
    ):
        out[name] = (read_strong(root / tsv), read_durations(root / dur))
    return out


def evaluate_run(
    run: Path, model: str, options: list[str], baseline_window: int, data_root: Path | None = None
) -> dict[str, dict[str, float]]:
    """``{option: {metric: value}}`` on the run's test scores, each option tuned on its validation scores."""
    from sed.evaluation.metrics import evaluate
    from sed.evaluation.outputs import read_scores_dir
    from sed.evaluation.tuning import (
        PostprocessingSettings,
        median_window_sweep,
        tune_on_scores,
    )

    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    val_dir, test_dir = run / "validation" / model / "scores_raw", run / "test" / model / "scores_raw"
    if not val_dir.is_dir():
        raise SystemExit(
            f"{run}: no {val_dir.relative_to(run)} (validation scores); re-test the run's checkpoint with them: "
            f"python train.py train=false ckpt_path=<{run}/checkpoints/epochNNN.ckpt> "
            "evaluation.save_validation_scores=true, and give that run directory here"
        )
    sets = _sets(cfg, data_root)
    val_raw, test_raw = read_scores_dir(val_dir), read_scores_dir(test_dir)
    classes = list(next(iter(test_raw.values())).columns[2:])
    (val_gt, val_dur), (test_gt, test_dur) = sets["validation"], sets["test"]
    ev = OmegaConf.merge(OmegaConf.structured(_evaluation_schema()), cfg.evaluation)
    results: dict[str, dict[str, float]] = {}
    for option in options:
        ev.median_window = [baseline_window]
        ev.thresholds = [0.5]
        if option == "median7":
            settings = PostprocessingSettings(classes, "median", [baseline_window] * len(classes))
        else:
            ev.postprocessing = "sebbs" if option.startswith("sebbs") else "median"
            ev.tuning.thresholds = option.endswith("+thr")
            settings = tune_on_scores(val_raw, val_gt, val_dur, ev, model=model)
        post = settings.apply(test_raw, test_dur)
        metrics = evaluate(None, post, test_gt, test_dur, classes, [0.5], {"per_class": True})
        per_class = [v for k, v in metrics.items() if k.startswith("psds1/") and v == v]
        # PSDS1 (alpha_st = 1) is 0 as soon as classes stay undetected; the class mean still moves.
        row = {
            "psds1": metrics["psds1"],
            "psds1_class_mean": sum(per_class) / max(len(per_class), 1),
            "psds2": metrics["psds2"],
            "event_f1": metrics["event_f1_macro@0.5"],
        }
        if settings.thresholds is not None:
            from sed.evaluation.metrics.evaluation import evaluate_full

            tuned = evaluate_full(
                None,
                post,
                test_gt,
                test_dur,
                classes,
                [],
                {"psds": [], "per_class": False},
                class_thresholds=settings.thresholds,
            ).metrics
            row["event_f1"] = tuned["event_f1_macro@tuned"]
        results[option] = row
    sweep = median_window_sweep(test_raw, test_gt, test_dur, list(ev.tuning.median_windows))
    results["pipsds1"] = {
        "psds1": sweep.pipsds,
        "psds1_class_mean": sum(sweep.pipsds_per_class.values()) / max(len(sweep.pipsds_per_class), 1),
    }
    return results


def _evaluation_schema():
    from sed.run.config import EvaluationConfig

    return EvaluationConfig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    parser.add_argument("--model", default="teacher", choices=("student", "teacher"))
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS)
    parser.add_argument("--baseline-window", type=int, default=7, help="the fixed median window (frames)")
    parser.add_argument("--mean", action="store_true", help="also print the mean over runs")
    parser.add_argument("--data-root", type=Path, default=None, help="the data folder (default: the run's data.root)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    options = ["median7", *[o for o in args.options if o != "median7"]]
    table: dict[str, list[dict[str, float]]] = {}
    for run in args.runs:
        results = evaluate_run(run, args.model, options, args.baseline_window, args.data_root)
        base = results["median7"]
        for option in options:
            row = results[option]
            ratios = " ".join(f"ratio_{k}={row[k] / base[k]:.3f}" if base[k] else f"ratio_{k}=nan" for k in row)
            print(
                f"RESULT postprocessing: run={run.name} model={args.model} option={option} "
                + " ".join(f"{k}={v:.4f}" for k, v in row.items())
                + f" {ratios}"
            )
            table.setdefault(option, []).append(row)
        pi = results["pipsds1"]
        print(
            f"RESULT postprocessing: run={run.name} model={args.model} pipsds1={pi['psds1']:.4f} "
            f"pipsds1_class_mean={pi['psds1_class_mean']:.4f} (post-processing independent PSDS1 over "
            "evaluation.tuning.median_windows, on the test set)"
        )
    if args.mean and len(args.runs) > 1:
        for option, rows in table.items():
            mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
            print(
                f"RESULT postprocessing: mean_over={len(rows)} model={args.model} option={option} "
                + " ".join(f"{k}={v:.4f}" for k, v in mean.items())
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
