"""Score existing predictions against a strong ground truth: ``python -m sed.score``.

PRED is either a folder of per-clip score TSVs (sed_scores_eval format: ``onset offset <class...>``,
as written by a test run) or an event TSV (``filename onset offset event_label``).

* scores: PSDS1, PSDS2 (exact, threshold-free), and intersection / event / segment F1 of the
  events decoded at each ``--threshold`` (score > threshold);
* events: event-based and segment-based F1.

The ground truth defines the evaluated clips (DCASE lists a clip without events as a row with empty onset,
offset and label). Predicted clips it does not list are left out, and clips of ``--durations`` it does not list
are not evaluated; both are reported as a warning on stderr with their count (they usually mean a wrong folder
or file). None of the predicted clips in the ground truth is an error, and so is a ground-truth clip without a
score file. An event TSV with a header only (``sed.infer`` found nothing) scores as no detections.

Examples::

    python -m sed.score exp/run/test/student/scores_postprocessed -g test.tsv -d durations.tsv
    python -m sed.score exp/run/test/student/events_th0.5.tsv -g test.tsv --json scores.json
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

from sed.evaluation.postprocess import audio_id


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m sed.score",
        description="Score SED predictions (a folder of score TSVs or an event TSV) against strong labels.",
    )
    p.add_argument("predictions", type=Path, help="folder of per-clip score TSVs, or an event TSV")
    p.add_argument(
        "-g", "--ground-truth", type=Path, required=True, help="strong-label TSV (filename onset offset event_label)"
    )
    p.add_argument("-d", "--durations", type=Path, help="durations TSV (filename duration); required for score folders")
    p.add_argument(
        "-t",
        "--threshold",
        type=float,
        action="append",
        help="decision threshold(s) for F1 from scores (repeatable; default 0.5)",
    )
    p.add_argument(
        "--classes",
        help="comma-separated class list or a file with one class per line "
        "(default: score columns, or the labels of ground truth and events)",
    )
    p.add_argument("--collar", type=float, default=0.2, help="event-based onset collar in seconds (default 0.2)")
    p.add_argument(
        "--percentage-of-length",
        type=float,
        default=0.2,
        help="event-based offset collar as a fraction of the event length (default 0.2)",
    )
    p.add_argument("--segment", type=float, default=1.0, help="segment length for segment-based F1 (default 1.0 s)")
    p.add_argument(
        "--bootstrap", type=int, default=0, metavar="N", help="PSDS confidence interval from N bootstrap resamples"
    )
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the bootstrap interval (default 0.95)")
    p.add_argument("--jobs", type=int, default=1, help="processes for PSDS computation (default 1)")
    p.add_argument("--per-class", action="store_true", help="also print per-class values")
    p.add_argument("--json", type=Path, metavar="PATH", help="write every number to this JSON file")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (warnings are always printed)")
    args = p.parse_args(argv)
    for name in ("collar", "segment"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be > 0")
    if not 0 <= args.percentage_of_length <= 1:
        p.error("--percentage-of-length must be in [0, 1]")
    if args.bootstrap < 0:
        p.error("--bootstrap must be >= 0")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    return args


def _read_classes(spec: str | None) -> list[str] | None:
    if spec is None:
        return None
    path = Path(spec)
    if path.is_file():
        classes = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not classes:
            raise ValueError(f"{path}: no class names in file")
        return classes
    classes = [c.strip() for c in spec.split(",") if c.strip()]
    if not classes:
        raise ValueError(f"--classes {spec!r}: no class names")
    return classes


def _score_folder(args, classes, gt, durations) -> tuple[dict, dict]:
    from sed.evaluation.metrics import evaluate_full
    from sed.evaluation.outputs import read_scores_dir

    if durations is None:
        raise ValueError("scoring a score folder needs --durations (PSDS normalises false positives by duration)")
    scores = read_scores_dir(args.predictions)
    columns = list(next(iter(scores.values())).columns[2:])
    if classes is not None and classes != columns:
        if sorted(classes) != sorted(columns):
            raise ValueError(f"{args.predictions}: score columns {columns} differ from --classes {classes}")
        scores = {k: v[["onset", "offset", *classes]] for k, v in scores.items()}
    classes = classes or columns
    unknown = sorted({lab for lab in gt["event_label"] if isinstance(lab, str) and lab} - set(classes))
    if unknown:
        raise ValueError(f"{args.ground_truth}: labels {unknown} are not score columns of {args.predictions} {classes}")
    gt_ids = _evaluated_clips(args, set(scores), gt, durations)
    scores = {k: v for k, v in scores.items() if k in gt_ids}
    missing = sorted(gt_ids - set(scores))
    if missing:
        raise ValueError(
            f"{args.predictions}: no score file for {len(missing)} clip(s) of {args.ground_truth}, "
            f"e.g. {[m + '.tsv' for m in missing[:3]]}"
        )
    dur_ids = {audio_id(f) for f in durations}
    no_dur = sorted(set(scores) - dur_ids)
    if no_dur:
        raise ValueError(f"{args.durations}: no duration for {len(no_dur)} scored clip(s), e.g. {no_dur[:3]}")
    cfg = {
        "bootstrap": args.bootstrap,
        "confidence": args.confidence,
        "collar": args.collar,
        "percentage_of_length": args.percentage_of_length,
        "segment_length": args.segment,
        "num_jobs": args.jobs,
        "per_class": True,
    }
    result = evaluate_full(None, scores, gt, durations, classes, args.threshold or [0.5], cfg)
    info = {"kind": "scores", "clips": len(scores), "classes": classes}
    return result.metrics, info


def _score_events(args, classes, gt, durations) -> tuple[dict, dict]:
    from sed.data.tsv import read_strong
    from sed.evaluation.metrics import event_f1, segment_f1

    if args.threshold:
        raise ValueError("--threshold applies to score folders only; an event TSV is already thresholded")
    # Evaluate the events as given; a header without rows means nothing was detected.
    det = read_strong(args.predictions, merge_overlaps=False, allow_empty=True)
    det = det[det["event_label"].astype(str) != ""]
    if classes is None:
        labels = set(gt["event_label"]) | set(det["event_label"])
        classes = sorted(lab for lab in labels if isinstance(lab, str) and lab)
    else:
        for df, path in ((gt, args.ground_truth), (det, args.predictions)):
            unknown = sorted({lab for lab in df["event_label"] if isinstance(lab, str) and lab} - set(classes))
            if unknown:
                raise ValueError(f"{path}: labels {unknown} not in --classes {classes}")
    clips = sorted(_evaluated_clips(args, {audio_id(f) for f in det["filename"]}, gt, durations))
    metrics: dict[str, float] = {}
    ev = event_f1(det, gt, classes, args.collar, args.percentage_of_length, filenames=clips)
    seg = segment_f1(det, gt, classes, args.segment, filenames=clips, durations=durations)
    for kind, res in (("event", ev), ("segment", seg)):
        for key in ("f1_macro", "f1_micro", "precision_micro", "recall_micro", "error_rate"):
            metrics[f"{kind}_{key}"] = res[key]
        for c in classes:
            metrics[f"{kind}_f1/{c}"] = res["per_class"][c]
    info = {"kind": "events", "clips": len(clips), "classes": classes}
    return metrics, info


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _evaluated_clips(args, predicted: set[str], gt, durations) -> set[str]:
    """Ids of the ground-truth clips, the evaluated set; warn about predicted or duration clips outside it."""
    gt_ids = {audio_id(f) for f in gt["filename"]}
    outside = sorted(predicted - gt_ids)
    if outside and len(outside) == len(predicted):
        raise ValueError(
            f"{args.predictions}: none of its {len(predicted)} clips (e.g. {outside[:3]}) is in {args.ground_truth}: "
            "filenames do not match"
        )
    if outside:
        _warn(
            f"{len(outside)} of {len(predicted)} predicted clip(s) are not in {args.ground_truth} and are left out "
            f"(wrong folder or ground truth?), e.g. {outside[:3]}"
        )
    if durations is not None:
        extra = sorted({audio_id(f) for f in durations} - gt_ids)
        if extra:
            _warn(
                f"{len(extra)} clip(s) of {args.durations} are not in {args.ground_truth} and are not evaluated "
                f"(DCASE ground truth lists a clip without events as a row with empty onset, offset and label), "
                f"e.g. {extra[:3]}"
            )
    return gt_ids


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def format_table(metrics: dict[str, float], classes: Sequence[str], per_class: bool = False) -> str:
    """Overall metrics as a two-column table; with ``per_class`` also a class × metric table."""
    overall = {k: v for k, v in metrics.items() if "/" not in k}
    width = max([len(k) for k in overall] + [6])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {_fmt(v)}" for k, v in overall.items()]
    if per_class:
        names = []
        for k in metrics:
            if "/" in k:
                base = k.split("/", 1)[0]
                if base not in names:
                    names.append(base)
        if names:
            cw = max([len(c) for c in classes] + [5])
            colw = [max(len(n), 6) for n in names]
            lines.append("")
            lines.append(f"{'class':<{cw}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, colw)))
            lines.append(f"{'-' * cw}  " + "  ".join("-" * w for w in colw))
            for c in classes:
                row = [_fmt(metrics.get(f"{n}/{c}", float("nan"))) for n in names]
                lines.append(f"{c:<{cw}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(row, colw)))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input)."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from sed.data.tsv import read_durations, read_strong
    from sed.evaluation.outputs import write_metrics_json

    try:
        if not args.predictions.exists():
            raise FileNotFoundError(f"{args.predictions}: no such file or folder")
        classes = _read_classes(args.classes)
        gt = read_strong(args.ground_truth, classes=classes)
        durations = read_durations(args.durations) if args.durations is not None else None
        if args.predictions.is_dir():
            metrics, info = _score_folder(args, classes, gt, durations)
        else:
            metrics, info = _score_events(args, classes, gt, durations)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{info['kind']}: {args.predictions} ({info['clips']} clips, {len(info['classes'])} classes)")
    print(f"ground truth: {args.ground_truth}")
    print()
    print(format_table(metrics, info["classes"], per_class=args.per_class))
    if args.json is not None:
        write_metrics_json(metrics, args.json)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
