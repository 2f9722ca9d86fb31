"""Run every benchmark with its default sizes, one after the other, and print all summary lines at the end.

    python benchmarks/run_all.py                  # CPU, default sizes (< 10 min on a 2-core machine)
    python benchmarks/run_all.py --device cuda    # training and front-end on the GPU as well
    python benchmarks/run_all.py --only scoring frontend --out results.txt

Each benchmark runs in its own process (so one's threads, workers and memory do not disturb the next);
their output streams through, and the ``MACHINE``/``RESULT`` lines are collected, with each benchmark's
wall time and the total, into the final summary (and ``--out``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "frontend": "frontend.py",
    "scoring": "scoring.py",
    "data": "data_loading.py",
    "train": "train_throughput.py",
    "audio_check": "audio_check.py",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=None)
    parser.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (training and front-end benchmarks)")
    parser.add_argument(
        "--train-threads",
        type=int,
        default=1,
        help="torch threads of the CPU training benchmark (0: torch's default). 1 by default: "
        "with the default count a shared CPU spends most of the step in OpenMP barrier "
        "stalls (benchmarks/experiments/cpu_threads.py), which would drown what train measures",
    )
    parser.add_argument("--out", default=None, help="also write the summary to this file")
    args = parser.parse_args()

    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    summary: list[str] = []
    machine = None
    started = time.perf_counter()
    failed = []
    for name in names:
        cmd = [sys.executable, str(HERE / BENCHMARKS[name])]
        if name == "train":
            cmd += ["--device", args.device]
            if args.device == "cpu" and args.train_threads > 0:
                cmd += ["--threads", str(args.train_threads)]
            cmd += ["--lightning"]
        if name == "frontend" and args.device != "cpu":
            cmd += ["--device", args.device]
        print(f"\n### {' '.join(['python', 'benchmarks/' + BENCHMARKS[name]] + cmd[2:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Warning" in line or "warnings.warn" in line or "pkg_resources" in line:
                continue  # third-party deprecation noise
            print(line, end="", flush=True)
            if line.startswith("RESULT"):
                summary.append(line.rstrip())
            elif line.startswith("MACHINE") and machine is None:
                machine = line.rstrip()
        rc = proc.wait()
        took = time.perf_counter() - t0
        summary.append(f"TIME {name}: {took:.0f} s" + ("" if rc == 0 else f" (FAILED, exit {rc})"))
        if rc != 0:
            failed.append(name)
    total = time.perf_counter() - started
    lines = ([machine] if machine else []) + summary + [f"TOTAL {total:.0f} s ({total / 60:.1f} min)"]
    print("\n" + "=" * 30 + " summary " + "=" * 30)
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
