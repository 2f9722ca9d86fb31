"""Training clips/s of the frozen-encoder recipe (exp=beats_crnn's network) with its embeddings read from the disk
cache, against the same recipe encoding every clip on the fly, and against the plain CRNN; disk size per hour.

One mean-teacher training step (``SEDModule.training_step``: front-end, encoder embeddings, mixup, student and
teacher, losses; then backward, Adam step, EMA update) on one pre-made batch of random 10-s clips at 16 kHz, for
four networks built in this process and timed round-robin (A B C A B C ...), so a burst of load on a shared
machine hits all alike; wall time and this process's CPU time (which other jobs on the machine disturb less):

* ``crnn``: the plain CRNN (the reference);
* ``disk``: model=crnn_beats, frozen BEATs, embeddings read from ``model.encoder.cache_dir`` at every step (the
  in-memory cache off: what a run reads after its first epoch when the cache does not fit in memory, and what every
  later run and seed reads from its first step);
* ``memory``: the same with the in-memory cache on (the default: read from disk once per run, then from memory);
* ``fly``: the same encoding every clip at every step (``cache=false``, no cache folder).

The first three cost about the same and are timed round-robin; ``fly`` is timed round-robin with ``crnn`` apart
(it runs much longer, and whatever runs right after it pays for the caches it evicted).

The CRNN is the recipe's (``--crnn desed``: DESED's 7 blocks, 128 mels, hop 256) or the quick start's
(``--crnn quick``). BEATs has random weights of the published output (768 dims, one frame every 0.16 s): 2 layers
(``--beats small``) or the published 12 (``--beats base``); only ``fly`` depends on its depth. Disk size: the bytes
of the entries the batch wrote (float32 and float16), per hour of audio.

    python benchmarks/embedding_cache.py [--crnn desed|quick] [--beats small|base] [--batch 12] [--repeats 3]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from _common import apply_threads, base_parser, machine_line, median, note, result, sync

BENCH = "embedding_cache"
BEATS = {
    "small": dict(encoder_layers=2, encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12),
    "base": dict(encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12),
}
CRNNS = {
    "desed": (
        {
            "filters": [16, 32, 64, 128, 128, 128, 128],
            "pooling": [[2, 2], [2, 2], [1, 2], [1, 2], [1, 2], [1, 2], [1, 2]],
        },
        {"features.n_fft": 2048, "features.win_length": 2048, "features.hop_length": 256, "features.n_mels": 128},
    ),
    "quick": (
        {"filters": [8, 16, 32, 64], "pooling": [[1, 4], [2, 4], [1, 2], [1, 2]], "rnn_hidden": 32},
        {"features.n_fft": 1024, "features.win_length": 1024, "features.hop_length": 512, "features.n_mels": 64},
    ),
}
SECONDS = 10.0


def build_module(crnn: str, encoder: dict | None, device: str):
    import torch
    from omegaconf import OmegaConf

    from sed.run.config import Config
    from sed.training.module import SEDModule

    net, features = CRNNS[crnn]
    cfg = OmegaConf.structured(Config)
    model = {"_target_": "sed.models.crnn.CRNN", **net}
    if encoder is not None:
        model = {
            **model,
            "_target_": "sed.models.pretrained_crnn.PretrainedCRNN",
            "fusion": "concat_then_project",
            "encoder": {"_target_": "sed.models.encoders.published.BEATsEncoder", **encoder},
        }
    for key, value in {
        "paths.run_dir": "unused",
        "data.root": "unused",
        **features,
        "model": model,
        "training.mixup.domain": "linear",
    }.items():
        OmegaConf.update(cfg, key, value, merge=False)
    torch.manual_seed(0)
    return SEDModule(OmegaConf.to_container(cfg, resolve=True), [f"c{i}" for i in range(10)]).to(device).train()


def round_robin(fns: dict, repeats: int, device: str) -> dict[str, list[tuple[float, float]]]:
    """``(wall s, CPU s of this process)`` of each call, ``repeats`` rounds in turn after one untimed round."""
    for fn in fns.values():
        fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--crnn", choices=sorted(CRNNS), default="desed")
    parser.add_argument("--beats", choices=sorted(BEATS), default="small")
    parser.add_argument("--batch", type=int, default=12, help="clips per step, a third per labelled subset")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    apply_threads(args.threads)
    print(machine_line(args.device))
    folder = Path(tempfile.mkdtemp(prefix="sed-embedding-cache-"))  # ours: removed at the end
    try:
        run(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(args, folder: Path) -> None:
    import torch

    from sed.models.encoders import audio_encoder
    from sed.training.ema import update_teacher

    beats = {"config": {**BEATS[args.beats], "dropout": 0.0}}
    modules = {
        "crnn": build_module(args.crnn, None, args.device),
        "disk": build_module(args.crnn, {**beats, "cache": False, "cache_dir": str(folder / "f32")}, args.device),
        "memory": build_module(args.crnn, {**beats, "cache_dir": str(folder / "f32")}, args.device),
        "fly": build_module(args.crnn, {**beats, "cache": False}, args.device),
    }
    gen = torch.Generator().manual_seed(0)
    n, third = args.batch, args.batch // 3
    batch = {
        "audio": (0.1 * torch.randn(n, int(SECONDS * 16000), generator=gen)).to(args.device),
        "strong": torch.zeros(n, 10, modules["crnn"].encoder.n_frames, device=args.device),
        "weak": torch.zeros(n, 10, device=args.device),
        "has_strong": (torch.arange(n) < third).to(args.device),
        "has_weak": ((torch.arange(n) >= third) & (torch.arange(n) < 2 * third)).to(args.device),
        "filename": [f"{i}.wav" for i in range(n)],
    }
    batch["subset_rows"] = {"strong": slice(0, third), "weak": slice(third, 2 * third)}

    def stepper(module):
        opt = torch.optim.Adam(module.student.parameters(), lr=1e-3)
        module.optimizers = lambda: opt  # training_step logs the learning rate
        module.log = lambda *a, **k: None

        def step() -> None:
            opt.zero_grad()
            module.training_step(dict(batch), 0).backward()
            opt.step()
            update_teacher(module.teacher, module.student, 0.999)

        return step

    steps = {name: stepper(module) for name, module in modules.items()}
    t0 = time.perf_counter()
    steps["disk"]()  # the first epoch: encodes the batch and writes the cache
    note(f"first step of 'disk' (encodes {n} clips and writes them): {time.perf_counter() - t0:.2f}s")
    # The cached variants cost about what the CRNN costs: timed round-robin among themselves. Encoding on the fly
    # costs much more and disturbs whatever runs after it (caches, allocator): timed against the CRNN apart.
    cached = round_robin({k: steps[k] for k in ("crnn", "disk", "memory")}, args.repeats, args.device)
    fly = round_robin({k: steps[k] for k in ("crnn", "fly")}, max(args.repeats // 2, 1), args.device)
    rate, cpu_rate = {}, {}
    for clock, out in ((0, rate), (1, cpu_rate)):
        out.update({name: n / median(t[clock] for t in times) for name, times in cached.items()})
        scale = median(t[clock] for t in fly["crnn"]) / median(t[clock] for t in fly["fly"])
        out["fly"] = out["crnn"] * scale  # its ratio to the CRNN, on the round-robin's scale
    enc = audio_encoder(modules["disk"].student)
    assert enc.counts["computed"] == n and enc.counts["disk"] >= n * args.repeats, enc.counts  # really from disk
    f32 = sum(p.stat().st_size for p in (folder / "f32").rglob("*.npy"))
    half = build_module(args.crnn, {**beats, "cache_dir": str(folder / "f16"), "cache_dtype": "float16"}, args.device)
    audio_encoder(half.student).embed(batch["audio"], cache=True)
    f16 = sum(p.stat().st_size for p in (folder / "f16").rglob("*.npy"))
    per_hour = 3600 / (n * SECONDS) / 2**20
    params = sum(p.numel() for p in enc.parameters())
    result(
        BENCH,
        f"{args.crnn} CRNN + frozen BEATs-{args.beats} ({params / 1e6:.1f}M params, random), batch {n} of "
        f"10-s clips, {args.device}: training clips/s: plain CRNN {rate['crnn']:.2f}; disk cache "
        f"{rate['disk']:.2f} ({rate['disk'] / rate['crnn']:.2f}x the CRNN); memory cache "
        f"{rate['memory']:.2f} ({rate['memory'] / rate['crnn']:.2f}x); on the fly {rate['fly']:.2f} "
        f"({rate['fly'] / rate['crnn']:.2f}x); disk cache {rate['disk'] / rate['fly']:.1f}x faster than "
        f"on the fly [median of {args.repeats}; on the fly: of {max(args.repeats // 2, 1)}]",
    )
    ratios = ", ".join(f"{k} {cpu_rate[k] / cpu_rate['crnn']:.2f}x" for k in ("disk", "memory", "fly"))
    result(
        BENCH,
        f"per CPU-second of this process instead (other jobs on the machine disturb it less): {ratios} the "
        f"CRNN ({cpu_rate['crnn']:.2f} clips per CPU-s)",
    )
    result(
        BENCH,
        f"disk per hour of audio (768 dims, 0.16-s frames): {f32 * per_hour:.0f} MiB in float32, "
        f"{f16 * per_hour:.0f} MiB in float16 ({n} entries each)",
    )


if __name__ == "__main__":
    main()
