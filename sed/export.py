"""``python -m sed.export``: a checkpoint's detector as one ONNX or TorchScript graph with its metadata, checked
against PyTorch before it is written (how: :mod:`sed.inference.export`).

Command line::

    python -m sed.export CHECKPOINT -o model.onnx                       # ONNX (opset 18, dynamo exporter)
    python -m sed.export CHECKPOINT -o model.pt --format torchscript    # TorchScript (traced)
    python -m sed.export CHECKPOINT -o model.onnx --model teacher --check-audio clip1.wav clip2.wav

The network defaults to the one validation preferred (``preferred_model`` in the checkpoint: the student or
the teacher, whichever had the higher objective at that epoch). The file is checked before it is written: ONNX Runtime (or the reloaded
TorchScript module) must reproduce PyTorch's probabilities within ``1e-4`` on a few windows (noise at
several levels, silence, and the first window of each ``--check-audio`` file), at a batch size other than
the one exported with; the largest difference is printed. The file is written atomically.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from typing import Optional, Sequence

from sed.inference.export import ExportResult, export_detector, load_module
from sed.inference.exported_model import (
    CHECK_TOLERANCE,
    DEFAULT_OPSET,
    FORMATS,
    MODELS,
    ExportError,
)

__all__ = ["ExportResult", "build_parser", "export_detector", "load_module", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sed.export",
        description="Export a checkpoint's front-end, scaler and network as one ONNX or TorchScript graph "
        "(raw audio windows -> frame and clip probabilities) with its metadata, and check it against PyTorch.",
    )
    parser.add_argument("checkpoint", help="checkpoint written by train.py (.ckpt)")
    parser.add_argument("-o", "--output", required=True, help="file to write (model.onnx, model.pt)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="default: from the output suffix (.pt/.ts: torchscript, else onnx)",
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default=None,
        help="network to export (default: the one validation preferred, recorded in the checkpoint)",
    )
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 17; default %(default)s)")
    parser.add_argument(
        "--check-audio", nargs="*", default=[], help="audio files whose first window is also compared with PyTorch"
    )
    parser.add_argument("--no-check", action="store_true", help="do not compare the exported model with PyTorch")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=CHECK_TOLERANCE,
        help="largest allowed |exported - PyTorch| probability (default %(default)g)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (0 written, 2 bad input or a failed check: nothing written)."""
    from sed.data.audio import AudioError
    from sed.run.checkpointing import CheckpointError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        result = export_detector(
            args.checkpoint,
            args.output,
            fmt=args.format,
            model=args.model,
            opset=args.opset,
            check=not args.no_check,
            check_audio=args.check_audio,
            tolerance=args.tolerance,
        )
    except (FileNotFoundError, CheckpointError, ExportError, AudioError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    meta = result.metadata
    check = (
        "not checked"
        if math.isnan(result.max_abs_diff)
        else f"max |exported - PyTorch| = {result.max_abs_diff:.3g} on {result.n_check_windows} windows"
    )
    print(
        f"{result.path}: {meta.model} of {args.checkpoint}, {len(meta.classes)} classes, windows of "
        f"{meta.window_samples} samples ({meta.window_seconds:g} s at {meta.sample_rate} Hz) -> {meta.window_frames} "
        f"frames of {meta.frame_duration:g} s; {check}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
