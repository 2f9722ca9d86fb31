"""Data loading: clips/s of SEDDataset + DataLoader, and peak memory as the dataset grows.

Input: 10 s clips generated at 44.1 kHz (``sed.synth``) in a temporary folder; the dataset decodes them,
resamples to 16 kHz, crops at random and encodes the strong labels, exactly as in training.

* loader: ``SEDDataset(strong=..., random_crop=True)`` + ``DataLoader(collate=sed.data.datasets.collate)``
  with 0, 1, 2 workers (``--workers``), without and with ``cache_dir`` (cold = first epoch, which fills
  the cache; warm = later epochs, which read the memory-mapped ``.npy``). Persistent workers, first epoch
  untimed (worker start-up), as in training.
* reference: ``soundfile.read`` of the same files, one after the other, measured next to each loader
  configuration (the OS page cache holds the files for both).
* per-clip breakdown (one process, 1 torch thread like a DataLoader worker) and a cProfile of
  ``__getitem__`` (own time per function): decode, resample with
  ``torchaudio.functional.resample`` (what the dataset calls) and with a ``torchaudio.transforms.Resample``
  whose kernel is built once, label encoding.
  Also the cost of writing one cache entry (``sed.utils.io.atomic_open``, which fsyncs) against a plain
  ``np.save`` + rename.
* memory: peak memory of the process (RSS) and its workers (private memory, USS: what each forked worker
  added on top of the pages it shares with the parent) over one epoch for growing dataset lengths (``--rss-sizes``; hard links
  to the generated files under new names), each size in a fresh process; and, for the largest, the
  maximum in each quarter of the epoch. Streaming means the second half does not grow over the first
  (allocator warm-up in the first batches is expected; growth with clips seen is not).

    python benchmarks/data_loading.py
    python benchmarks/data_loading.py --clips 200 --workers 0 2 4 --rss-sizes 100 1000 10000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from pathlib import Path

from _common import (
    PeakRSS,
    apply_threads,
    base_parser,
    fmt_rate,
    generate,
    interleaved,
    machine_line,
    median,
    note,
    result,
    workdir,
)

BENCH = "data"


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=48, help="distinct generated files")
    parser.add_argument("--file-rate", type=int, default=44100, help="sample rate of the generated files")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per configuration")
    parser.add_argument("--rss-sizes", type=int, nargs="+", default=[96, 768], help="dataset lengths for memory")
    parser.add_argument("--rss-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=4 << 20,
        help="also run the largest memory epoch with workers calling mallopt(M_MMAP_THRESHOLD, this) (0: skip)",
    )
    parser.add_argument("--rss-child", type=int, nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    apply_threads(args.threads)
    if args.rss_child:
        rss_child_main(Path(args.workdir), *args.rss_child, args.batch_size, args.mmap_threshold)
        return

    import numpy as np
    import soundfile as sf
    import torch
    from torch.utils.data import DataLoader

    from sed.data.datasets import SEDDataset, collate
    from sed.data.encoder import LabelEncoder
    from sed.data.tsv import read_strong

    print(machine_line(), flush=True)
    root = workdir(args.workdir, "data")
    layout = generate(
        root, {"strong": args.clips, "weak": 0, "unlabeled": 0, "validation": 1, "test": 1}, args.file_rate
    )
    classes = [c.strip() for c in layout.classes_file.read_text().splitlines() if c.strip()]
    encoder = LabelEncoder(classes, sample_rate=16000, hop_length=256, clip_duration=10.0, time_pooling=4)
    strong = read_strong(layout.strong_tsv, classes)
    filenames = sorted(strong["filename"].unique())
    paths = [os.fspath(layout.strong_audio / f) for f in filenames]
    info = sf.info(paths[0])
    note(
        f"{len(paths)} files, {info.samplerate} Hz, {info.channels} ch, {info.duration:.1f} s; "
        f"batch {args.batch_size}; target 16 kHz"
    )

    def raw_read_pass() -> None:
        for p in paths:
            sf.read(p, dtype="float32", always_2d=True)

    def raw_rate(repeats: int = 3) -> float:
        raw_read_pass()
        return len(paths) / median(_time(raw_read_pass) for _ in range(repeats))

    def make_dataset(names, audio_dir, cache_dir=None, labels=strong) -> SEDDataset:
        return SEDDataset(
            audio_dir, names, encoder, 16000, 10.0, strong=labels, random_crop=True, cache_dir=cache_dir, seed=0
        )

    def epoch(loader) -> int:
        n = 0
        for batch in loader:
            n += batch["audio"].shape[0]
        return n

    # ---------------------------------------------------------------- loader throughput
    lines = []
    cache_root = root / "cache"
    for cached in (False, True):
        for w in args.workers:
            if cached and cache_root.exists():
                shutil.rmtree(cache_root)
            ds = make_dataset(filenames, layout.strong_audio, cache_root if cached else None)
            loader = DataLoader(
                ds,
                batch_size=args.batch_size,
                shuffle=True,
                collate_fn=collate,
                num_workers=w,
                persistent_workers=w > 0,
            )
            ref = raw_rate()
            first = _time(lambda: epoch(loader))  # noqa: B023, F821  (worker start-up, + cache fill when cached; called here, `del loader` below)
            times = [_time(lambda: epoch(loader)) for _ in range(args.epochs)]  # noqa: B023, F821
            ref = median([ref, raw_rate()])
            rate = len(ds) / median(times)
            label = f"{w} worker{'s' if w != 1 else ''}, cache {'on' if cached else 'off'}"
            extra = ""
            if cached:
                extra = f"; cold first epoch {fmt_rate(len(ds) / first, 'clips/s')} (decode+resample+write .npy)"
            lines.append((label, rate, ref, extra))
            result(
                BENCH,
                f"SEDDataset+DataLoader {label}: {fmt_rate(rate, 'clips/s')} "
                f"({rate * 10:.0f}x real time); reference soundfile.read {fmt_rate(ref, 'clips/s')}; "
                f"ratio {rate / ref:.3f}x{extra}",
            )
            del loader

    # ---------------------------------------------------------------- per-clip breakdown
    import torchaudio

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a DataLoader worker runs with
    wav, rate = sf.read(paths[0], dtype="float32", always_2d=True)
    mono = torch.from_numpy(np.ascontiguousarray(wav.T)).mean(0)
    resampler = torchaudio.transforms.Resample(rate, 16000)
    ev = strong[strong["filename"] == filenames[0]]
    events = (
        ev["onset"].to_numpy(float),
        ev["offset"].to_numpy(float),
        ev["event_label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64),
    )
    ds0 = make_dataset(filenames, layout.strong_audio)
    from sed.utils.io import atomic_open

    resampled = resampler(mono).numpy()
    scratch = root / "scratch"
    scratch.mkdir(exist_ok=True)

    def write_atomic() -> None:
        with atomic_open(scratch / "a.npy", "wb") as f:
            np.save(f, resampled)

    def write_plain() -> None:
        tmp = scratch / ".b.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, resampled)
        os.replace(tmp, scratch / "b.npy")

    parts = interleaved(
        {
            "decode": lambda: sf.read(paths[0], dtype="float32", always_2d=True),
            "resample (functional)": lambda: torchaudio.functional.resample(mono, rate, 16000),
            "resample (kernel once)": lambda: resampler(mono),
            "label encode": lambda: encoder.encode_arrays(*events, shift=1.0),
            "__getitem__": lambda: ds0[0],
            "cache write (atomic_open, fsync)": write_atomic,
            "cache write (np.save+rename)": write_plain,
        },
        repeats=15,
    )
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for i in range(len(ds0)):
        ds0[i]
    prof.disable()
    stats = pstats.Stats(prof)
    top = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:6]  # by own time
    torch.set_num_threads(threads)
    med = {k: 1e3 * median(v) for k, v in parts.items()}
    result(
        BENCH,
        "__getitem__ profile (own time, 1 thread): "
        + ", ".join(f"{_where(key)} {100 * v[2] / stats.total_tt:.0f}%" for key, v in top),
    )
    result(
        BENCH,
        "per clip (1 thread): "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items())
        + f"; resample is {med['resample (functional)'] / med['__getitem__']:.0%} of __getitem__, "
        f"kernel-once resample {med['resample (functional)'] / med['resample (kernel once)']:.2f}x faster, "
        f"fsync makes a cache write "
        f"{med['cache write (atomic_open, fsync)'] / med['cache write (np.save+rename)']:.1f}x slower",
    )

    # ---------------------------------------------------------------- memory as the dataset grows
    rss_dir = root / "rss_audio"
    rss_dir.mkdir(exist_ok=True)
    for i in range(max(args.rss_sizes)):
        dst = rss_dir / f"grow_{i:06d}.wav"
        if not dst.exists():
            os.link(paths[i % len(paths)], dst)
    for w in args.rss_workers:
        runs = {n: _rss_child(root, n, w, args.batch_size) for n in sorted(args.rss_sizes)}
        big_n = max(runs)
        big = runs[big_n]
        quarters = big["quarters"]
        second_half = max(quarters[2:]) - max(quarters[:2])
        flat = second_half < 0.05 * big["peak"] + 16
        result(
            BENCH,
            f"peak memory (RSS + workers' USS), {w} workers, no cache, fresh process per size: "
            + ", ".join(f"{n} clips {r['peak']:.0f} MiB" for n, r in runs.items())
            + f"; during the {big_n}-clip epoch, max per quarter "
            + " / ".join(f"{q:.0f}" for q in quarters)
            + f" MiB: second half {second_half:+.0f} MiB over the first "
            f"({'flat' if flat else 'NOT flat'}), {fmt_rate(big['rate'], 'clips/s')}",
        )
        if args.mmap_threshold and w > 0:
            # Before/after of the proposed fix: glibc's dynamic mmap threshold lets freed multi-MB buffers
            # (decoded audio, resampled audio, collated batches) pile up on the heap of each worker.
            # Interleaved with a second default run: separate processes, so load changes hit both.
            fixed_runs = [_rss_child(root, big_n, w, args.batch_size, mallopt=args.mmap_threshold)]
            default_runs = [big, _rss_child(root, big_n, w, args.batch_size)]
            fixed_runs.append(_rss_child(root, big_n, w, args.batch_size, mallopt=args.mmap_threshold))
            fixed = {
                "peak": median(r["peak"] for r in fixed_runs),
                "rate": median(r["rate"] for r in fixed_runs),
                "quarters": [median(q) for q in zip(*(r["quarters"] for r in fixed_runs))],
            }
            big = {"peak": median(r["peak"] for r in default_runs), "rate": median(r["rate"] for r in default_runs)}
            fq = fixed["quarters"]
            result(
                BENCH,
                f"same {big_n}-clip epoch, {w} workers, worker_init_fn mallopt(M_MMAP_THRESHOLD, "
                f"{args.mmap_threshold >> 10} KiB): "
                f"peak {fixed['peak']:.0f} MiB (vs {big['peak']:.0f}), max per quarter "
                + " / ".join(f"{q:.0f}" for q in fq)
                + f" MiB, second half {max(fq[2:]) - max(fq[:2]):+.0f} MiB; "
                f"{fmt_rate(fixed['rate'], 'clips/s')} (vs {fmt_rate(big['rate'], 'clips/s')}) [medians of 2 runs each]",
            )


def _rss_child(root: Path, n: int, workers: int, batch_size: int, mallopt: int = 0) -> dict:
    """Peak and per-quarter memory of one epoch over ``n`` clips, measured in a fresh process."""
    import json
    import subprocess
    import sys

    cmd = [
        sys.executable,
        __file__,
        "--rss-child",
        str(n),
        str(workers),
        "--workdir",
        str(root),
        "--batch-size",
        str(batch_size),
        "--mmap-threshold",
        str(mallopt),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RSS "))[4:])


def fixed_mmap_threshold(nbytes: int):
    """A DataLoader ``worker_init_fn`` fixing glibc's mmap threshold (which also stops its dynamic growth),
    so freed buffers above ``nbytes`` go back to the OS instead of fragmenting the worker's heap."""

    def init(worker_id: int) -> None:
        import ctypes
        import ctypes.util

        M_MMAP_THRESHOLD = -3
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_MMAP_THRESHOLD, int(nbytes))
        except (OSError, AttributeError):  # not glibc
            pass

    return init


