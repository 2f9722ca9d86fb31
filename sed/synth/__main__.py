"""``python -m sed.synth OUT_DIR``: generate a synthetic DCASE-format dataset (``--recordings``: the second,
MAESTRO-like one of long scene recordings with soft labels)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Sequence

from sed.synth.recordings import DEFAULT_DURATION, DEFAULT_RECORDING_SIZES, generate_recordings
from sed.synth.scenes import DEFAULT_SIZES, generate_dataset
from sed.synth.soundbank import SoundbankError


def _dir_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sed.synth",
        description="Generate a DESED-like synthetic sound event detection dataset (audio + DCASE TSVs), or with "
        "--recordings a MAESTRO-like one (minutes-long scene recordings, soft labels from simulated annotators). "
        "The same arguments and seed give byte-identical files.",
    )
    parser.add_argument(
        "out_dir",
        help="output folder: new or empty (a folder an interrupted run of the same settings left is finished; "
        "any other is refused, never overwritten)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--recordings",
        action="store_true",
        help="generate the scene recordings (train/validation/test splits) instead of the clips",
    )
    parser.add_argument(
        "--soundbank",
        default=None,
        help="folder with foreground/<class>/*.wav and background/*.wav to use instead of the procedural sounds",
    )
    parser.add_argument("--clip-duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="Hz (default 16000)")
    for subset, n in DEFAULT_SIZES.items():
        recordings = (
            f"; with --recordings default {DEFAULT_RECORDING_SIZES[subset]}"
            if subset in DEFAULT_RECORDING_SIZES
            else ""
        )
        parser.add_argument(
            f"--n-{subset}", type=int, default=None, help=f"clips in {subset} (default {n}{recordings})"
        )
    parser.add_argument(
        "--n-train",
        type=int,
        default=DEFAULT_RECORDING_SIZES["train"],
        help=f"--recordings: training recordings (default {DEFAULT_RECORDING_SIZES['train']})",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION,
        help=f"--recordings: seconds per recording (default {DEFAULT_DURATION:g})",
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, max 8)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    try:
        if args.recordings:
            sizes = {
                "train": args.n_train,
                "validation": args.n_validation or DEFAULT_RECORDING_SIZES["validation"],
                "test": args.n_test or DEFAULT_RECORDING_SIZES["test"],
            }
            root = generate_recordings(
                args.out_dir, seed=args.seed, sample_rate=args.sample_rate, sizes=sizes, duration=args.duration
            )
            what = f"{sum(sizes.values())} recordings of {args.duration:g} s ({', '.join(f'{k} {v}' for k, v in sizes.items())})"
        else:
            sizes = {
                s: getattr(args, f"n_{s}") if getattr(args, f"n_{s}") is not None else n
                for s, n in DEFAULT_SIZES.items()
            }
            layout = generate_dataset(
                args.out_dir,
                seed=args.seed,
                soundbank=args.soundbank,
                clip_duration=args.clip_duration,
                sample_rate=args.sample_rate,
                sizes=sizes,
                workers=args.workers,
            )
            root = layout.root
            what = (
                f"{sum(sizes.values())} clips ({', '.join(f'{k} {v}' for k, v in sizes.items())}) "
                f"of {len(layout.classes())} classes"
            )
    except (SoundbankError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0
    print(f"wrote {what} to {root} in {elapsed:.1f} s ({_dir_size(root) / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
