"""Lay out DESED and MAESTRO Real as ``exp=dcase2024_crnn`` reads them (conf/data/dcase2024.yaml), resampled once.

    python recipes/dcase2024/prepare.py DESED_ROOT MAESTRO_DEV OUT_DIR --maestro-test-list FILE
        [--synth-root DIR] [--sample-rate 16000] [--workers N] [--maestro-val-fraction 0.1] [--seed 42]

``OUT_DIR/desed/``: recipes/desed/prepare.py's layout (synthetic strong, weak, unlabeled, synthetic validation, real
validation as the test set), plus the real strongly-labelled AudioSet clips (DESED ``audio/train/strong_label_real``
with ``metadata/train/audioset_strong.tsv``) in ``audio/train/strong_real`` and ``metadata/train/strong_real.tsv``,
and ``metadata/train/strong_full.tsv``: the synthetic and real strong clips together, as the 2024 baseline's third
training subset (filenames relative to ``audio/train``).

``OUT_DIR/maestro/``: MAESTRO Real's development recordings (``development_audio/<scene>/*.wav`` with
``development_annotation/<scene>/*.txt``: onset, offset, label, confidence per line), whole, in
``audio/{train,validation,test}`` with ``metadata/<split>/<split>.tsv`` (soft labels: a ``confidence`` column) and
``durations.tsv``. The recordings named in ``--maestro-test-list`` (the DCASE 2024 split: DESED_task's
``recipes/dcase2024_task4_baseline/dprep/validation_split.csv``) are the test set; of the others,
``--maestro-val-fraction`` of each scene's recordings (at least one) is held out for validation, drawn from
``--seed``, and the rest train.

Clips a DESED annotation file lists but that are absent or unreadable (YouTube clips often are) are left out and
listed in ``OUT_DIR/desed/missing_files.tsv``; MAESTRO recordings without audio or annotation in
``OUT_DIR/maestro/missing_files.tsv``. Audio is converted in parallel and written atomically; a rerun skips the files
already converted. See recipes/dcase2024/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from sed.data.tsv import AnnotationError, read_strong, write_durations, write_strong
from sed.utils.io import atomic_open, atomic_write_text

logger = logging.getLogger("prepare_dcase2024")


def _desed_prepare():
    """recipes/desed/prepare.py, whose DESED layout and conversion this recipe reuses."""
    name = "prepare_desed"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parents[1] / "desed" / "prepare.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # worker processes find the conversion function by this name
        spec.loader.exec_module(module)
    return sys.modules[name]


desed = _desed_prepare()
PrepareError = desed.PrepareError

MAESTRO_CLASSES = [
    "cutlery and dishes",
    "furniture dragging",
    "people talking",
    "children voices",
    "coffee machine",
    "footsteps",
    "large_vehicle",
    "car",
    "brakes_squeaking",
    "cash register beeping",
    "announcement",
    "shopping cart",
    "metro leaving",
    "metro approaching",
    "door opens/closes",
    "wind_blowing",
    "birds_singing",
]
REAL_STRONG_AUDIO = "audio/train/strong_label_real"
REAL_STRONG_TSV = "metadata/train/audioset_strong.tsv"


def _missing_report(path: Path, rows: Sequence[tuple[str, str, str]], header: str = "subset\tfilename\treason") -> None:
    if rows:
        with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(header + "\n" + "".join("\t".join(r) + "\n" for r in rows))
        logger.warning("%d listed file(s) left out; see %s", len(rows), path)


# ---------------------------------------------------------------------- DESED
def prepare_desed(desed_root: Path, out: Path, sample_rate: int, workers: int, synth_root: Optional[Path]) -> dict:
    """recipes/desed/prepare.py into ``out``, then the real strong clips and the baseline's strong subset."""
    counts = desed.prepare(desed_root, out, sample_rate, workers, synth_root)
    missing_file = out / "missing_files.tsv"
    missing = (
        [tuple(line.split("\t")) for line in missing_file.read_text(encoding="utf-8").splitlines()[1:]]
        if missing_file.is_file()
        else []
    )
    audio, tsv = desed_root / REAL_STRONG_AUDIO, desed_root / REAL_STRONG_TSV
    real = pd.DataFrame(columns=["filename", "onset", "offset", "event_label"])
    if not tsv.is_file() or not audio.is_dir():
        logger.warning(
            "%s or %s not found: no real strong clips (the baseline trains on them with the synthetic ones)", tsv, audio
        )
    else:
        events = read_strong(tsv, desed.DESED_CLASSES, merge_overlaps=False)
        names = list(dict.fromkeys(events["filename"]))
        present = [n for n in names if (audio / n).is_file()]
        missing += [("strong_real", n, f"not found in {audio}") for n in names if n not in set(present)]
        jobs = [(str(audio / n), str(out / "audio/train/strong_real" / n), sample_rate) for n in present]
        (out / "audio/train/strong_real").mkdir(parents=True, exist_ok=True)
        results = desed.convert_all(jobs, workers)
        kept = []
        for name in present:
            status, _, message = results[str(audio / name)]
            if status == "failed":
                missing.append(("strong_real", name, f"unreadable: {message}"))
            else:
                kept.append(name)
        real = events[events["filename"].isin(set(kept))].reset_index(drop=True)
        write_strong(real, out / "metadata/train/strong_real.tsv")
        counts["strong_real"] = len(kept)
    synth = read_strong(out / "metadata/train/strong.tsv", desed.DESED_CLASSES, merge_overlaps=False)
    full = pd.concat(
        [synth.assign(filename="strong/" + synth["filename"]), real.assign(filename="strong_real/" + real["filename"])],
        ignore_index=True,
    )
    write_strong(full, out / "metadata/train/strong_full.tsv")
    _missing_report(missing_file, missing)
    return counts


