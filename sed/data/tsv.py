"""Readers and writers for the tab-separated annotation files DCASE distributes.

Formats (first line is the header; extra columns are ignored):

* strong: ``filename onset offset event_label``; a row whose onset, offset and label are all
  empty (or ``nan``) is a clip without events: it is kept, so the clip trains with a zero target.
  An optional ``confidence`` column (a number in [0, 1] on every event row: annotator agreement, as MAESTRO's)
  makes soft targets: the event's frames take that value instead of 1.
* weak: ``filename event_labels`` with comma-separated labels (empty: no label).
* unlabeled: a TSV with a ``filename`` column, or a folder of audio files.
* durations: ``filename duration``.

Every problem in a file raises :class:`AnnotationError` whose message starts with
``path:LINE:`` (header is line 1, first data row line 2), so users can jump to the culprit.
The DataFrames returned carry ``df.attrs["source"]`` (the path) and ``df.attrs["lines"]``
(filename -> first line where it appears) so later checks (e.g. missing audio) can point
back to the annotation line; strong labels also carry ``df.attrs["row_lines"]`` (the line of
each row, as read; a merged event keeps the line of its earliest row), valid until the rows
are filtered.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from sed.utils.errors import UserError
from sed.utils.io import atomic_open

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
STRONG_COLUMNS = ("filename", "onset", "offset", "event_label")
CONFIDENCE = "confidence"  # optional strong-label column: soft targets
WEAK_COLUMNS = ("filename", "event_labels")
DURATION_COLUMNS = ("filename", "duration")
_MISSING = {"", "nan", "none", "null"}


class AnnotationError(ValueError, UserError):
    """Malformed annotation or audio listing; the message starts with ``path:LINE:``. ``problems``: this error,
    or each bad line of a file that has several (:class:`LineErrors`)."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.detail = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")

    @property
    def problems(self) -> list[AnnotationError]:
        return [self]


class LineErrors(AnnotationError):
    """Every bad line of one file, reported at once: one ``path:LINE: reason`` per line of the message."""

    def __init__(self, problems: Sequence[AnnotationError]) -> None:
        first = problems[0]
        super().__init__(first.path, first.line, first.detail)
        self.args = ("\n".join(str(p) for p in problems),)
        self._problems = list(problems)

    @property
    def problems(self) -> list[AnnotationError]:
        return list(self._problems)


class _LineCheck:
    """Collects the bad lines of one file: ``with check.line():`` around one row's checks records its
    :class:`AnnotationError` and goes on with the next row; :meth:`raise_any` then raises them all."""

    def __init__(self) -> None:
        self.errors: list[AnnotationError] = []

    @contextlib.contextmanager
    def line(self) -> Iterator[None]:
        try:
            yield
        except AnnotationError as err:
            self.errors.append(err)

    def raise_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise LineErrors(self.errors)


