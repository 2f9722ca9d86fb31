"""The DESED recipe's training loop on a GPU, as ``python train.py exp=desed_crnn trainer=gpu`` runs it.

Each variant is one real ``train.py`` run (Hydra config, the project's DataLoader, Lightning, the default
callbacks and TensorBoard logger) on a generated dataset with DESED's subset proportions (``--scale`` of DESED's
10,000 strong / 1,578 weak / 14,412 unlabeled / 2,500 validation clips of 10 s at 16 kHz). A timing callback
(:class:`StepTiming`, added with ``+callbacks.timing``) records, without synchronising the device between steps:

* **train clips/s** over the steps after ``--skip`` warm-up steps (one device synchronisation at the end);
* **loader wait**: the host time between one batch's end and the next batch's start (fetching the batch from the
  workers and copying it to the device), as a fraction of the timed wall time;
* **GPU busy**: the device's utilisation (NVML, sampled every 50 ms during the timed steps): the fraction of time a
  kernel ran. What is not busy is the device waiting for the host: for data, or for the host to launch the step;
* **host syncs**: with ``--sync-debug``, the places where one training step (two steps, the hooks between them
  included) synchronises the host with the device (``torch.cuda.set_sync_debug_mode``), by file and line;
* **validation + scoring** (the ``epoch`` variant: DESED's epoch, validation every epoch) as a fraction of the epoch;
* **peak GPU memory** (``torch.cuda.max_memory_allocated``).

    python benchmarks/gpu_training.py                             # every variant (about 6 min on an H100)
    python benchmarks/gpu_training.py --only b12_fp32 b48_bf16 --sync-debug
    python benchmarks/gpu_training.py --device cpu --scale 0.01 --only b12_fp32   # a smoke run of the script

It is a benchmark, not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from _common import ROOT, generate, machine_line, median, note, result, workdir

BENCH = "gpu"
DESED_SIZES = {"strong": 10_000, "weak": 1_578, "unlabeled": 14_412, "validation": 2_500}

# name: (batch sizes, precision, workers, extra overrides)
VARIANTS: dict[str, tuple[list[int], str, int, list[str]]] = {
    "b12_fp32": ([12, 12, 24], "32-true", 4, []),
    "b12_bf16": ([12, 12, 24], "bf16-mixed", 4, []),
    "b48_fp32": ([48, 48, 96], "32-true", 4, []),
    "b48_bf16": ([48, 48, 96], "bf16-mixed", 4, []),
    "b48_bf16_w8": ([48, 48, 96], "bf16-mixed", 8, []),
    "b48_bf16_compile": ([48, 48, 96], "bf16-mixed", 8, ["training.compile=true"]),
    "b96_bf16_w12": ([96, 96, 192], "bf16-mixed", 12, []),
    "b96_bf16_w12_compile": ([96, 96, 192], "bf16-mixed", 12, ["training.compile=true"]),
    # channels-last CNN activations: BatchNorm and pooling kernels that use the whole GPU on 16-32 channels
    "b12_fp32_cl": ([12, 12, 24], "32-true", 4, ["model.channels_last=true"]),
    "b12_bf16_cl": ([12, 12, 24], "bf16-mixed", 4, ["model.channels_last=true"]),
    "b12_bf16_cl_nobar": (
        [12, 12, 24],
        "bf16-mixed",
        4,
        ["model.channels_last=true", "trainer.enable_progress_bar=false"],
    ),
    "b48_bf16_cl": ([48, 48, 96], "bf16-mixed", 4, ["model.channels_last=true"]),
    "b48_bf16_cl_compile": ([48, 48, 96], "bf16-mixed", 8, ["model.channels_last=true", "training.compile=true"]),
    "b96_bf16_w12_cl": ([96, 96, 192], "bf16-mixed", 12, ["model.channels_last=true"]),
}
EPOCH_VARIANT = "epoch"  # DESED's own epoch (data.epoch_length=min) with validation, bf16 (trainer=gpu), 4 workers


# --------------------------------------------------------------------------- the callback inside train.py
try:
    import pytorch_lightning as pl

    _Callback = pl.Callback
except ImportError:  # the driver below needs none of it
    _Callback = object  # type: ignore[assignment,misc]


class _UtilSampler(threading.Thread):
    """The device's utilisation (percent of time a kernel ran), polled through NVML."""

    def __init__(self, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.period, self.samples, self.stop = period, [], threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(
                int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or 0)
            )
            self._read = lambda: pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
        except Exception:  # no NVML (CPU run): no samples
            self._read = None

    def run(self) -> None:
        while self._read is not None and not self.stop.wait(self.period):
            self.samples.append(self._read())


