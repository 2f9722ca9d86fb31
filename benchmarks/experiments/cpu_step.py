"""The DESED mean-teacher step on the CPU with each of this project's step changes, against the DCASE baseline's.

The step is the model's alone (no front-end, no loader, no Lightning): the student's train-mode forward, BCE on
strong labels, the teacher's train-mode forward under ``inference_mode``, a consistency MSE, backward, Adam, the
EMA update, on one batch of 10-s clips (128 mel bands x 626 frames, DESED CRNN from conf/model/crnn.yaml). The
variants add the changes one at a time:

1. ``baseline``: ``nn.Dropout`` masks (``model.fast_dropout=false``), NCHW activations, glibc's own handling of
   large blocks (``THP_MEM_ALLOC_ENABLE=0``): what the DCASE baseline's step runs;
2. ``+thp``: large tensors in transparent huge pages (set by ``import sed``): the same numbers;
3. ``+masks``: dropout masks cut from random words (``sed/models/dropout.py``): other draws, same distribution;
4. ``+channels_last``: the CNN in NHWC memory (same numbers up to rounding);
5. ``+fused_glu``: each block's GLU and dropout in one autograd function writing into its own temporaries
   (``sed/models/gating.py``): the same masks and outputs, gradients equal up to rounding;
6. ``+teacher_first``: the teacher's forward before the student's (its temporaries are freed before the student's
   graph exists: a lower peak), as ``SEDModule.training_step`` runs it; other draws go to each model;
7. ``+mimalloc``: the process under mimalloc, which keeps freed memory for reuse (``sed/run/allocator.py``; train.py
   re-executes itself so): the same numbers. This project's default.

Each variant runs in a fresh interpreter (the huge-page setting is read at the first large allocation), one
untimed step then ``--steps`` timed ones, the variants interleaved round by round. Prints the median step time of
each, its ratio to the baseline's, and the peak resident memory of its process.

    python benchmarks/experiments/cpu_step.py                      # batch 48 (DESED's 12+12+24), 2 rounds x 2 steps
    python benchmarks/experiments/cpu_step.py --batch 8 --rounds 3
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: _common
from _common import ROOT, base_parser, machine_line, median, note, result  # noqa: E402

VARIANTS = {
    "baseline": dict(thp="0", fast_dropout=False, channels_last=False),
    "+thp": dict(thp="1", fast_dropout=False, channels_last=False),
    "+masks": dict(thp="1", fast_dropout=True, channels_last=False),
    "+channels_last": dict(thp="1", fast_dropout=True, channels_last=True, fused=False),
    "+fused_glu": dict(thp="1", fast_dropout=True, channels_last=True),
    "+teacher_first": dict(thp="1", fast_dropout=True, channels_last=True, teacher_first=True),
    "+mimalloc": dict(thp="1", fast_dropout=True, channels_last=True, teacher_first=True, mimalloc=True),
}

_CHILD = r"""
import copy, json, resource, sys, time
import torch, torch.nn.functional as F
from omegaconf import OmegaConf
import sed.models.crnn
from sed.models.crnn import CRNN
from sed.models.dropout import Dropout

args = json.loads(sys.argv[1])
if not args["fused"]:  # GLU then Dropout as two modules
    sed.models.crnn.glu_dropout = lambda x, glu, p, training, fast: Dropout(p, fast).train(training)(glu(x))
if args["threads"]:
    torch.set_num_threads(args["threads"])
node = OmegaConf.to_container(OmegaConf.load(args["model"]))
node.pop("_target_")
node.update(fast_dropout=args["fast_dropout"], channels_last=args["channels_last"])
torch.manual_seed(0)
student = CRNN(n_classes=10, n_features=128, **node).train()
teacher = copy.deepcopy(student).requires_grad_(False)
opt = torch.optim.Adam(student.parameters(), 1e-3)
x = torch.randn(args["batch"], 128, 626)
y = (torch.rand(args["batch"], 10, student.n_output_frames(626)) < 0.1).float()

def teacher_out():
    with torch.inference_mode():
        target = teacher(x).strong
    return target.clone()

def step():
    target = teacher_out() if args["teacher_first"] else None
    out = student(x)
    loss = F.binary_cross_entropy(out.strong, y)
    target = teacher_out() if target is None else target
    loss = loss + F.mse_loss(out.strong, target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters()):
            t.mul_(0.999).add_(s, alpha=0.001)

step()
times = []
for _ in range(args["steps"]):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
print(json.dumps({"times": times, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_variant(name: str, args) -> dict:
    spec = VARIANTS[name]
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MIMALLOC_PURGE_DELAY")}
    env["THP_MEM_ALLOC_ENABLE"] = spec["thp"]
    if spec.get("mimalloc"):
        from sed.run import allocator

        env = allocator.preload_environment({**env, allocator.ENV: "mimalloc"}, allocator.mimalloc_library())
        if env is None:
            raise SystemExit("+mimalloc needs cmeel-mimalloc on Linux (pip install cmeel-mimalloc)")
    payload = json.dumps(
        dict(
            batch=args.batch,
            steps=args.steps,
            threads=args.threads,
            model=str(ROOT / "conf" / "model" / "crnn.yaml"),
            fast_dropout=spec["fast_dropout"],
            channels_last=spec["channels_last"],
            fused=spec.get("fused", True),
            teacher_first=spec.get("teacher_first", False),
        )
    )
    out = subprocess.run([sys.executable, "-c", _CHILD, payload], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"variant {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=48, help="clips per step (DESED: 12 + 12 + 24)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each variant once per round)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    print(machine_line(), flush=True)
    times: dict[str, list[float]] = {name: [] for name in args.variants}
    peaks: dict[str, list[float]] = {name: [] for name in args.variants}
    for r in range(args.rounds):
        for name in args.variants:
            got = run_variant(name, args)
            times[name] += got["times"]
            peaks[name].append(got["peak_mib"])
            note(
                f"round {r + 1} {name}: "
                + ", ".join(f"{t:.2f} s" for t in got["times"])
                + f", peak {got['peak_mib']:,.0f} MiB"
            )
    ref = median(times[args.variants[0]])
    for name in args.variants:
        step = median(times[name])
        result(
            "cpu_step",
            f"{name}: {step:.2f} s per {args.batch}-clip mean-teacher step = {ref / step:.2f}x "
            f"the {args.variants[0]} step ({ref:.2f} s), peak {max(peaks[name]):,.0f} MiB "
            f"[DESED CRNN, model alone, median of {len(times[name])} steps over {args.rounds} "
            "interleaved rounds]",
        )


if __name__ == "__main__":
    main()
