"""``python -m sed.infer``: sound event detection on audio files of any length with a trained checkpoint or an
exported model (the detector itself: :mod:`sed.inference.detector`).

Command line::

    python -m sed.infer CHECKPOINT INPUT [INPUT ...] -o events.tsv [--scores-dir DIR]
    python -m sed.infer --onnx model.onnx INPUT [INPUT ...] -o events.tsv           # python -m sed.export
    python -m sed.infer --torchscript model.pt INPUT [INPUT ...] -o events.tsv
    ... --median-window 7 | 5,7,9,...   --threshold 0.5   --thresholds dog=0.4,speech=0.6 | thresholds.tsv | .json

``INPUT`` is an audio file, a folder of audio files, or a TSV with a ``filename`` column (files
resolved against ``--audio-dir``, default the TSV's folder). Any sample rate and channel count is
accepted: channels are averaged and audio is resampled to the rate the model takes (its
``features.input_sample_rate`` when it resamples inside the model: files already at that rate go in as they are,
and the model resamples each window on the device). An exported model carries
its classes, window, frame hop, median filter and thresholds; nothing else is read. Median filter and
thresholds default to the checkpoint's ``evaluation`` configuration (the first threshold).

A file that cannot be processed (unreadable, empty, NaN/Inf samples with ``--nonfinite error``, listed
but missing) does not stop the others: each is reported on one line at the end, naming the file and
why, and the outputs hold the files that were processed. Exit status: 0 all files processed, 1 some
failed, 2 bad arguments or no file processed (then nothing is written).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from sed.data.audio import NONFINITE_POLICIES, AudioError
from sed.data.inputs import check_outputs, collect_inputs
from sed.data.tsv import AnnotationError
from sed.evaluation.settings import (
    describe_thresholds,
    parse_median_window,
    parse_thresholds,
)
from sed.inference.detector import MODELS, Detector, Prediction, RunResult
from sed.inference.exported_model import ExportError

__all__ = ["Detector", "Prediction", "RunResult", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sed.infer",
        usage="%(prog)s [options] CHECKPOINT INPUT [INPUT ...]\n"
        "       %(prog)s [options] (--onnx MODEL | --torchscript MODEL) INPUT [INPUT ...]",
        description="Detect sound events in audio files of any length with a trained checkpoint or a model "
        "exported by python -m sed.export.",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="CHECKPOINT INPUT",
        help="checkpoint written by train.py (.ckpt), unless --onnx/--torchscript is given; then "
        "inputs: audio files, folders of audio files, or TSVs with a filename column",
    )
    exported = parser.add_mutually_exclusive_group()
    exported.add_argument("--onnx", default=None, metavar="MODEL", help="use this ONNX model (python -m sed.export)")
    exported.add_argument("--torchscript", default=None, metavar="MODEL", help="use this TorchScript model")
    parser.add_argument("-o", "--output", default="detections.tsv", help="event TSV to write (default: %(default)s)")
    parser.add_argument("--scores-dir", default=None, help="also write one sed_scores_eval score TSV per file here")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold of every class (default: the model's first evaluation threshold)",
    )
    parser.add_argument(
        "--thresholds",
        default=None,
        metavar="SPEC",
        help="class-wise thresholds: CLASS=VALUE,CLASS=VALUE or a .json {class: value} or a TSV "
        "(event_label, threshold); classes not named keep --threshold",
    )
    parser.add_argument(
        "--median-window",
        default=None,
        metavar="N",
        help="median filter length in frames: one int, or comma-separated lengths, one per class in "
        "class order (default: the tuned windows, else the model's evaluation.median_window)",
    )
    parser.add_argument(
        "--postprocessing",
        default=None,
        metavar="JSON",
        help="post-processing tuned on validation (<run>/postprocessing.json); default: the file "
        "train.py saved beside the checkpoint, if any; 'none' for the model's evaluation settings",
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default=None,
        help="network of a checkpoint (default: the one validation preferred, recorded in the "
        "checkpoint); an exported model holds one",
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available; the CPU for an exported model)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: %(default)s)")
    parser.add_argument(
        "--hop", type=float, default=None, help="seconds between window starts (default: half the training clip length)"
    )
    parser.add_argument(
        "--audio-dir", default=None, help="folder of the files listed in TSV inputs (default: the TSV's folder)"
    )
    parser.add_argument(
        "--nonfinite",
        choices=NONFINITE_POLICIES,
        default="error",
        help="NaN/Inf audio samples: report the file as bad (error) or read them as silence "
        "(zero) (default: %(default)s)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 some files failed, 2 bad arguments or nothing processed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    exported = args.onnx or args.torchscript
    if exported:
        source, inputs = exported, args.paths
    elif len(args.paths) < 2:
        parser.error("give a CHECKPOINT and at least one INPUT (or --onnx/--torchscript MODEL and the inputs)")
    else:
        source, inputs = args.paths[0], args.paths[1:]
    try:
        files = collect_inputs(inputs, args.audio_dir)
        check_outputs(inputs, files, args.output, args.scores_dir)  # before any work: never replace an input
        pp = False if (args.postprocessing or "").lower() == "none" else args.postprocessing
        if exported:
            detector = Detector.from_exported(
                exported,
                fmt="onnx" if args.onnx else "torchscript",
                model=args.model,
                device=args.device,
                hop=args.hop,
                batch_size=args.batch_size,
                postprocessing=pp,
            )
        else:
            detector = Detector.from_checkpoint(
                source,
                model=args.model,
                device=args.device,
                hop=args.hop,
                batch_size=args.batch_size,
                postprocessing=pp,
            )
        if args.median_window is not None:
            if detector.uses_sebbs:
                raise ValueError(
                    "--median-window: the post-processing is SEBBs (give --postprocessing none to "
                    "median-filter instead)"
                )
            detector.median_window = parse_median_window(args.median_window, detector.classes)
        threshold = detector.threshold
        if args.threshold is not None or args.thresholds:
            threshold = parse_thresholds(args.threshold, args.thresholds, detector.classes, detector.threshold)
        result = detector.run(
            files, output=args.output, threshold=threshold, scores_dir=args.scores_dir, nonfinite=args.nonfinite
        )
    except (FileNotFoundError, AudioError, AnnotationError, ExportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    done = len(files) - len(result.failed)
    if done == 0:
        print(f"error: none of the {len(files)} file(s) could be processed; nothing written:", file=sys.stderr)
    else:
        print(
            f"{len(result.events)} event(s) in {done} file(s) ({detector.model_name} of {source}, "
            f"{describe_thresholds(threshold)}, {detector.describe_postprocessing()}) -> {args.output}"
            + (f"; scores in {args.scores_dir}" if args.scores_dir else ""),
            file=sys.stderr,
        )
        if result.failed:
            print(f"error: {len(result.failed)} of {len(files)} file(s) could not be processed:", file=sys.stderr)
    for message in result.failed:
        print(f"  {message}", file=sys.stderr)
    return 0 if not result.failed else 1 if done else 2


if __name__ == "__main__":
    raise SystemExit(main())
