"""44.1 kHz files: resampling to 16 kHz in the loader vs in the model (``features.input_sample_rate=44100``).

Measured in one process, on one generated dataset of 10-s clips at 44.1 kHz (``sed.synth``):

* loader CPU time per clip: ``SEDDataset.__getitem__`` (decode, mono, crop, labels) at 1 torch thread (what a
  DataLoader worker runs with), with the loader resampling to 16 kHz (the reference, ``data.sample_rate=16000``)
  vs passing the file's 44.1 kHz samples (the model resamples). Process CPU time (``time.process_time``), clips
  interleaved (A B A B ...); medians. Also the in-model resampler's cost per clip (the same kernel, now applied
  by the front-end on the training device, batched) so the moved work is visible.
* end-to-end training clips/s: ``SEDDataModule.train_dataloader`` (workers) + ``SEDModule.training_step`` +
  backward, clipping, Adam and the EMA update, as in ``train_throughput.py``, with the loader resampling
  (reference) vs the model resampling. Blocks of contiguous steps, alternating (reference, candidate, reference,
  ...), each block with fresh workers after one untimed step (no prefetch carried over from the other block).

    python benchmarks/input_resampling.py                          # CPU: quickstart model, batch 2/2/4, 2 workers
    python benchmarks/input_resampling.py --device cuda            # DESED CRNN, batch 12/12/24, 4 workers
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    apply_threads,
    base_parser,
    fmt_rate,
    generate,
    machine_line,
    median,
    note,
    result,
    sync,
    training_device,
    workdir,
)

import sed  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP, as every sed entry point does)

BENCH = "input_resampling"
NATIVE = 44100


RECIPES = {"desed": ("crnn", "mel"), "quickstart": ("crnn_small", "mel_small")}  # (conf/model, conf/features)


def build_config(
    root: Path, batch_sizes: list[int], workers: int, input_rate: int | None, recipe: str = "desed"
) -> dict[str, Any]:
    """What train.py resolves: the recipe's CRNN and log-mel (``desed``: DESED CRNN and 128-band mel;
    ``quickstart``: the small CRNN and 64-band mel), instance min-max scaler, mean teacher."""
    model, features = RECIPES[recipe]
    from omegaconf import OmegaConf

    from sed.run.config import Config

    cfg = OmegaConf.structured(Config)
    cfg.paths.run_dir = str(root / "run")
    cfg.data.root = str(root)
    cfg = OmegaConf.merge(
        cfg,
        {
            "model": OmegaConf.load(ROOT / f"conf/model/{model}.yaml"),
            "training": OmegaConf.load(ROOT / "conf/training/mean_teacher.yaml"),
            "features": OmegaConf.load(ROOT / f"conf/features/{features}.yaml"),
            "scaler": OmegaConf.load(ROOT / "conf/scaler/instance_minmax.yaml"),
            "data": {"batch_sizes": batch_sizes, "num_workers": workers},
        },
    )
    cfg.features.input_sample_rate = input_rate
    return OmegaConf.to_container(cfg, resolve=True)


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs=3,
        default=None,
        metavar=("STRONG", "WEAK", "UNLAB"),
        help="rows per batch (default: 2 2 4 on CPU, DESED's 12 12 24 on CUDA)",
    )
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 2 on CPU, 4 on CUDA)")
    parser.add_argument("--clips", type=int, default=24, help="clips timed per loader configuration")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per block (default: 4 on CPU, 20 on CUDA)")
    parser.add_argument("--blocks", type=int, default=2, help="blocks per configuration (alternating)")
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=None,
        help="model and features (default: desed on CUDA, quickstart on CPU)",
    )
    args = parser.parse_args()
    apply_threads(args.threads)

    import torch

    from sed.data.datamodule import SEDDataModule
    from sed.features.resample import Resample
    from sed.training.ema import ema_factor, update_teacher
    from sed.training.module import SEDModule

    device, gpu = training_device(args.device)
    bs = args.batch_sizes or ([12, 12, 24] if gpu else [2, 2, 4])
    workers = args.workers if args.workers is not None else (4 if gpu else 2)
    steps = args.steps if args.steps is not None else (20 if gpu else 4)
    recipe = args.recipe or ("desed" if gpu else "quickstart")
    batch = sum(bs)
    print(machine_line(args.device), flush=True)
    root = workdir(args.workdir, "resampling")
    per_subset = max(bs) * (steps + 2)  # enough clips for a block without a new epoch
    sizes = {"strong": per_subset, "weak": per_subset, "unlabeled": per_subset, "validation": 1, "test": 1}
    generate(root, sizes, NATIVE)
    classes = [c.strip() for c in (root / "classes.txt").read_text().splitlines() if c.strip()]

    configs = {"loader": None, "model": NATIVE}  # features.input_sample_rate
    modules, dms = {}, {}
    for name, rate in configs.items():
        torch.manual_seed(0)
        module = SEDModule(build_config(root, bs, workers, rate, recipe), classes).to(device).train()
        dm = SEDDataModule(
            root=str(root), classes=classes, batch_sizes=bs, num_workers=workers, epoch_length=10_000, seed=0
        )
        dm.set_encoder(module.encoder, module.frontend.input_sample_rate)
        dm.setup("fit")
        modules[name], dms[name] = module, dm

    # ---------------------------------------------------------------- 1. loader CPU time per clip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sets = {name: dms[name].train_sets["strong"] for name in configs}
    n = min(args.clips, len(sets["loader"]))
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    wall: dict[str, list[float]] = {name: [] for name in configs}
    for name in configs:  # warm-up: page cache, resampling kernel
        sets[name][0]
    for i in range(n):
        for name, ds in sets.items():
            c0, w0 = time.process_time(), time.perf_counter()
            item = ds[i % len(ds)]
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    n_native = int(item["audio"].shape[-1])
    resampler = Resample(NATIVE, 16000)
    clip = torch.randn(1, n_native)
    resample_cpu = []
    for _ in range(max(n // 4, 3)):
        c0 = time.process_time()
        resampler(clip)
        resample_cpu.append(time.process_time() - c0)
    torch.set_num_threads(threads)
    ref, cand = median(cpu["loader"]), median(cpu["model"])
    result(
        BENCH,
        f"loader CPU time per 10-s 44.1 kHz clip: resampling in the loader {1e3 * ref:.1f} ms, at the "
        f"native rate (model resamples) {1e3 * cand:.1f} ms; ratio {ref / cand:.2f}x less CPU in the loader "
        f"(wall {1e3 * median(wall['loader']):.1f} vs {1e3 * median(wall['model']):.1f} ms; median of "
        f"{n} interleaved clips, 1 thread)",
    )
    dev_ms = _device_resample_ms(resampler, n_native, batch, device)
    on = "GPU wall time" if gpu else f"CPU time, {torch.get_num_threads()} threads"
    result(
        BENCH,
        f"the moved work: the same resampling in the model, 1 thread CPU {1e3 * median(resample_cpu):.1f} ms "
        f"per clip; on {args.device} batched ({batch} clips, {on}) {dev_ms:.2f} ms per clip",
    )

    # ---------------------------------------------------------------- 2. end-to-end training clips/s
    t_cfg = modules["loader"].cfg.training
    clip_norm = modules["loader"].cfg.trainer.gradient_clip_val
    optimisers = {name: torch.optim.Adam(m.student.parameters(), lr=t_cfg.lr) for name, m in modules.items()}
    for name, m in modules.items():
        m.log = lambda *a, **k: None  # type: ignore[method-assign]
        m.optimizers = lambda *a, _opt=optimisers[name], **k: _opt  # type: ignore[method-assign]

    def step(name: str, batch_: dict[str, Any], i: int) -> None:
        m, opt = modules[name], optimisers[name]
        loss = m.training_step(batch_, i)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.student.parameters(), clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        update_teacher(m.teacher, m.student, ema_factor(i, t_cfg.ema_factor))

    def block(name: str) -> float:
        loader = dms[name].train_dataloader()
        loader = torch.utils.data.DataLoader(  # fresh workers: nothing prefetched by another block
            loader.dataset,
            batch_sampler=loader.batch_sampler,
            collate_fn=loader.collate_fn,
            num_workers=workers,
            worker_init_fn=loader.worker_init_fn,
            pin_memory=gpu,
        )
        it = iter(loader)
        step(name, _to(next(it), device), 0)  # untimed: worker start-up
        sync(args.device)
        t0 = time.perf_counter()
        for i in range(steps):
            step(name, _to(next(it), device), 1 + i)
        sync(args.device)
        elapsed = time.perf_counter() - t0
        del it
        return batch * steps / elapsed

    rates: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.blocks):
        for name in configs:
            rates[name].append(block(name))
    ref_rate, cand_rate = median(rates["loader"]), median(rates["model"])
    what = (
        f"{recipe} CRNN {sum(p.numel() for p in modules['loader'].student.parameters()):,} params, batch {bs[0]}+{bs[1]}+{bs[2]}, 10 s clips at 44.1 kHz -> 16 kHz, {args.device}, "
        f"{workers} workers, {args.blocks} alternating blocks of {steps} steps"
    )
    note(what)
    blocks = "; ".join(f"{name}: " + ", ".join(f"{r:.3g}" for r in values) for name, values in rates.items())
    result(
        BENCH,
        f"training through the DataLoader: resampling in the loader {fmt_rate(ref_rate, 'clips/s')}, in "
        f"the model {fmt_rate(cand_rate, 'clips/s')}; ratio {cand_rate / ref_rate:.2f}x [{what}; blocks in "
        f"clips/s: {blocks}]",
    )


def _to(batch: dict[str, Any], device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if hasattr(v, "to") else v) for k, v in batch.items()}


def _device_resample_ms(resampler, n_samples: int, batch: int, device) -> float:
    """Milliseconds per clip of the in-model resampler on ``device`` for a batch of clips (median of 5): wall time
    on a GPU, process CPU time on the CPU (wall time on a shared CPU measures the other jobs)."""
    import torch

    r = resampler.to(device)
    x = torch.randn(batch, n_samples, device=device)
    r(x)
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times = []
    for _ in range(5):
        sync(str(device))
        t0 = clock()
        r(x)
        sync(str(device))
        times.append(clock() - t0)
    return 1e3 * median(times) / batch


if __name__ == "__main__":
    main()
