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


def _is_audio(path: Path) -> bool:
    """Whether ``path`` is a file soundfile reads as audio (by its header, whatever its name)."""
    import soundfile as sf

    try:
        sf.info(os.fspath(path))
    except Exception:  # noqa: BLE001 - not audio, or unreadable: either way not a recording to protect
        return False
    return True


def check_outputs(
    inputs: Iterable[PathLike],
    files: Iterable[tuple[str, Path]],
    output: Optional[PathLike] = None,
    scores_dir: Optional[PathLike] = None,
) -> None:
    """Refuse outputs that would replace what was given to read: an ``output`` file that is one of the ``inputs``
    (as named, or one of the recordings ``files`` collected from them) or an existing audio file; a ``scores_dir``
    (replaced whole when written) that is or holds an input; an ``output`` inside ``scores_dir``. Raises
    ``ValueError`` naming the option and the path."""
    given = [Path(p).resolve() for p in inputs]
    recordings = [path.resolve() for _, path in files]
    if output is not None:
        out = Path(output).resolve()
        if out in given or out in recordings:
            raise ValueError(f"-o {output} is one of the inputs: writing the detections there would replace it")
        if out.is_file() and _is_audio(out):
            raise ValueError(
                f"-o {output} is an existing audio file: give the event TSV to write (e.g. detections.tsv)"
            )
    if scores_dir is not None:
        folder = Path(scores_dir).resolve()
        held = next((p for p in [*given, *recordings] if p == folder or folder in p.parents), None)
        if held is not None:
            raise ValueError(
                f"--scores-dir {scores_dir} holds input {held}: it is replaced as a whole when written; "
                "give a new folder"
            )
        if output is not None and folder in Path(output).resolve().parents:
            raise ValueError(
                f"-o {output} is inside --scores-dir {scores_dir}, which is replaced as a whole when "
                "written: write the event TSV elsewhere"
            )