class StepTiming(_Callback):
    """Host timestamps of every training batch, epoch and validation; writes them as JSON to ``out`` at the end."""

    def __init__(self, out: str, skip: int = 10, sync_debug_step: int = -1, profile_steps: int = 0) -> None:
        self.out, self.skip, self.sync_debug_step = Path(out), skip, sync_debug_step
        self.profile_steps, self._profiler = profile_steps, None
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.epochs: list[dict[str, float]] = []
        self.sync_sites: dict[str, int] = {}
        self.sampler = _UtilSampler()
        self._debugging = False
        self._val_start = 0.0
        self.batch = 0

    def _cuda(self) -> bool:
        import torch

        return torch.cuda.is_available()

    def _sync(self) -> None:
        if self._cuda():
            import torch

            torch.cuda.synchronize()

    # sync debugging: every synchronising CUDA call of two whole steps, by the innermost frame outside torch
    def _record_sync(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchronizing CUDA operation" not in str(message):
            return
        frames = [
            f
            for f in traceback.extract_stack()[:-1]
            if "site-packages/torch/" not in f.filename and "warnings" not in f.filename
        ]
        ours = [f for f in frames if "/sed/" in f.filename or "lightning" in f.filename]
        where = ours[-1] if ours else (frames[-1] if frames else None)
        key = f"{where.filename.split('site-packages/')[-1]}:{where.lineno} {where.line}" if where else "?"
        self.sync_sites[key] = self.sync_sites.get(key, 0) + 1

    def _sync_debug(self, on: bool) -> None:
        import torch

        if on == self._debugging or not self._cuda():
            return
        self._debugging = on
        if on:
            self._saved_showwarning = warnings.showwarning
            warnings.simplefilter("always")
            warnings.showwarning = self._record_sync
            torch.cuda.set_sync_debug_mode("warn")
        else:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = self._saved_showwarning

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = len(self.starts)
        if step == self.sync_debug_step:
            self._sync_debug(True)
        elif step == self.sync_debug_step + 2:
            self._sync_debug(False)
        if step == self.skip:
            self._sync()
            self.sampler.start()
        if self.profile_steps and step == self.skip + 5:  # the kernels of a few steps, after the timed ones began
            import torch

            self._profiler = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            )
            self._profiler.__enter__()
        elif step == self.skip + 5 + self.profile_steps:
            self._end_profile()
        self.batch = int(batch["audio"].shape[0])
        self.starts.append(time.perf_counter())

    def _end_profile(self) -> None:
        if self._profiler is not None:
            self._sync()
            self._profiler.__exit__(None, None, None)
            key = "self_cuda_time_total" if self._cuda() else "self_cpu_time_total"
            self.out.with_suffix(".profile.txt").write_text(
                self._profiler.key_averages().table(sort_by=key, row_limit=40)
            )
            self._profiler = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epochs.append({"start": time.perf_counter()})

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._end_profile()
        self._sync()
        self.epochs[-1]["train_end"] = time.perf_counter()
        self.epochs[-1]["steps"] = trainer.num_training_batches

    def on_validation_start(self, trainer, pl_module) -> None:
        self._sync()
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._sync()
        if not trainer.sanity_checking and self.epochs:
            self.epochs[-1]["validation_s"] = time.perf_counter() - self._val_start

    def on_fit_end(self, trainer, pl_module) -> None:
        self._sync()
        end = time.perf_counter()
        self.sampler.stop.set()
        self._sync_debug(False)
        memory = 0
        if self._cuda():
            import torch

            memory = torch.cuda.max_memory_allocated()
        record = {
            "batch": self.batch,
            "starts": self.starts,
            "ends": self.ends,
            "fit_end": end,
            "skip": self.skip,
            "epochs": self.epochs,
            "util": self.sampler.samples,
            "max_memory_bytes": memory,
            "sync_sites": self.sync_sites,
        }
        self.out.write_text(json.dumps(record))


