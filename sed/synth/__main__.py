"""``python -m sed.synth OUT_DIR``: generate a synthetic DCASE-format dataset."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Sequence

from sed.synth.scenes import DEFAULT_SIZES, generate_dataset
from sed.synth.soundbank import SoundbankError


def _dir_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sed.synth",
        description="Generate a DESED-like synthetic sound event detection dataset (audio + DCASE TSVs). "
        "The same arguments and seed give byte-identical files.",
    )
    parser.add_argument(
        "out_dir",
        help="output folder: new or empty (a folder an interrupted run of the same settings left is finished; "
        "any other is refused, never overwritten)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--soundbank", default=None,
        help="folder with foreground/<class>/*.wav and background/*.wav to use instead of the procedural sounds",
    )
    parser.add_argument("--clip-duration", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="Hz (default 16000)")
    for subset, n in DEFAULT_SIZES.items():
        parser.add_argument(f"--n-{subset}", type=int, default=n, help=f"clips in {subset} (default {n})")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, max 8)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sizes = {subset: getattr(args, f"n_{subset}") for subset in DEFAULT_SIZES}
    t0 = time.perf_counter()
    try:
        layout = generate_dataset(
            args.out_dir, seed=args.seed, soundbank=args.soundbank, clip_duration=args.clip_duration,
            sample_rate=args.sample_rate, sizes=sizes, workers=args.workers,
        )
    except (SoundbankError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0
    size_mb = _dir_size(layout.root) / 1e6
    print(
        f"wrote {sum(sizes.values())} clips ({', '.join(f'{k} {v}' for k, v in sizes.items())}) "
        f"of {len(layout.classes())} classes to {layout.root} in {elapsed:.1f} s ({size_mb:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
