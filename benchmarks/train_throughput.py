"""Training throughput of the DESED-size mean-teacher CRNN, and where a step's time goes.

Measured in one process, on one generated dataset (``sed.synth``, 10 s clips):

* pipeline: ``SEDModule.training_step`` (front-end, scaler, mixup, student and teacher forward, losses)
  fed by the project's own DataLoader (``SEDDataModule.train_dataloader``: mixed strong/weak/unlabeled
  batches, workers), then backward, gradient clipping, Adam step and the EMA teacher update, exactly as
  Lightning runs them. Time blocked in ``next(loader)`` (plus the host-to-device copy) is *data wait*,
  the rest is *compute*.
* reference: the same student's forward + backward + Adam step on pre-made tensors (no loader, no
  teacher, no front-end). The ratio pipeline/reference is the median over pairs of steps run back to back
  (pipeline step, reference step), so a change of load on a shared machine hits both; the data-wait
  fraction comes from a contiguous block of pipeline steps (nothing runs between its batches).
* breakdown: one manual mean-teacher step on a pre-made batch with each part timed separately.
* step cost (``--step-repeats``, interleaved rounds on one pre-made batch): the module's whole step
  (``training_step`` + backward + clip + Adam + EMA) as a ratio to the student's own fwd+bwd+Adam (the
  reference), and the teacher's forward as the module runs it (train mode, ``torch.inference_mode``) and as it
  ran before (``no_grad``), each as a ratio to the student's forward with autograd.
* ``--compile`` / ``--channels-first`` / ``--torch-dropout``: ``training.compile=true`` /
  ``model.channels_last=false`` / ``model.fast_dropout=false`` (the reference student gets the same model, and
  stays eager).
* ``--lightning``: the same module trained by a real ``pytorch_lightning.Trainer`` (adds its overhead).

The script runs under the memory allocator train.py runs under (``sed/run/allocator.py``: mimalloc on Linux,
``SED_ALLOCATOR=system`` for glibc's); the ``MACHINE`` line names it.

    python benchmarks/train_throughput.py                       # CPU, batch 2/2/4
    python benchmarks/train_throughput.py --batch-sizes 12 12 24 --device cuda --bf16 --lightning
    python benchmarks/train_throughput.py --batch-sizes 12 12 24 --threads 1 --steps 0 --pairs 0 --breakdown-repeats 0 --step-repeats 3  # DESED size, step cost only
"""

from __future__ import annotations

import copy
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

if __name__ == "__main__":  # the allocator train.py trains under (mimalloc on Linux; SED_ALLOCATOR=system: glibc's)
    from sed.run.allocator import reexec_with_mimalloc

    reexec_with_mimalloc()

BENCH = "train"


def build_config(root: Path, batch_sizes: list[int], workers: int) -> dict[str, Any]:
    """The run configuration train.py would resolve: DESED CRNN, mel front-end, mean-teacher training."""
    from omegaconf import OmegaConf

    from sed.run.config import Config

    cfg = OmegaConf.structured(Config)
    cfg.paths.run_dir = str(root / "run")
    cfg.data.root = str(root)
    cfg = OmegaConf.merge(
        cfg,
        {
            "model": OmegaConf.load(ROOT / "conf/model/crnn.yaml"),
            "training": OmegaConf.load(ROOT / "conf/training/mean_teacher.yaml"),
            "features": OmegaConf.load(ROOT / "conf/features/mel.yaml"),
            "scaler": OmegaConf.load(ROOT / "conf/scaler/instance_minmax.yaml"),
            "data": {"batch_sizes": batch_sizes, "num_workers": workers},
        },
    )
    return OmegaConf.to_container(cfg, resolve=True)