class DurationMap(dict):
    """``filename -> duration`` that remembers its file and each entry's line (for messages)."""

    def __init__(
        self,
        items: Mapping[str, float] | None = None,
        source: str | None = None,
        lines: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(items or {})
        self.source = source
        self.lines = dict(lines or {})


class FileList(list):
    """A list of filenames that remembers where it came from (for error messages)."""

    def __init__(
        self,
        names: Iterable[str] = (),
        source: str | None = None,
        lines: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__(names)
        self.source = source
        self.lines = dict(lines or {})


def _rows(
    path: Path, required: Sequence[str], check: _LineCheck, allow_empty: bool = False
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line_number, {column: stripped value})`` for every non-blank data row.

    Missing trailing fields read as empty strings (DCASE no-event rows are often just
    ``filename``); extra non-empty fields beyond the header are an error (recorded in ``check``, the row
    skipped). A file with a header and no rows is an error unless ``allow_empty``.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AnnotationError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AnnotationError(path, None, f"cannot read file: {err}") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise AnnotationError(path, 1, f"empty file or missing header (expected columns: {', '.join(required)})")
    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in required if c not in header]
    if missing:
        hint = " (is the file tab-separated?)" if len(header) == 1 and len(required) > 1 else ""
        raise AnnotationError(path, 1, f"missing column(s) {', '.join(map(repr, missing))}; header has {header}{hint}")
    n_rows = 0
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        fields = [f.strip() for f in raw.split("\t")]
        n_rows += 1
        if len(fields) > len(header) and any(fields[len(header) :]):
            check.errors.append(
                AnnotationError(path, number, f"{len(fields)} fields but the header has {len(header)} columns")
            )
            continue
        fields += [""] * (len(header) - len(fields))
        yield number, dict(zip(header, fields))
    if n_rows == 0 and not allow_empty:
        raise AnnotationError(path, 1, "no data rows (empty dataset)")


def _is_missing(value: str) -> bool:
    return value.strip().lower() in _MISSING


def _parse_time(path: Path, line: int, column: str, value: str) -> float:
    try:
        t = float(value)
    except ValueError:
        raise AnnotationError(path, line, f"{column} {value!r} is not a number") from None
    if not math.isfinite(t):
        raise AnnotationError(path, line, f"{column} {value!r} is not a finite number")
    if t < 0:
        raise AnnotationError(path, line, f"negative {column} {t}")
    return t


def _parse_confidence(path: Path, line: int, value: str) -> float:
    try:
        c = float(value)
    except ValueError:
        raise AnnotationError(
            path, line, f"{CONFIDENCE} {value!r} is not a number (an annotator confidence in [0, 1])"
        ) from None
    if not 0.0 <= c <= 1.0:  # NaN fails too
        raise AnnotationError(path, line, f"{CONFIDENCE} {value!r} is outside [0, 1]")
    return c


def _check_filename(path: Path, line: int, name: str) -> str:
    if not name:
        raise AnnotationError(path, line, "empty filename")
    return name


def _strong_row(path: Path, line: int, row: dict[str, str], known: set[str] | None) -> tuple[str, float, float, str]:
    """``(filename, onset, offset, label)`` of one strong row (NaN times and no label: a clip without events)."""
    name = _check_filename(path, line, row["filename"])
    on_s, off_s, label = row["onset"], row["offset"], row["event_label"]
    empties = [_is_missing(on_s), _is_missing(off_s), _is_missing(label)]
    if all(empties):
        return name, float("nan"), float("nan"), ""
    if any(empties):
        which = [c for c, e in zip(("onset", "offset", "event_label"), empties) if e]
        raise AnnotationError(
            path,
            line,
            f"empty {', '.join(which)}: a row must give onset, offset and event_label, "
            "or leave all three empty for a clip without events",
        )
    onset = _parse_time(path, line, "onset", on_s)
    offset = _parse_time(path, line, "offset", off_s)
    if onset >= offset:
        raise AnnotationError(path, line, f"onset {onset} >= offset {offset}")
    if known is not None and label not in known:
        raise AnnotationError(path, line, f"unknown label {label!r}; known: {sorted(known)}")
    return name, onset, offset, label


def read_strong(
    path: str | os.PathLike,
    classes: Sequence[str] | None = None,
    merge_overlaps: bool = True,
    allow_empty: bool = False,
) -> pd.DataFrame:
    """Read a strong-label TSV into a DataFrame ``filename, onset, offset, event_label``.

    No-event rows (empty onset, offset and label) are kept with NaN times and an empty label.
    A header without rows is an error (an empty dataset) unless ``allow_empty`` (an event list
    in which nothing was detected).
    With ``classes`` given, an unknown label is an error. Same-class overlapping or touching
    events of one clip are merged into their union (logged once for the file), because
    sed_scores_eval rejects such ground truth. A ``confidence`` column, when the header has one, becomes a float
    column (NaN on no-event rows); only events of equal confidence are merged then.
    """
    path = Path(path)
    known = set(classes) if classes is not None else None
    names: list[str] = []
    onsets: list[float] = []
    offsets: list[float] = []
    labels: list[str] = []
    row_lines: list[int] = []
    confidences: list[float] = []
    has_confidence = False
    first_line: dict[str, int] = {}
    check = _LineCheck()
    for line, row in _rows(path, STRONG_COLUMNS, check, allow_empty):
        with check.line():
            name, onset, offset, label = _strong_row(path, line, row, known)
            has_confidence = CONFIDENCE in row
            if has_confidence:  # a clip without events has none
                confidence = float("nan") if label == "" else _parse_confidence(path, line, row[CONFIDENCE])
            first_line.setdefault(name, line)
            row_lines.append(line)
            names.append(name)
            onsets.append(onset)
            offsets.append(offset)
            labels.append(label)
            if has_confidence:
                confidences.append(confidence)
    check.raise_any()
    df = pd.DataFrame(
        {
            "filename": pd.Series(names, dtype=object),
            "onset": np.asarray(onsets, dtype=np.float64),
            "offset": np.asarray(offsets, dtype=np.float64),
            "event_label": pd.Series(labels, dtype=object),
        }
    )
    if has_confidence:
        df[CONFIDENCE] = np.asarray(confidences, dtype=np.float64)
    df.attrs["row_lines"] = tuple(row_lines)  # a tuple: pd.concat compares attrs, which an array breaks
    if merge_overlaps:
        df, n_merged = merge_overlapping_events(df)
        if n_merged:
            logger.info(
                "%s: merged %d overlapping/touching same-class event row(s) into their union",
                path,
                n_merged,
            )
    df.attrs["source"] = str(path)
    df.attrs["lines"] = first_line
    return df


def merge_overlapping_events(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Merge same-class events of one clip that overlap or touch; return (df, rows removed).

    The merged event spans the union; it takes the place of the earliest row of its group,
    so row order is otherwise preserved (and ``attrs["row_lines"]`` follows the rows kept).
    No-event (NaN) rows pass through unchanged. With a ``confidence`` column only events of equal
    confidence are merged (soft targets take the larger value where events of one class overlap).
    """
    if len(df) == 0:
        return df.copy(), 0
    onset = df["onset"].to_numpy(dtype=np.float64)
    offset = df["offset"].to_numpy(dtype=np.float64)
    valid = ~(np.isnan(onset) | np.isnan(offset))
    keep = np.ones(len(df), dtype=bool)
    new_offset = offset.copy()
    new_onset = onset.copy()
    keys = ["filename", "event_label"] + ([CONFIDENCE] if CONFIDENCE in df.columns else [])
    sub = df.loc[valid, keys].copy()
    sub["_pos"] = np.flatnonzero(valid)
    sub["_on"] = onset[valid]
    sub = sub.sort_values([*keys, "_on", "_pos"], kind="mergesort")
    pos = sub["_pos"].to_numpy()
    fn = sub["filename"].to_numpy()
    lab = sub["event_label"].to_numpy()
    conf = sub[CONFIDENCE].to_numpy() if CONFIDENCE in keys else np.zeros(len(sub))
    head = -1  # position (in df) of the event currently being extended
    for k, p in enumerate(pos):
        same_group = k > 0 and fn[k] == fn[k - 1] and lab[k] == lab[k - 1] and conf[k] == conf[k - 1]
        if same_group and onset[p] <= new_offset[head]:
            new_offset[head] = max(new_offset[head], offset[p])
            new_onset[head] = min(new_onset[head], onset[p])
            keep[p] = False
        else:
            head = p
    n_merged = int((~keep).sum())
    if n_merged == 0:
        out = df.copy()
    else:
        out = df.copy()
        out["onset"] = new_onset
        out["offset"] = new_offset
        out = out[keep].reset_index(drop=True)
    out.attrs = dict(df.attrs)
    if n_merged and "row_lines" in df.attrs:
        out.attrs["row_lines"] = tuple(np.asarray(df.attrs["row_lines"])[keep].tolist())
    return out, n_merged


def read_weak(path: str | os.PathLike, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a weak-label TSV into ``filename, event_labels`` (tuple of labels, maybe empty)."""
    path = Path(path)
    known = set(classes) if classes is not None else None
    names: list[str] = []
    labels: list[tuple[str, ...]] = []
    first_line: dict[str, int] = {}
    check = _LineCheck()
    for line, row in _rows(path, WEAK_COLUMNS, check):
        with check.line():
            name = _check_filename(path, line, row["filename"])
            if name in first_line:
                raise AnnotationError(path, line, f"duplicate filename {name!r} (first at line {first_line[name]})")
            first_line[name] = line
            raw = row["event_labels"]
            parts = [] if _is_missing(raw) else [p.strip() for p in raw.split(",")]
            parts = [p for p in parts if p]
            if known is not None:
                for p in parts:
                    if p not in known:
                        raise AnnotationError(path, line, f"unknown label {p!r}; known: {sorted(known)}")
            names.append(name)
            labels.append(tuple(dict.fromkeys(parts)))
    check.raise_any()
    df = pd.DataFrame({"filename": pd.Series(names, dtype=object), "event_labels": pd.Series(labels, dtype=object)})
    df.attrs["source"] = str(path)
    df.attrs["lines"] = first_line
    return df


def read_filenames(path_or_dir: str | os.PathLike) -> FileList:
    """Unlabeled clips: filenames from a TSV ``filename`` column, or the audio files of a folder.

    A folder is listed non-recursively (wav/flac/ogg), sorted. Returns a :class:`FileList`
    (a plain list that also records its source and line numbers).
    """
    path = Path(path_or_dir)
    if path.is_dir():
        names = sorted(e.name for e in os.scandir(path) if e.is_file() and e.name.lower().endswith(AUDIO_EXTENSIONS))
        if not names:
            raise AnnotationError(
                path, None, f"no audio files ({'/'.join(AUDIO_EXTENSIONS)}) in folder (empty dataset)"
            )
        return FileList(names, source=str(path))
    first_line: dict[str, int] = {}
    check = _LineCheck()
    for line, row in _rows(path, ("filename",), check):
        with check.line():
            name = _check_filename(path, line, row["filename"])
            if name in first_line:
                raise AnnotationError(path, line, f"duplicate filename {name!r} (first at line {first_line[name]})")
            first_line[name] = line
    check.raise_any()
    return FileList(first_line.keys(), source=str(path), lines=first_line)


def read_durations(path: str | os.PathLike) -> DurationMap:
    """Read ``filename duration`` into a dict (durations in seconds, > 0) that remembers its lines."""
    path = Path(path)
    out: dict[str, float] = {}
    lines: dict[str, int] = {}
    check = _LineCheck()
    for line, row in _rows(path, DURATION_COLUMNS, check):
        with check.line():
            name = _check_filename(path, line, row["filename"])
            if _is_missing(row["duration"]):
                raise AnnotationError(path, line, "empty duration")
            d = _parse_time(path, line, "duration", row["duration"])
            if d == 0:
                raise AnnotationError(path, line, "duration is 0")
            if name in out and out[name] != d:
                raise AnnotationError(
                    path, line, f"duration {d} for {name!r} differs from {out[name]} at line {lines[name]}"
                )
            out[name] = d
            lines.setdefault(name, line)
    check.raise_any()
    return DurationMap(out, source=str(path), lines=lines)


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{float(x):.10g}"


def write_strong(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write strong labels as a DCASE TSV (NaN times / empty label -> empty fields), atomically; a ``confidence``
    column is written too when the DataFrame has one."""
    missing = [c for c in STRONG_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"write_strong: DataFrame lacks column(s) {missing}")
    soft = CONFIDENCE in df.columns
    confidence = df[CONFIDENCE] if soft else [None] * len(df)
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(STRONG_COLUMNS + ((CONFIDENCE,) if soft else ())) + "\n")
        for name, on, off, label, c in zip(df["filename"], df["onset"], df["offset"], df["event_label"], confidence):
            label = "" if label is None or (isinstance(label, float) and math.isnan(label)) else str(label)
            f.write(f"{name}\t{_fmt(on)}\t{_fmt(off)}\t{label}" + (f"\t{_fmt(c)}" if soft else "") + "\n")


def write_weak(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write weak labels as a DCASE TSV (labels comma-joined), atomically."""
    missing = [c for c in WEAK_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"write_weak: DataFrame lacks column(s) {missing}")
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(WEAK_COLUMNS) + "\n")
        for name, labels in zip(df["filename"], df["event_labels"]):
            if isinstance(labels, str):
                labels = [p for p in labels.split(",") if p]
            elif labels is None or (isinstance(labels, float) and math.isnan(labels)):
                labels = []
            f.write(f"{name}\t{','.join(labels)}\n")


def write_durations(durations: Mapping[str, float], path: str | os.PathLike) -> None:
    """Write ``filename duration`` TSV, atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(DURATION_COLUMNS) + "\n")
        for name, d in durations.items():
            f.write(f"{name}\t{_fmt(d)}\n")
