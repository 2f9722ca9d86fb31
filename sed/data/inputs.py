"""Recordings named on a command line: audio files, folders of audio files, or TSVs with a ``filename``
column."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Union

import pandas as pd

from sed.data.tsv import AUDIO_EXTENSIONS, AnnotationError

PathLike = Union[str, os.PathLike]


def _tsv_filenames(path: Path) -> list[str]:
    """Unique values of the ``filename`` column of a TSV, in order of first appearance."""
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise AnnotationError(path, None, f"cannot read TSV: {err}") from None
    if "filename" not in df.columns:
        raise AnnotationError(path, 1, f"no 'filename' column; header has {list(df.columns)}")
    names = [n.strip() for n in df["filename"] if n.strip()]
    if not names:
        raise AnnotationError(path, None, "no filenames listed")
    return list(dict.fromkeys(names))


def collect_inputs(inputs: Iterable[PathLike], audio_dir: Optional[PathLike] = None) -> list[tuple[str, Path]]:
    """``(filename, path)`` of every recording named by ``inputs``: audio files, folders (their audio
    files, sorted, not recursive) or TSVs with a ``filename`` column (resolved against ``audio_dir``,
    default the TSV's folder). Output filenames are basenames, so two inputs with one name are refused.
    Files a TSV lists but that do not exist are kept (the run reports them) unless none of them exists."""
    found: list[tuple[str, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(e for e in p.iterdir() if e.is_file() and e.suffix.lower() in AUDIO_EXTENSIONS)
            if not files:
                raise FileNotFoundError(f"{p}: no audio files ({'/'.join(AUDIO_EXTENSIONS)}) in this folder")
            found.extend((f.name, f) for f in files)
        elif p.suffix.lower() in (".tsv", ".csv") and p.is_file():
            base = Path(audio_dir) if audio_dir is not None else p.parent
            listed = [(Path(name).name, base / name) for name in _tsv_filenames(p)]
            if not any(audio.is_file() for _, audio in listed):
                raise FileNotFoundError(
                    f"{listed[0][1]}: none of the {len(listed)} audio file(s) listed in {p} exists in {base} "
                    "(set --audio-dir?)"
                )
            found.extend(listed)
        elif p.is_file():
            found.append((p.name, p))
        else:
            raise FileNotFoundError(f"{p}: no such audio file, folder or TSV")
    seen: dict[str, Path] = {}
    for name, path in found:
        if name in seen and seen[name].resolve() != path.resolve():
            raise ValueError(f"two inputs share the filename {name!r}: {seen[name]} and {path}")
        seen[name] = path
    return list(seen.items())