def to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if hasattr(v, "to") else v) for k, v in batch.items()}


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
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed pipeline steps after 1 warm-up step (default: 3 on CPU, 30 on CUDA)",
    )
    parser.add_argument("--ref-steps", type=int, default=1, help="timed reference steps before and after")
    parser.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="interleaved (pipeline, reference) step pairs (default: 2 on CPU, 10 on CUDA)",
    )
    parser.add_argument("--breakdown-repeats", type=int, default=1, help="manual steps timed part by part")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers (default: 2 on CPU as conf/data/embedded.yaml, 4 on CUDA as desed.yaml)",
    )
    parser.add_argument(
        "--file-rate",
        type=int,
        default=16000,
        help="sample rate of the generated files (44100: the loader also resamples)",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the networks (CUDA)")
    parser.add_argument("--lightning", action="store_true", help="also train through pytorch_lightning.Trainer")
    parser.add_argument(
        "--step-repeats",
        type=int,
        default=3,
        help="interleaved rounds of (module step, reference, student fwd, teacher fwds) on one batch",
    )
    parser.add_argument("--compile", action="store_true", help="training.compile=true (torch.compile the networks)")
    parser.add_argument(
        "--channels-first",
        action="store_true",
        help="model.channels_last=false (the default keeps the CNN channels-last)",
    )
    parser.add_argument(
        "--torch-dropout", action="store_true", help="model.fast_dropout=false (nn.Dropout's per-element CPU masks)"
    )
    args = parser.parse_args()
    apply_threads(args.threads)

    import torch

    from sed.data.datamodule import SEDDataModule
    from sed.training.ema import ema_factor, update_teacher
    from sed.training.losses import consistency_losses, supervised_losses
    from sed.training.module import SEDModule

    device, gpu = training_device(args.device)
    bs = args.batch_sizes or ([12, 12, 24] if gpu else [2, 2, 4])
    args.steps = args.steps if args.steps is not None else (30 if gpu else 3)
    args.pairs = args.pairs if args.pairs is not None else (10 if gpu else 2)
    args.workers = args.workers if args.workers is not None else (4 if gpu else 2)
    batch = sum(bs)
    print(machine_line(args.device), flush=True)
    root = workdir(args.workdir, "train")
    sizes = {"strong": 2 * bs[0], "weak": 2 * bs[1], "unlabeled": 2 * bs[2], "validation": 1, "test": 1}
    generate(root, sizes, args.file_rate)
    classes = [c.strip() for c in (root / "classes.txt").read_text().splitlines() if c.strip()]
    config = build_config(root, bs, args.workers)
    if args.compile:
        config["training"]["compile"] = True
    if args.channels_first:
        config["model"]["channels_last"] = False
    if args.torch_dropout:
        config["model"]["fast_dropout"] = False
    clip_norm = config["trainer"]["gradient_clip_val"]
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    module = SEDModule(config, classes).to(device)
    module.train()
    n_params = sum(p.numel() for p in module.student.parameters())
    t_cfg = config["training"]
    optimizer = torch.optim.Adam(module.student.parameters(), lr=t_cfg["lr"], betas=tuple(t_cfg["betas"]))
    # training_step outside a Trainer: logging is a no-op, optimizers() is our Adam.
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    module.optimizers = lambda *a, **k: optimizer  # type: ignore[method-assign]
    step_no = [0]

    def optimise(loss: torch.Tensor) -> None:
        loss.backward()
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(module.student.parameters(), clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_teacher(module.teacher, module.student, ema_factor(step_no[0], t_cfg["ema_factor"]))
        step_no[0] += 1

    # ---------------------------------------------------------------- reference: student alone on tensors
    dm = SEDDataModule(
        root=str(root), classes=classes, batch_sizes=bs, num_workers=args.workers, epoch_length=10_000, seed=0
    )
    dm.set_encoder(module.encoder)
    dm.setup("fit")
    mixed = dm.train_dataloader()  # a mixed strong/weak/unlabeled batch, loaded once in this process
    fixed = to_device(
        next(
            iter(
                torch.utils.data.DataLoader(
                    mixed.dataset, batch_sampler=mixed.batch_sampler, collate_fn=mixed.collate_fn
                )
            )
        ),
        device,
    )
    with torch.no_grad():
        fixed_feats = module.features(fixed["audio"])
    ref_student = copy.deepcopy(module.student)
    ref_opt = torch.optim.Adam(ref_student.parameters(), lr=t_cfg["lr"])

    def reference_step() -> None:
        with torch.autocast(**autocast):
            out = ref_student(fixed_feats)
        loss = supervised_losses(out, fixed["strong"], fixed["weak"], fixed["has_strong"], fixed["has_weak"])
        (loss["strong"] + loss["weak"]).backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    def reference_block(n: int) -> list[float]:
        times = []
        for _ in range(n):
            sync(device)
            t0 = time.perf_counter()
            reference_step()
            sync(device)
            times.append(time.perf_counter() - t0)
        return times

    reference_step()  # warm-up
    ref_times = reference_block(args.ref_steps)

    # ---------------------------------------------------------------- pipeline: DataLoader + training_step
    loader = dm.train_dataloader()
    if device.type == "cuda":
        loader = torch.utils.data.DataLoader(
            loader.dataset,
            batch_sampler=loader.batch_sampler,
            collate_fn=loader.collate_fn,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
            pin_memory=True,
        )
    it = iter(loader)
    waits: list[float] = []
    steps: list[float] = []

    def pipeline_step(i: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        b = to_device(next(it), device)  # noqa: F821  (`del it` below)
        sync(device)
        t1 = time.perf_counter()
        with torch.autocast(**autocast):
            loss = module.training_step(b, i)
        optimise(loss)
        sync(device)
        return t1 - t0, time.perf_counter() - t1

    # Block 1, contiguous (nothing else runs between batches): throughput and data-wait fraction.
    for i in range(1 + args.steps):
        wait, step = pipeline_step(i)
        if i > 0:  # the first batch pays worker start-up
            waits.append(wait)
            steps.append(step)
    # Block 2, pairs (pipeline step, reference step): the ratio, robust to the machine's load changing.
    pair_ratios = []
    for j in range(args.pairs):
        wait, step = pipeline_step(1 + args.steps + j)
        ref = reference_block(1)
        ref_times += ref
        pair_ratios.append(ref[0] / (wait + step))
    ref_times += reference_block(args.ref_steps)
    del it

    # ---------------------------------------------------------------- breakdown of one step
    parts: dict[str, list[float]] = {
        k: [] for k in ("frontend+scaler", "student fwd", "teacher fwd", "losses+backward", "clip+adam", "ema")
    }

    def timed(name: str, fn):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        parts[name].append(time.perf_counter() - t0)
        return out

    for _ in range(args.breakdown_repeats):
        feats = timed("frontend+scaler", lambda: module.features(fixed["audio"]))
        with torch.autocast(**autocast):
            s_out = timed("student fwd", lambda: module.student(feats))  # noqa: B023
            with torch.no_grad():
                t_out = timed("teacher fwd", lambda: module.teacher(feats))  # noqa: B023

        def backward():
            losses = supervised_losses(s_out, fixed["strong"], fixed["weak"], fixed["has_strong"], fixed["has_weak"])  # noqa: B023
            losses.update(consistency_losses(s_out, t_out))  # noqa: B023
            sum(losses.values()).backward()

        timed("losses+backward", backward)

        def adam():
            torch.nn.utils.clip_grad_norm_(module.student.parameters(), clip_norm or 1e9)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        timed("clip+adam", adam)
        timed("ema", lambda: update_teacher(module.teacher, module.student, 0.999))

    # ---------------------------------------------------------------- step cost vs the student's own step
    try:  # the module's teacher forward (a checkout before sed.training.execution ran it under no_grad)
        from sed.training.execution import teacher_forward
    except ImportError:
        teacher_forward = None
    nets = getattr(module, "_train_nets", {"student": module.student, "teacher": module.teacher})

    def module_step() -> None:
        with torch.autocast(**autocast):
            loss = module.training_step(fixed, 0)
        optimise(loss)

    def student_fwd() -> None:
        with torch.autocast(**autocast):
            nets["student"](fixed_feats)

    def teacher_module() -> None:
        with torch.autocast(**autocast):
            if teacher_forward is None:
                with torch.no_grad():
                    nets["teacher"](fixed_feats)
            else:
                teacher_forward(nets["teacher"], fixed_feats)

    def teacher_no_grad() -> None:
        with torch.autocast(**autocast), torch.no_grad():
            nets["teacher"](fixed_feats)

    rounds = {
        "step": module_step,
        "reference": reference_step,
        "student fwd": student_fwd,
        "teacher fwd": teacher_module,
        "teacher fwd no_grad": teacher_no_grad,
    }
    cost: dict[str, list[float]] = {k: [] for k in rounds}
    for _name, fn in rounds.items():  # warm-up (compiles the inference graph when --compile)
        fn()
    for _ in range(args.step_repeats):
        for name, fn in rounds.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            cost[name].append(time.perf_counter() - t0)

    # ---------------------------------------------------------------- report
    total = (sum(waits) + sum(steps)) or float("nan")  # --steps 0: no contiguous block
    pipe_rate = batch * len(steps) / total
    compute_rate = batch / median(steps)
    ref_rate = batch / median(ref_times)
    wait_frac = sum(waits) / total
    prec = "bf16" if args.bf16 else "fp32"
    what = (
        f"CRNN {n_params:,} params, batch {bs[0]}+{bs[1]}+{bs[2]}, 10 s clips at 16 kHz "
        f"(files {args.file_rate} Hz), {args.device} {prec}, {args.workers} workers"
    )
    note(what)
    opts = "".join(
        f", {o}"
        for o, on in (
            ("compile", args.compile),
            ("channels-first", args.channels_first),
            ("torch dropout", args.torch_dropout),
        )
        if on
    )
    what = what + opts
    c = {k: median(v) for k, v in cost.items()}
    result(
        BENCH,
        f"mean-teacher step on one batch (training_step + backward + clip + Adam + EMA) = "
        f"{1e3 * c['step']:.0f} ms = {c['step'] / c['reference']:.2f}x the student's own fwd+bwd+Adam "
        f"({1e3 * c['reference']:.0f} ms, eager) [{what}; median of {args.step_repeats} interleaved rounds]",
    )
    result(
        BENCH,
        f"teacher forward as the module runs it (train mode, "
        f"{'no_grad' if teacher_forward is None else 'inference_mode'}) = {1e3 * c['teacher fwd']:.0f} ms = "
        f"{c['teacher fwd'] / c['student fwd']:.2f}x the student's forward with autograd "
        f"({1e3 * c['student fwd']:.0f} ms); under no_grad {1e3 * c['teacher fwd no_grad']:.0f} ms = "
        f"{c['teacher fwd no_grad'] / c['student fwd']:.2f}x",
    )
    if not steps:  # --steps 0: only the step cost
        return
    result(
        BENCH,
        f"mean-teacher step through DataLoader = {fmt_rate(pipe_rate, 'clips/s')} "
        f"(compute only {fmt_rate(compute_rate, 'clips/s')}); reference student fwd+bwd+adam on tensors "
        f"= {fmt_rate(ref_rate, 'clips/s')}; ratio {median(pair_ratios):.2f}x (median of "
        f"{len(pair_ratios)} interleaved pairs) [{what}; {len(steps)} contiguous steps, "
        f"{len(ref_times)} ref steps]",
    )
    result(
        BENCH,
        f"data wait = {100 * wait_frac:.1f}% of wall time (median wait {1e3 * median(waits):.0f} ms vs "
        f"step {1e3 * median(steps):.0f} ms per batch, {args.workers} workers)",
    )
    med = {k: median(v) for k, v in parts.items()}
    whole = sum(med.values())
    ref_part = med["student fwd"] + med["losses+backward"] + med["clip+adam"]
    result(
        BENCH,
        "step breakdown: "
        + ", ".join(f"{k} {100 * v / whole:.1f}%" for k, v in med.items())
        + f" (sum {1e3 * whole:.0f} ms = {whole / ref_part:.2f}x student fwd+bwd+adam)",
    )

    if args.lightning:
        lightning_rate, lightning_gap = run_lightning(config, classes, root, bs, args, device)
        result(
            BENCH,
            f"same step through pytorch_lightning.Trainer = {fmt_rate(lightning_rate, 'clips/s')}; "
            f"ratio to the manual loop {lightning_rate / pipe_rate:.2f}x, to the reference "
            f"{lightning_rate / ref_rate:.2f}x (time between batches {100 * lightning_gap:.1f}%)",
        )


def run_lightning(config, classes, root: Path, bs, args, device) -> tuple[float, float]:
    """clips/s of ``Trainer.fit`` over the timed steps, and the fraction of time between batches."""
    import pytorch_lightning as pl
    import torch

    from sed.data.datamodule import SEDDataModule
    from sed.training.module import SEDModule

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []
            self.ends: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            sync(device)
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync(device)
            self.ends.append(time.perf_counter())

    torch.manual_seed(0)
    module = SEDModule(config, classes)
    dm = SEDDataModule(
        root=str(root), classes=classes, batch_sizes=bs, num_workers=args.workers, epoch_length=10_000, seed=0
    )
    dm.set_encoder(module.encoder)
    clock = Clock()
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed" if args.bf16 else "32-true",
        max_steps=1 + args.steps,
        gradient_clip_val=config["trainer"]["gradient_clip_val"],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        default_root_dir=str(root / "lightning"),
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=dm)
    starts, ends = clock.starts[1:], clock.ends[1:]
    wall = ends[-1] - clock.ends[0]
    gaps = sum(s - e for s, e in zip(starts, clock.ends[:-1]))
    return sum(bs) * len(ends) / wall, gaps / wall


if __name__ == "__main__":
    main()
