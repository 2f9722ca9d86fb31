"""CPU threading: the CRNN training step and its GRU with torch's default thread count against 1 thread.

The DESED CRNN's bidirectional GRU runs 156 time steps of tiny matrix products per layer and direction;
with several OpenMP threads each step ends in a barrier. When the cores are shared (DataLoader workers,
other jobs), a descheduled thread stalls the others at every barrier, and libgomp's default spin-waiting
makes it worse. This benchmark measures, in one process and interleaved:

* reference: student forward + backward + Adam on pre-made features with **1** thread;
* the same with torch's default number of threads (``torch.get_num_threads()``, or ``--threads``);
* the GRU forward alone, 1 thread vs default.

then repeats both ratios in a child process started with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at
barriers instead of spinning), which has to be set before torch loads.

    python benchmarks/experiments/cpu_threads.py
    python benchmarks/experiments/cpu_threads.py --batch 24 --pairs 5
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common and the other scripts
from _common import (  # noqa: E402
    apply_threads,
    base_parser,
    interleaved,
    machine_line,
    median,
    note,
    result,
)

BENCH = "threads"
# Read before anything loads torch: libgomp takes the policy when it loads, and `import sed` (machine_line) sets
# PASSIVE afterwards, which would then label a spinning measurement PASSIVE.
POLICY_AT_START = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)")


def measure(batch: int, pairs: int) -> dict[str, float]:
    import torch

    from sed.models.crnn import CRNN

    n_threads = torch.get_num_threads()
    torch.manual_seed(0)
    model = CRNN(10, 128)  # conf/model/crnn.yaml defaults
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    feats = torch.randn(batch, 128, 626)
    seq = torch.randn(batch, 156, 128)

    def step(threads: int):
        def run() -> None:
            torch.set_num_threads(threads)
            out = model(feats)
            (out.strong_logits.mean() + out.weak_logits.mean()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    def gru(threads: int):
        def run() -> None:
            torch.set_num_threads(threads)
            with torch.no_grad():
                model.rnn(seq)

        return run

    steps = interleaved({"1": step(1), "n": step(n_threads)}, repeats=pairs)
    grus = interleaved({"1": gru(1), "n": gru(n_threads)}, repeats=max(5, pairs))
    torch.set_num_threads(n_threads)
    return {
        "threads": n_threads,
        "step_1": median(steps["1"]),
        "step_n": median(steps["n"]),
        "step_ratio": median(a / b for a, b in zip(steps["n"], steps["1"])),
        "step_worst": max(a / b for a, b in zip(steps["n"], steps["1"])),
        "gru_1": median(grus["1"]),
        "gru_n": median(grus["n"]),
        "gru_ratio": median(a / b for a, b in zip(grus["n"], grus["1"])),
    }


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4, help="10 s clips per step")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved (1 thread, default threads) pairs")
    parser.add_argument("--child", action="store_true", help=argparse_hidden())
    parser.add_argument("--no-passive", action="store_true", help="skip the OMP_WAIT_POLICY=PASSIVE child")
    args = parser.parse_args()
    apply_threads(args.threads)
    if args.child:
        print("CHILD " + json.dumps(measure(args.batch, args.pairs)), flush=True)
        return

    print(machine_line(), flush=True)
    policy = POLICY_AT_START
    m = measure(args.batch, args.pairs)
    note(f"batch {args.batch} x 10 s, DESED CRNN, OMP_WAIT_POLICY={policy}")
    _report(m, f"OMP_WAIT_POLICY={policy}", args.pairs)
    if args.no_passive:
        return
    cmd = [sys.executable, __file__, "--child", "--batch", str(args.batch), "--pairs", str(args.pairs)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    child = json.loads(next(line for line in out.splitlines() if line.startswith("CHILD "))[6:])
    _report(child, "OMP_WAIT_POLICY=PASSIVE (child process)", args.pairs)


def _report(m: dict, label: str, pairs: int) -> None:
    result(
        BENCH,
        f"{label}: CRNN fwd+bwd+adam with {m['threads']} threads = {m['step_n']:.2f} s/step vs reference "
        f"1 thread {m['step_1']:.2f} s/step: {m['step_ratio']:.2f}x the 1-thread time (worst pair "
        f"{m['step_worst']:.1f}x); GRU forward alone {m['gru_ratio']:.2f}x ({1e3 * m['gru_n']:.0f} ms vs "
        f"{1e3 * m['gru_1']:.0f} ms) [median of {pairs} interleaved pairs]",
    )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