# ---------------------------------------------------------------------- MAESTRO Real
def read_maestro_annotation(path: Path) -> pd.DataFrame:
    """A MAESTRO Real annotation file (``onset offset label confidence`` per line, tab-separated, no header) as
    strong labels with a ``confidence`` column; a bad line raises :class:`AnnotationError` naming it."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 4:
            raise AnnotationError(path, number, f"{len(fields)} fields; expected onset, offset, label, confidence")
        try:
            onset, offset, confidence = float(fields[0]), float(fields[1]), float(fields[3])
        except ValueError:
            raise AnnotationError(path, number, f"onset, offset and confidence must be numbers, got {fields}") from None
        if not (math.isfinite(onset) and math.isfinite(offset)) or not 0 <= onset < offset:
            raise AnnotationError(path, number, f"onset {fields[0]} and offset {fields[1]}: need 0 <= onset < offset")
        if not 0.0 <= confidence <= 1.0:
            raise AnnotationError(path, number, f"confidence {fields[3]} is outside [0, 1]")
        if fields[2] not in MAESTRO_CLASSES:
            raise AnnotationError(path, number, f"unknown label {fields[2]!r}; known: {MAESTRO_CLASSES}")
        rows.append((path.stem + ".wav", onset, offset, fields[2], confidence))
    return pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label", "confidence"])


def _scene(name: str) -> str:
    return name.rsplit("_", 1)[0]


def read_test_list(path: Path) -> set[str]:
    """Recording names (extension dropped) of a list file: one per line, an optional header (``val``)."""
    if not path.is_file():
        raise PrepareError(f"{path}: MAESTRO test list not found (--maestro-test-list)")
    names = [Path(line.strip().split(",")[0]).stem for line in path.read_text(encoding="utf-8-sig").splitlines()]
    names = [n for n in names if n and n.lower() not in ("val", "validation", "test", "filename")]
    if not names:
        raise PrepareError(f"{path}: no recording names (--maestro-test-list)")
    return set(names)


def split_maestro(names: Sequence[str], test: set[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """``{split: recordings}``: ``test`` as listed; per scene, ``val_fraction`` of the others (at least one when the
    scene has two) for validation, drawn from ``seed``; the rest for training."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {"train": [], "validation": [], "test": sorted(n for n in names if n in test)}
    for scene in sorted({_scene(n) for n in names}):
        rest = sorted(n for n in names if _scene(n) == scene and n not in test)
        n_val = min(max(1, round(val_fraction * len(rest))), len(rest) - 1) if len(rest) > 1 and val_fraction > 0 else 0
        held = set(rng.permutation(rest)[:n_val].tolist())
        out["validation"] += [n for n in rest if n in held]
        out["train"] += [n for n in rest if n not in held]
    return out


def read_maestro(maestro_dev: Path, test_list: Path, val_fraction: float, seed: int) -> dict:
    """Everything of MAESTRO Real's development folder before any file is written: its recordings, their events,
    the splits and what is missing (bad input raises naming the file)."""
    audio_root, ann_root = maestro_dev / "development_audio", maestro_dev / "development_annotation"
    for folder in (audio_root, ann_root):
        if not folder.is_dir():
            raise PrepareError(
                f"{folder}: folder not found (MAESTRO Real development: development_audio/ and "
                "development_annotation/; see recipes/dcase2024/README.md)"
            )
    audio = {p.stem: p for p in audio_root.rglob("*.wav")}
    annotations = {p.stem: p for p in ann_root.rglob("*.txt")}
    missing = [("maestro", f"{n}.wav", f"no audio in {audio_root}") for n in sorted(set(annotations) - set(audio))]
    missing += [("maestro", f"{n}.wav", f"no annotation in {ann_root}") for n in sorted(set(audio) - set(annotations))]
    names = sorted(set(audio) & set(annotations))
    test = read_test_list(test_list)
    unknown = sorted(test - set(names))
    if unknown:
        logger.warning(
            "%s: %d listed recording(s) not in %s, e.g. %s", test_list, len(unknown), maestro_dev, unknown[:3]
        )
    return {
        "audio": audio,
        "splits": split_maestro(names, test, val_fraction, seed),
        "missing": missing,
        "events": {n: read_maestro_annotation(annotations[n]) for n in names},
    }