def rss_child_main(root: Path, n: int, workers: int, batch_size: int, mallopt: int = 0) -> None:
    import json

    import torch
    from torch.utils.data import DataLoader

    from sed.data.datasets import SEDDataset, collate
    from sed.data.encoder import LabelEncoder
    from sed.data.tsv import read_strong
    from sed.synth import dataset_layout

    torch.set_num_threads(1)  # memory, not speed: keep the main process out of thread stalls
    layout = dataset_layout(root)
    classes = [c.strip() for c in layout.classes_file.read_text().splitlines() if c.strip()]
    encoder = LabelEncoder(classes, sample_rate=16000, hop_length=256, clip_duration=10.0, time_pooling=4)
    strong = read_strong(layout.strong_tsv, classes)
    sources = sorted(strong["filename"].unique())
    names = [f"grow_{i:06d}.wav" for i in range(n)]
    rename = {src: [] for src in sources}
    for i, name in enumerate(names):
        rename[sources[i % len(sources)]].append(name)
    labels = strong.assign(filename=strong["filename"].map(rename)).explode("filename").dropna(subset=["filename"])
    ds = SEDDataset(root / "rss_audio", names, encoder, 16000, 10.0, strong=labels, random_crop=True)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=workers,
        worker_init_fn=fixed_mmap_threshold(mallopt) if mallopt and workers else None,
    )
    n_batches = len(loader)
    quarters = [0.0] * 4
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        for i, _ in enumerate(loader):
            q = min(3, 4 * i // n_batches)
            quarters[q] = max(quarters[q], peak.samples[-1] if peak.samples else 0.0)
    rate = n / (time.perf_counter() - t0)
    print("RSS " + json.dumps({"peak": peak.peak, "quarters": quarters, "rate": rate}), flush=True)


def _where(key: tuple) -> str:
    filename, line, func = key
    if filename == "~":  # C functions: "<built-in method torch.conv1d>", "<method 'reshape' of '...' objects>"
        m = re.match(r"<(?:built-in method |method ')([\w.]+)", func)
        return m.group(1) if m else func
    return f"{Path(filename).name}:{func}"


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
