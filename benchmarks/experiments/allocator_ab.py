"""Same-run A/B of ``train.py`` under mimalloc (its default on Linux, ``sed/run/allocator.py``) against glibc's
allocator (``SED_ALLOCATOR=system``): the whole training loop as a user runs it, not the model alone
(``cpu_step.py +mimalloc`` measures that).

Both arms run ``python train.py +exp=desed_crnn`` on the same generated dataset as ``baseline_ab.py`` (DESED CRNN,
batch 12/12/24, one epoch, 2 workers), interleaved (A B, B A, ...: ``--pairs``), each in a fresh process, and are
measured from the outside exactly as there (``baseline_ab.run_monitored`` / ``parse``): train clips/s from the
progress bar's step timestamps (first step excluded), validation seconds, and peak memory of the process tree until
the test stage (where the run is stopped).

    python benchmarks/experiments/allocator_ab.py --pairs 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common and the other scripts
from _common import ROOT, machine_line, median, note, result  # noqa: E402
from baseline_ab import make_data, ours_command, parse, run_monitored  # noqa: E402

ARMS = ("mimalloc", "system")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="dataset folder, generated there if absent and kept (default: a temp folder, removed)",
    )
    parser.add_argument("--pairs", type=int, default=1, help="(mimalloc, system) pairs; odd pairs run mimalloc first")
    parser.add_argument("--batch-sizes", type=int, nargs=3, default=[12, 12, 24], metavar=("STRONG", "WEAK", "UNLAB"))
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed to one training run")
    args = parser.parse_args()

    from sed.run import allocator

    if allocator.mimalloc_library() is None:
        raise SystemExit("allocator_ab needs cmeel-mimalloc on Linux (pip install cmeel-mimalloc)")
    print(machine_line())
    scratch = Path(tempfile.mkdtemp(prefix="sed_bench_allocator_ab_"))
    try:
        data_dir = args.data_dir.expanduser().resolve() if args.data_dir else scratch / "data"
        # The dataset of baseline_ab.py's defaults, so the two benchmarks' numbers can be set side by side.
        classes = make_data(data_dir, {"strong": 120, "weak": 134, "unlabeled": 240, "validation": 24, "test": 12}, 0)
        clips_per_step = sum(args.batch_sizes)
        base_env = {
            k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MIMALLOC_PURGE_DELAY", "PYTHONPATH")
        }
        envs = {arm: dict(base_env, PYTHONUNBUFFERED="1", **{allocator.ENV: arm}) for arm in ARMS}
        cmd = lambda i, arm: ours_command(
            data_dir, classes, args.batch_sizes, 24, args.workers, 1, scratch / f"exp_{arm}_{i}", "allocator_ab"
        )
        note("command: " + " ".join(cmd(0, "mimalloc")) + f"  (with {allocator.ENV}=mimalloc | system)")
        measured: dict[str, list] = {arm: [] for arm in ARMS}
        for i in range(args.pairs):
            for arm in ARMS if i % 2 == 0 else ARMS[::-1]:
                load = os.getloadavg()[0]
                run = run_monitored(arm, cmd(i, arm), ROOT, envs[arm], scratch / f"{arm}_{i}.log", args.timeout)
                if run.returncode != 0 and not run.stopped_at_test:
                    tail = "\n".join(text for _, text in run.fragments[-40:])
                    raise RuntimeError(f"{arm} run {i + 1} failed (exit {run.returncode}); last output:\n{tail}")
                m = parse(run, clips_per_step)
                measured[arm].append((m, run.wall))
                note(
                    f"pair {i + 1} {arm}: {m.train_seconds / m.train_steps:.2f} s per {clips_per_step}-clip step over "
                    f"{m.train_steps} steps, validation {', '.join(f'{v:.1f}' for v in m.val_seconds)} s, peak "
                    f"{m.peak_mib:,.0f} MiB, run stopped at {run.wall:.0f} s (load1 at start {load:.2f})"
                )

        def step(arm: str) -> float:
            return median(m.train_seconds / m.train_steps for m, _ in measured[arm])

        def val(arm: str) -> float:
            return median(v for m, _ in measured[arm] for v in m.val_seconds)

        def peak(arm: str) -> float:
            return median(m.peak_mib for m, _ in measured[arm])

        def wall(arm: str) -> float:
            return median(w for _, w in measured[arm])

        n = (
            f"median of {args.pairs} run(s) each, interleaved; DESED CRNN, batch "
            f"{'/'.join(map(str, args.batch_sizes))}, {args.workers} workers, 1 epoch"
        )
        result(
            "allocator_ab",
            f"train: mimalloc {step('mimalloc'):.2f} s per step, glibc {step('system'):.2f} s; "
            f"ratio glibc/mimalloc {step('system') / step('mimalloc'):.2f}x faster [{n}; first step excluded]",
        )
        result(
            "allocator_ab",
            f"validation: mimalloc {val('mimalloc'):.1f} s, glibc {val('system'):.1f} s; "
            f"peak memory: mimalloc {peak('mimalloc'):,.0f} MiB, glibc {peak('system'):,.0f} MiB "
            f"({peak('mimalloc') / peak('system'):.2f}x); run until its test stage: {wall('mimalloc'):.0f} vs "
            f"{wall('system'):.0f} s [{n}]",
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
