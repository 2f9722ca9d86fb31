"""Audio check: how long checking every listed file's header takes before a run starts (``sed.data.checks``).

Input: ``--files`` tiny WAVs (default 100,000; 10 ms of 16-bit mono, 364 bytes each) in a temporary folder,
listed in an unlabeled TSV, as a dataset of that many clips would be.

* full check: ``sed.data.checks.check_sets`` over all of them, what ``SEDDataModule.setup`` runs (own RIFF
  header parsing of the first 4 KB on a thread pool, truncation and 0-frame checks, messages) = files/s and
  the seconds it would take for 100,000 files.
* reference: a plain serial ``soundfile.info`` loop over a subset (``--subset``), timed next to it; the ratio
  is the full check's files/s over the reference's.
* design choices, on the same subset: ``soundfile.info`` on the same thread pool instead of own parsing,
  and own parsing serially (what the pool adds).
* cold data pages (``--cold``, Linux): the same subset after ``posix_fadvise(DONTNEED)`` evicts the files'
  pages from the page cache (directory entries and inodes stay cached), own parsing serial vs on the pool:
  what the threads buy when reads wait for the disk, as on a first run or a network file system.

    python benchmarks/audio_check.py                  # 100,000 files (~1 min to create, 364 bytes each)
    python benchmarks/audio_check.py --files 10000    # quicker
"""

from __future__ import annotations

import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import (
    base_parser,
    interleaved,
    machine_line,
    median,
    note,
    result,
    workdir,
)

BENCH = "audio_check"


def make_files(folder: Path, n: int, sample_rate: int = 16000) -> list[str]:
    """``n`` identical tiny WAVs (reused when ``folder`` already holds them) and an unlabeled TSV listing them."""
    import numpy as np
    import soundfile as sf

    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    names = [f"clip_{i:07d}.wav" for i in range(n)]
    tsv = folder / "unlabeled.tsv"
    if tsv.is_file() and len(tsv.read_text().splitlines()) == n + 1 and (audio / names[-1]).is_file():
        return names
    buf = io.BytesIO()
    sf.write(
        buf,
        (0.1 * np.sin(np.arange(sample_rate // 100))).astype(np.float32),
        sample_rate,
        format="WAV",
        subtype="PCM_16",
    )
    data = buf.getvalue()
    t0 = time.perf_counter()
    for name in names:
        with open(audio / name, "wb") as f:
            f.write(data)
    tsv.write_text("filename\n" + "".join(f"{name}\n" for name in names))
    note(f"wrote {n} WAVs of {len(data)} bytes in {time.perf_counter() - t0:.1f}s under {audio}")
    return names


def evict(paths: list[str]) -> bool:
    """Drop the files' data pages from the page cache (no root needed); False where the OS cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="tiny WAV files to create and check")
    parser.add_argument("--subset", type=int, default=5_000, help="files for the reference and the alternatives")
    parser.add_argument("--workers", type=int, default=None, help="thread pool size (default: sed.data.checks')")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cold", dest="cold", action="store_false", help="skip the cold page cache runs")
    args = parser.parse_args()

    import soundfile as sf

    from sed.data import checks
    from sed.data.tsv import read_filenames

    print(machine_line(), flush=True)
    folder = workdir(args.workdir, BENCH)
    make_files(folder, args.files)
    files = read_filenames(folder / "unlabeled.tsv")
    clips = checks.ClipSet("unlabeled", folder / "audio", files, files.source, files.lines)
    subset = [os.path.join(folder, "audio", f) for f in files[: args.subset]]
    workers = args.workers or min(32, 4 * (os.cpu_count() or 1))

    def full() -> None:
        checks.check_sets([clips], workers=args.workers)

    def reference() -> None:
        for p in subset:
            sf.info(p)

    def sf_pool() -> None:
        chunks = [subset[i : i + 256] for i in range(0, len(subset), 256)]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda c: [sf.info(p) for p in c], chunks))

    def own_serial() -> None:
        checks.probe_files(subset, workers=1)

    def own_pool() -> None:
        checks.probe_files(subset, workers=args.workers)

    times = interleaved(
        {"full": full, "reference": reference, "sf_pool": sf_pool, "own_serial": own_serial, "own_pool": own_pool},
        repeats=args.repeats,
    )
    rate = {k: (args.files if k == "full" else len(subset)) / median(v) for k, v in times.items()}
    n = args.repeats
    result(
        BENCH,
        f"full check (sed.data.checks.check_sets, {workers} threads) of {args.files:,} WAV files = "
        f"{median(times['full']):.2f} s, {rate['full']:,.0f} files/s ({100_000 / rate['full']:.1f} s per 100,000 files); "
        f"reference serial soundfile.info on {len(subset):,} of them {rate['reference']:,.0f} files/s; "
        f"ratio {rate['full'] / rate['reference']:.1f}x [median of {n}]",
    )
    result(
        BENCH,
        f"header read on {len(subset):,} files, warm page cache: own RIFF parsing serial "
        f"{rate['own_serial']:,.0f} files/s, on {workers} threads {rate['own_pool']:,.0f} files/s; soundfile.info on "
        f"{workers} threads {rate['sf_pool']:,.0f} files/s, serial {rate['reference']:,.0f} files/s; own parsing "
        f"{rate['own_pool'] / rate['sf_pool']:.1f}x soundfile.info on the same pool [median of {n}]",
    )
    if args.cold:
        cold: dict[str, list[float]] = {"own_serial": [], "own_pool": [], "sf_pool": []}
        for _ in range(n):
            for name, fn in (("own_serial", own_serial), ("own_pool", own_pool), ("sf_pool", sf_pool)):
                if not evict(subset):
                    break
                t0 = time.perf_counter()
                fn()
                cold[name].append(time.perf_counter() - t0)
        if all(cold.values()):
            c = {k: len(subset) / median(v) for k, v in cold.items()}
            result(
                BENCH,
                f"header read on {len(subset):,} files, data pages evicted (posix_fadvise DONTNEED): own parsing "
                f"serial {c['own_serial']:,.0f} files/s, on {workers} threads {c['own_pool']:,.0f} files/s "
                f"({c['own_pool'] / c['own_serial']:.1f}x serial); soundfile.info on {workers} threads "
                f"{c['sf_pool']:,.0f} files/s [median of {n}]",
            )


if __name__ == "__main__":
    main()