def prepare_maestro(maestro: dict, out: Path, sample_rate: int, workers: int) -> dict[str, int]:
    """MAESTRO Real's development recordings (:func:`read_maestro`) into ``out`` (module docstring)."""
    audio, splits, missing, events = maestro["audio"], maestro["splits"], maestro["missing"], maestro["events"]
    jobs = [
        (str(audio[n]), str(out / "audio" / split / f"{n}.wav"), sample_rate)
        for split, members in splits.items()
        for n in members
    ]
    for split in splits:
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)
    results = desed.convert_all(jobs, workers)
    counts = {}
    for split, members in splits.items():
        kept, durations = [], {}
        for n in members:
            status, duration, message = results[str(audio[n])]
            if status == "failed":
                missing.append(("maestro", f"{n}.wav", f"unreadable: {message}"))
                continue
            kept.append(n)
            durations[f"{n}.wav"] = float(duration)
        if not kept:
            raise PrepareError(f"MAESTRO Real: no {split} recording is available")
        (out / "metadata" / split).mkdir(parents=True, exist_ok=True)
        frame = pd.concat([events[n] for n in kept], ignore_index=True)
        empty = [f"{n}.wav" for n in kept if events[n].empty]
        if empty:
            frame = pd.concat(
                [
                    frame,
                    pd.DataFrame(
                        {"filename": empty, "onset": np.nan, "offset": np.nan, "event_label": "", "confidence": np.nan}
                    ),
                ],
                ignore_index=True,
            )
        write_strong(frame, out / "metadata" / split / f"{split}.tsv")
        write_durations(durations, out / "metadata" / split / "durations.tsv")
        counts[split] = len(kept)
    atomic_write_text(out / "classes.txt", "".join(f"{c}\n" for c in MAESTRO_CLASSES))
    (out / "missing_files.tsv").unlink(missing_ok=True)
    _missing_report(out / "missing_files.tsv", missing)
    atomic_write_text(out / "splits.json", json.dumps({k: v for k, v in splits.items()}, indent=1) + "\n")
    return counts


def prepare(
    desed_root: str | os.PathLike,
    maestro_dev: str | os.PathLike,
    out_dir: str | os.PathLike,
    test_list: str | os.PathLike,
    sample_rate: int = 16000,
    workers: int = 1,
    synth_root: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 42,
) -> dict:
    """Prepare both datasets under ``out_dir`` (``desed/``, ``maestro/``); returns the clips kept per subset."""
    out = Path(out_dir)
    if not Path(maestro_dev).is_dir():
        raise PrepareError(f"{maestro_dev}: MAESTRO Real development folder not found")
    maestro = read_maestro(Path(maestro_dev), Path(test_list), val_fraction, seed)  # its errors before any work
    counts = {
        "desed": prepare_desed(
            Path(desed_root), out / "desed", sample_rate, workers, Path(synth_root) if synth_root else None
        )
    }
    counts["maestro"] = prepare_maestro(maestro, out / "maestro", sample_rate, workers)
    atomic_write_text(
        out / "README.txt",
        "DESED and MAESTRO Real prepared by recipes/dcase2024/prepare.py for "
        "exp=dcase2024_crnn (see recipes/dcase2024/README.md).\n" + json.dumps(counts, indent=1) + "\n",
    )
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python recipes/dcase2024/prepare.py",
        description="Resample DESED and MAESTRO Real once and lay them out for exp=dcase2024_crnn "
        "(then: python train.py exp=dcase2024_crnn data.root=OUT_DIR).",
    )
    parser.add_argument("desed_root", help="DESED folder holding audio/ and metadata/ (see recipes/desed/README.md)")
    parser.add_argument(
        "maestro_dev", help="MAESTRO Real development folder (development_audio/, development_annotation/)"
    )
    parser.add_argument("out_dir", help="output folder (data.root of the training run)")
    parser.add_argument(
        "--maestro-test-list",
        required=True,
        help="recordings of the MAESTRO test set, one per line (DESED_task's recipes/"
        "dcase2024_task4_baseline/dprep/validation_split.csv gives the DCASE 2024 split)",
    )
    parser.add_argument(
        "--maestro-val-fraction",
        type=float,
        default=0.1,
        help="share of each scene's other recordings held out for validation (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=42, help="draws the MAESTRO validation recordings")
    parser.add_argument(
        "--synth-root",
        default=None,
        help="folder of DESED's synthetic soundscapes when they are "
        "not under DESED_ROOT (e.g. DESED_task's dcase_synth/)",
    )
    parser.add_argument("--sample-rate", type=int, default=16000, help="target rate in Hz (default: %(default)s)")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="parallel conversion processes (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        counts = prepare(
            args.desed_root,
            args.maestro_dev,
            args.out_dir,
            args.maestro_test_list,
            args.sample_rate,
            args.workers,
            args.synth_root,
            args.maestro_val_fraction,
            args.seed,
        )
    except (PrepareError, AnnotationError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, subsets in counts.items():
        print(
            f"prepared {Path(args.out_dir) / name}: " + ", ".join(f"{k} {v}" for k, v in subsets.items()),
            file=sys.stderr,
        )
    print(f"next: python train.py exp=dcase2024_crnn data.root={args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