# --------------------------------------------------------------------------- the driver
def summarise(record: dict[str, Any], timed_epoch: int | None = None) -> dict[str, Any]:
    """clips/s, loader-wait fraction, GPU busy, per-step times from one run's StepTiming record."""
    starts, ends, skip, batch = record["starts"], record["ends"], record["skip"], record["batch"]
    if timed_epoch is None:  # throughput variants: one epoch, steps after the warm-up
        n = len(ends) - skip
        # the wall time of the timed steps: from the end of the last warm-up step to the device's end
        t0 = ends[skip - 1]
        t1 = record["epochs"][0].get("train_end", record["fit_end"])
        waits = [s - e for s, e in zip(starts[skip:], ends[skip - 1 :])]
        wall = t1 - t0
        util = record["util"]
        return {
            "clips_per_s": batch * n / wall,
            "steps": n,
            "wall_s": wall,
            "step_ms": 1e3 * wall / n,
            "loader_wait": sum(waits) / wall,
            "gpu_busy": (sum(util) / len(util) / 100) if util else float("nan"),
            "max_memory_gib": record["max_memory_bytes"] / 2**30,
            "sync_sites": record["sync_sites"],
        }
    epochs = record["epochs"][1:]  # the first pays worker start-up and cuDNN's autotuning
    # Lightning validates inside the training epoch (before on_train_epoch_end): training is from the epoch's start
    # to its last batch's end, the whole epoch to on_train_epoch_end.
    last_end = [max(e for e in ends if e <= ep["train_end"]) for ep in epochs]
    train = [end - ep["start"] for end, ep in zip(last_end, epochs)]
    val = [e.get("validation_s", 0.0) for e in epochs]
    whole = [ep["train_end"] - ep["start"] for ep in epochs]
    return {
        "epochs": len(epochs),
        "steps_per_epoch": epochs[0]["steps"] if epochs else 0,
        "train_s": median(train),
        "validation_s": median(val),
        "epoch_s": median(whole),
        "validation_fraction": median(v / w for v, w in zip(val, whole)),
        "clips_per_s": batch * epochs[0]["steps"] / median(train),
        "max_memory_gib": record["max_memory_bytes"] / 2**30,
    }


