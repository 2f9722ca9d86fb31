"""Turn a DESED download into this project's dataset layout, resampled once.

    python recipes/desed/prepare.py DESED_ROOT OUT_DIR [--sample-rate 16000] [--workers N] [--synth-root DIR]

Subsets (DESED → here):

    synthetic21_train soundscapes     → audio/train/strong,  metadata/train/strong.tsv
    weak                              → audio/train/weak,    metadata/train/weak.tsv
    unlabel_in_domain                 → audio/train/unlabeled, metadata/train/unlabeled.tsv
    synthetic21_validation soundscapes→ audio/validation,    metadata/validation/{validation,durations}.tsv
    real validation                   → audio/test,          metadata/test/{test,durations}.tsv

Audio is read with soundfile, resampled with ``torchaudio.functional.resample`` and written atomically, so an
interrupted run leaves no truncated file and a rerun skips every file already converted. Clips listed in an
annotation file but absent (or unreadable) in the download — YouTube clips often are — are left out of the
output TSVs and listed in ``OUT_DIR/missing_files.tsv``. Metadata is written after the audio, ``.complete``
last. See recipes/desed/README.md for the expected input layout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import soundfile as sf

from sed.data.tsv import (
    AnnotationError,
    read_durations,
    read_filenames,
    read_strong,
    read_weak,
    write_durations,
    write_strong,
    write_weak,
)
from sed.synth import dataset_layout
from sed.utils.io import atomic_open, atomic_write_text

logger = logging.getLogger("prepare_desed")

DESED_CLASSES = [
    "Alarm_bell_ringing",
    "Blender",
    "Cat",
    "Dishes",
    "Dog",
    "Electric_shaver_toothbrush",
    "Frying",
    "Running_water",
    "Speech",
    "Vacuum_cleaner",
]
_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}


class PrepareError(RuntimeError):
    """The DESED copy is incomplete or unusable; the message names the paths."""


@dataclass(frozen=True)
class Subset:
    """One DESED subset and where it goes (paths relative to the DESED root, or to the synthetic root)."""

    name: str  # this project's subset: strong | weak | unlabeled | validation | test
    kind: str  # strong | weak | unlabeled
    audio: str
    tsv: Optional[str]
    durations: Optional[str] = None  # shipped durations TSV, if any (else computed from the audio)
    synthetic: bool = False  # under --synth-root
    tsv_required: bool = True


SUBSETS: tuple[Subset, ...] = (
    Subset(
        "strong",
        "strong",
        "audio/train/synthetic21_train/soundscapes",
        "metadata/train/synthetic21_train/soundscapes.tsv",
        synthetic=True,
    ),
    Subset("weak", "weak", "audio/train/weak", "metadata/train/weak.tsv"),
    Subset(
        "unlabeled",
        "unlabeled",
        "audio/train/unlabel_in_domain",
        "metadata/train/unlabel_in_domain.tsv",
        tsv_required=False,
    ),
    Subset(
        "validation",
        "strong",
        "audio/validation/synthetic21_validation/soundscapes",
        "metadata/validation/synthetic21_validation/soundscapes.tsv",
        durations="metadata/validation/synthetic21_validation/durations.tsv",
        synthetic=True,
    ),
    Subset(
        "test",
        "strong",
        "audio/validation/validation",
        "metadata/validation/validation.tsv",
        durations="metadata/validation/validation_durations.tsv",
    ),
)


# ---------------------------------------------------------------------- audio
def convert(src: str, dst: str, sample_rate: int) -> tuple[str, str, Optional[float], str]:
    """Resample one file to ``sample_rate`` (channels and sample format kept) unless ``dst`` already is.

    Returns ``(src, status, duration_seconds, message)`` with status ``done``, ``skipped`` or ``failed``;
    never raises, so one corrupt clip does not stop the whole preparation.
    """
    try:
        if os.path.exists(dst):
            try:
                info = sf.info(dst)
                if info.samplerate == sample_rate and info.frames > 0:
                    return src, "skipped", info.frames / info.samplerate, ""
            except (sf.LibsndfileError, RuntimeError, OSError):
                pass  # an unreadable leftover: convert again
        info = sf.info(src)
        if info.frames == 0:
            return src, "failed", None, "empty audio file"
        if info.samplerate == sample_rate:
            with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            return src, "done", info.frames / info.samplerate, ""
        import torch
        import torchaudio.functional as AF

        data, rate = sf.read(src, dtype="float32", always_2d=True)
        wav = AF.resample(torch.from_numpy(np.ascontiguousarray(data.T)), rate, sample_rate).T.numpy()
        fmt = _FORMATS.get(Path(dst).suffix.lower(), "WAV")
        subtype = info.subtype if sf.check_format(fmt, info.subtype) else sf.default_subtype(fmt)
        if subtype and subtype.startswith(("PCM", "ULAW", "ALAW")):
            wav = np.clip(wav, -1.0, 1.0)  # resampling can overshoot full scale slightly
        with atomic_open(dst, "wb") as fout:
            sf.write(fout, wav, sample_rate, subtype=subtype, format=fmt)
        return src, "done", wav.shape[0] / sample_rate, ""
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as err:
        return src, "failed", None, str(err)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # parallelism comes from the processes


def _convert_star(job: tuple[str, str, int]) -> tuple[str, str, Optional[float], str]:
    return convert(*job)


def convert_all(jobs: Sequence[tuple[str, str, int]], workers: int) -> dict[str, tuple[str, Optional[float], str]]:
    """Run :func:`convert` on every ``(src, dst, rate)``; returns ``{src: (status, duration, message)}``."""
    results: dict[str, tuple[str, Optional[float], str]] = {}
    start = time.monotonic()

    def collect(outputs: Iterable[tuple[str, str, Optional[float], str]]) -> None:
        for i, (src, status, duration, message) in enumerate(outputs, start=1):
            results[src] = (status, duration, message)
            if status == "failed":
                logger.warning("%s: cannot convert: %s (left out)", src, message)
            if i % 1000 == 0 or i == len(jobs):
                logger.info("audio: %d/%d files (%.0f s)", i, len(jobs), time.monotonic() - start)

    if workers <= 1 or len(jobs) < 2:
        collect(_convert_star(job) for job in jobs)
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
            collect(pool.map(_convert_star, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 4)))))
    return results


# ---------------------------------------------------------------------- annotations
def _check_inputs(desed_root: Path, synth_root: Path) -> None:
    problems = []
    for s in SUBSETS:
        root = synth_root if s.synthetic else desed_root
        if not (root / s.audio).is_dir():
            problems.append(f"{root / s.audio}: folder not found ({s.name} audio)")
        if s.tsv and s.tsv_required and not (root / s.tsv).is_file():
            problems.append(f"{root / s.tsv}: file not found ({s.name} annotations)")
    if problems:
        hint = " (synthetic subsets are read from --synth-root)" if synth_root != desed_root else ""
        raise PrepareError(
            "the DESED copy is incomplete; see recipes/desed/README.md for the expected layout"
            + hint
            + ":\n  "
            + "\n  ".join(problems)
        )


def _read_listing(subset: Subset, root: Path):
    """``(annotation object, ordered unique filenames)`` of a subset."""
    tsv = root / subset.tsv if subset.tsv else None
    if subset.kind == "strong":
        df = read_strong(tsv, DESED_CLASSES, merge_overlaps=False)
        return df, list(dict.fromkeys(df["filename"]))
    if subset.kind == "weak":
        df = read_weak(tsv, DESED_CLASSES)
        return df, list(df["filename"])
    source = tsv if tsv is not None and tsv.is_file() else root / subset.audio
    if source != tsv:
        logger.info("%s: no %s, listing the audio folder instead", subset.name, tsv)
    names = read_filenames(source)
    return None, list(names)


def prepare(
    desed_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    sample_rate: int = 16000,
    workers: int = 1,
    synth_root: str | os.PathLike | None = None,
) -> dict[str, int]:
    """Convert a DESED copy into ``out_dir`` (layout of :func:`sed.synth.dataset_layout`).

    Returns the number of clips kept per subset. Raises :class:`PrepareError` (naming the paths) when a
    folder or annotation file is missing, and :class:`sed.data.tsv.AnnotationError` for a malformed TSV.
    """
    desed_root = Path(desed_root)
    synth_root = Path(synth_root) if synth_root is not None else desed_root
    out = dataset_layout(out_dir)
    if not desed_root.is_dir():
        raise PrepareError(f"{desed_root}: DESED root folder not found")
    _check_inputs(desed_root, synth_root)

    listings = {}
    jobs: list[tuple[str, str, int]] = []
    missing: list[tuple[str, str, str]] = []  # subset, filename, reason
    for s in SUBSETS:
        root = synth_root if s.synthetic else desed_root
        annotations, names = _read_listing(s, root)
        present = []
        for name in names:
            src = root / s.audio / name
            if src.is_file():
                present.append(name)
                jobs.append((str(src), str(out.audio_dir(s.name) / name), sample_rate))
            else:
                missing.append((s.name, name, f"not found in {root / s.audio}"))
        if len(present) < len(names):
            logger.warning(
                "%s: %d of %d clips listed in %s are missing from %s; they are left out",
                s.name,
                len(names) - len(present),
                len(names),
                root / (s.tsv or s.audio),
                root / s.audio,
            )
        listings[s.name] = (s, root, annotations, present)

    logger.info("Converting %d audio files to %d Hz into %s (%d workers)", len(jobs), sample_rate, out.root, workers)
    results = convert_all(jobs, workers)
    n_done = sum(r[0] == "done" for r in results.values())
    n_skipped = sum(r[0] == "skipped" for r in results.values())
    logger.info("audio: %d converted, %d already done, %d failed", n_done, n_skipped, len(jobs) - n_done - n_skipped)

    counts: dict[str, int] = {}
    for name, (s, root, annotations, present) in listings.items():
        durations: dict[str, float] = {}
        kept = []
        for filename in present:
            status, duration, message = results[str(root / s.audio / filename)]
            if status == "failed":
                missing.append((name, filename, f"unreadable: {message}"))
                continue
            kept.append(filename)
            durations[filename] = float(duration)
        if not kept:
            raise PrepareError(
                f"{root / s.audio}: none of the {name} clips listed in {root / (s.tsv or s.audio)} is available"
            )
        counts[name] = len(kept)
        keep = set(kept)
        if s.kind == "strong":
            df = annotations[annotations["filename"].isin(keep)].reset_index(drop=True)
            write_strong(df, _tsv_path(out, name))
        elif s.kind == "weak":
            write_weak(annotations[annotations["filename"].isin(keep)].reset_index(drop=True), _tsv_path(out, name))
        else:
            atomic_write_text(_tsv_path(out, name), "filename\n" + "".join(f"{f}\n" for f in kept))
        if name in ("validation", "test"):
            shipped = root / s.durations if s.durations else None
            if shipped is not None and shipped.is_file():
                known = read_durations(shipped)
                durations.update({f: known[f] for f in kept if f in known})
            else:
                logger.info("%s: no %s, durations measured from the audio", name, shipped)
            write_durations({f: durations[f] for f in sorted(kept)}, _durations_path(out, name))

    atomic_write_text(out.classes_file, "".join(f"{c}\n" for c in DESED_CLASSES))
    if missing:
        with atomic_open(out.root / "missing_files.tsv", "w", encoding="utf-8", newline="\n") as f:
            f.write("subset\tfilename\treason\n")
            for row in missing:
                f.write("\t".join(row) + "\n")
        logger.warning("%d listed clip(s) left out; see %s", len(missing), out.root / "missing_files.tsv")
    else:
        (out.root / "missing_files.tsv").unlink(missing_ok=True)
    info = {
        "source": "DESED",
        "prepared_by": "recipes/desed/prepare.py",
        "desed_root": str(desed_root.resolve()),
        "synth_root": str(synth_root.resolve()),
        "sample_rate": sample_rate,
        "clips": counts,
        "left_out": len(missing),
    }
    atomic_write_text(
        out.readme,
        "DESED prepared by recipes/desed/prepare.py for the sed pipeline (see recipes/desed/README.md).\n"
        + json.dumps(info, indent=1)
        + "\n",
    )
    atomic_write_text(out.marker, json.dumps(info, indent=1, sort_keys=True) + "\n")
    return counts


def _tsv_path(layout, name: str) -> Path:
    return {
        "strong": layout.strong_tsv,
        "weak": layout.weak_tsv,
        "unlabeled": layout.unlabeled_tsv,
        "validation": layout.validation_tsv,
        "test": layout.test_tsv,
    }[name]


def _durations_path(layout, name: str) -> Path:
    return {"validation": layout.validation_durations, "test": layout.test_durations}[name]


# ---------------------------------------------------------------------- command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python recipes/desed/prepare.py",
        description="Resample a DESED copy once and write it in this project's layout "
        "(then: python train.py exp=desed_crnn data.root=OUT_DIR).",
    )
    parser.add_argument("desed_root", help="DESED folder holding audio/ and metadata/ (see recipes/desed/README.md)")
    parser.add_argument("out_dir", help="output folder (data.root of the training run)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="target rate in Hz (default: %(default)s)")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="parallel conversion processes (default: %(default)s)",
    )
    parser.add_argument(
        "--synth-root",
        default=None,
        help="folder of the synthetic soundscapes (audio/ and metadata/) when they are not under "
        "DESED_ROOT (e.g. DESED_task's dcase_synth/)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        counts = prepare(args.desed_root, args.out_dir, args.sample_rate, args.workers, args.synth_root)
    except (PrepareError, AnnotationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"prepared {args.out_dir}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), file=sys.stderr)
    print(f"next: python train.py exp=desed_crnn data.root={args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