def run_variant(
    name: str, root: Path, runs: Path, args: argparse.Namespace, profile: bool = False
) -> dict[str, Any] | None:
    label = f"{name}_profile" if profile else name
    out = runs / f"{label}.json"
    classes = [c.strip() for c in (root / "classes.txt").read_text().splitlines() if c.strip()]
    overrides = [
        f"data.root={root}",
        "data.generate=false",
        f"data.classes=[{','.join(classes)}]",
        f"paths.exp_dir={runs / 'exp'}",
        f"hydra.run.dir={runs / label}",
        "test=false",
        f"+callbacks.timing.out={out}",
        "+callbacks.timing._target_=gpu_training.StepTiming",
        "trainer.enable_progress_bar=true",
        f"+callbacks.timing.skip={2 if name == EPOCH_VARIANT else args.skip}",
    ]
    overrides += ["trainer=gpu"] if args.device == "cuda" else ["trainer=default", "trainer.accelerator=cpu"]
    if name == EPOCH_VARIANT:
        overrides += [f"trainer.max_epochs={args.epochs}", "data.num_workers=4", "trainer.num_sanity_val_steps=0"]
    else:
        bs, precision, workers, extra = VARIANTS[name]
        steps = args.skip + max(args.clips // sum(bs), 10)
        overrides += [
            f"data.batch_sizes=[{','.join(map(str, bs))}]",
            f"trainer.precision={precision}",
            f"data.num_workers={workers}",
            f"data.epoch_length={steps}",
            "trainer.max_epochs=1",
            "trainer.limit_val_batches=0",
            "trainer.num_sanity_val_steps=0",
            *extra,
        ]
        if args.sync_debug:
            overrides.append(f"+callbacks.timing.sync_debug_step={args.skip // 2}")
        if profile:  # a run of its own: profiling slows the steps it records
            overrides.append("+callbacks.timing.profile_steps=5")
        if args.device != "cuda" and precision != "32-true":
            overrides[overrides.index(f"trainer.precision={precision}")] = "trainer.precision=bf16-mixed"
    overrides += args.overrides
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, str(ROOT / "train.py"), "exp=desed_crnn", *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    (runs / f"{label}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not out.is_file():
        note(
            f"{name}: train.py failed ({proc.returncode}) after {time.perf_counter() - t0:.0f} s:\n"
            + (proc.stdout + proc.stderr)[-2500:]
        )
        return None
    record = json.loads(out.read_text())
    summary = summarise(record, timed_epoch=1 if name == EPOCH_VARIANT else None)
    summary["process_s"] = time.perf_counter() - t0
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run of the script")
    parser.add_argument("--scale", type=float, default=0.25, help="fraction of DESED's subset sizes to generate")
    parser.add_argument("--clips", type=int, default=12_000, help="timed training clips per throughput variant")
    parser.add_argument("--skip", type=int, default=10, help="warm-up steps left out of the timing")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the 'epoch' variant (the first is left out)")
    parser.add_argument("--only", nargs="+", default=None, help=f"variants: {', '.join([*VARIANTS, EPOCH_VARIANT])}")
    parser.add_argument("--sync-debug", action="store_true", help="list the host-device synchronisations of a step")
    parser.add_argument(
        "--profile",
        nargs="*",
        default=[],
        metavar="VARIANT",
        help="torch.profiler tables (GPU time by kernel over 5 steps) of these variants, beside the JSON",
    )
    parser.add_argument("--timeout", type=float, default=420, help="seconds per train.py run")
    parser.add_argument("--workdir", default=None, help="folder for generated data and runs (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="also write every summary to this JSON file")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for every variant (after --)")
    args = parser.parse_args()
    print(machine_line(args.device), flush=True)
    work = workdir(args.workdir, "gpu")
    sizes = {k: max(int(round(v * args.scale)), 8) for k, v in DESED_SIZES.items()} | {"test": 4}
    t0 = time.perf_counter()
    generate(work / "data", sizes, 16000)
    note(f"data: {sizes} ({time.perf_counter() - t0:.0f} s)")
    runs = work / f"runs_{time.strftime('%H%M%S')}"
    runs.mkdir(parents=True)
    summaries: dict[str, Any] = {}
    for name in args.only or [*VARIANTS, EPOCH_VARIANT]:
        s = run_variant(name, work / "data", runs, args)
        if s is None:
            continue
        summaries[name] = s
        if name == EPOCH_VARIANT:
            result(
                BENCH,
                f"DESED epoch ({s['steps_per_epoch']} steps of batch 12+12+24, bf16, 4 workers, validation on "
                f"{sizes['validation']} + {round(0.1 * sizes['weak'])} clips every epoch): train "
                f"{s['train_s']:.1f} s ({s['clips_per_s']:,.0f} clips/s), validation + scoring "
                f"{s['validation_s']:.1f} s = {100 * s['validation_fraction']:.0f}% of the epoch; peak GPU "
                f"memory {s['max_memory_gib']:.2f} GiB [median of {s['epochs']} epochs after the first]",
            )
            continue
        bs, precision, workers, extra = VARIANTS[name]
        result(
            BENCH,
            f"{name}: {s['clips_per_s']:,.0f} train clips/s ({s['step_ms']:.1f} ms per step of "
            f"{sum(bs)} clips), loader wait {100 * s['loader_wait']:.1f}% of wall, GPU busy "
            f"{100 * s['gpu_busy']:.0f}%, peak GPU memory {s['max_memory_gib']:.2f} GiB "
            f"[batch {'+'.join(map(str, bs))}, {precision}, {workers} workers{', ' if extra else ''}"
            f"{' '.join(extra)}; {s['steps']} steps after {args.skip}]",
        )
        for site, count in sorted(s["sync_sites"].items(), key=lambda kv: -kv[1]):
            note(f"host sync x{count} in 2 steps: {site}")
    for name in args.profile:
        if run_variant(name, work / "data", runs, args, profile=True) is not None:
            table = (runs / f"{name}_profile.profile.txt").read_text()
            note(f"{name}: GPU time by kernel over 5 steps (torch.profiler), {runs / f'{name}_profile.profile.txt'}:")
            print("\n".join(table.splitlines()[:28]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=1))


if __name__ == "__main__":
    main()
