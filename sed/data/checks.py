"""Checks of a run's data before it starts: every listed audio file's header, and the events against the audio.

Without them a corrupt or empty file fails only when the sampler draws it (with ``epoch_length=min`` maybe
never), a WAV whose data chunk was cut short or holds no frames reads as silence that still carries labels,
and a broken test set shows up after hours of training. :func:`check_sets` looks at every file of every set
at once and raises one :class:`DataCheckError` naming each problem (``path:LINE:`` of its annotation row
when known), so a user fixes them all in one go.

What is checked (the guarantees, per file listed in a set):

* the file exists, is not empty and soundfile can open it; it has at least one frame, a sample rate and
  channels (:func:`probe_audio`);
* a WAV whose ``data`` chunk declares more bytes than the file holds (cut short by a copy or download) is
  refused: libsndfile would silently read the part that is there;
* an event (strong labels) whose onset is at or after the end of its clip is refused; one whose offset runs
  past the end by more than ``tolerance`` is clipped to it, with one warning per annotation file (count and
  an example line); the end is the audio length, or the ``durations.tsv`` value when that is shorter;
* a ``durations.tsv`` value that differs from the audio length by more than ``tolerance`` is a warning per
  file (count and an example line): scoring uses ``durations.tsv``;
* a clip without a ``durations.tsv`` entry is refused (scoring needs it).

Clips shorter than the training window are legitimate (they are zero-padded) and pass. NaN/Inf samples
cannot be seen in a header; they are caught where audio is read (:func:`sed.data.audio.check_finite`).
"""

from __future__ import annotations

import logging
import os
import struct
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import soundfile as sf

from sed.data.tsv import AnnotationError
from sed.utils.errors import UserError

logger = logging.getLogger(__name__)

TOLERANCE = 0.01  # s: an event may end this much after its clip's end (rounding) before it counts as past it
_HEAD = 4096  # bytes read per file; an ordinary WAV has its fmt and data chunk headers in the first 100 bytes
_MAX_CHUNKS = 64  # chunk headers followed before giving up on finding 'data' (then soundfile decides)
_PARSED_CODECS = {1: (8, 16, 24, 32), 3: (32, 64)}  # PCM, IEEE float: libsndfile reads them as the header says
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_STREAMED = 0xFFFFFFFF  # data size left unset by a writer that could not seek back; libsndfile reads to the end
_CHUNK_FILES = 256  # files per thread-pool task (one task per file costs more than a header read)


@dataclass(frozen=True)
class AudioInfo:
    """What the header of a readable audio file says."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


@dataclass
class ClipSet:
    """One set to check: its clips, where they are listed, and (strong sets) its events.

    ``lines`` maps a filename to the annotation line listing it (for messages); ``events`` are strong labels
    from :func:`sed.data.tsv.read_strong` (their ``attrs["row_lines"]`` name each row's line);
    ``durations`` come from ``durations.tsv`` (:func:`sed.data.tsv.read_durations`), for evaluation sets.
    :func:`check_sets` fills ``lengths`` (seconds of audio per readable file, from its header).
    """

    name: str
    audio_dir: Path
    filenames: Sequence[str]
    source: Optional[str] = None
    lines: Mapping[str, int] = field(default_factory=dict)
    events: Optional[pd.DataFrame] = None
    durations: Optional[Mapping[str, float]] = None
    lengths: dict[str, float] = field(default_factory=dict)

    def where(self, filename: str) -> tuple[str, Optional[int]]:
        if self.source is None:
            return str(self.audio_dir / filename), None
        return self.source, self.lines.get(filename)


class DataCheckError(ValueError, UserError):
    """Every problem found in a run's data, one ``path:LINE: message`` per line after a count."""

    def __init__(self, problems: Sequence[AnnotationError]) -> None:
        self.problems = list(problems)
        head = f"{len(self.problems)} problem(s) in the data, found before using it; fix or remove each:"
        super().__init__("\n".join([head] + [f"  {p}" for p in self.problems]))


# --------------------------------------------------------------------------- one file
def _read_at(fd: int, head: bytes, offset: int, n: int) -> bytes:
    if offset + n <= len(head):
        return head[offset : offset + n]
    return os.pread(fd, n, offset)


def _parse_wav(fd: int, head: bytes, size: int) -> AudioInfo | str | None:
    """A RIFF/WAVE header: its info, a problem, or None when soundfile should decide (unusual layout or codec)."""
    pos, fmt = 12, None
    for _ in range(_MAX_CHUNKS):
        header = _read_at(fd, head, pos, 8)
        if len(header) < 8:
            return None
        cid, csize = header[:4], int.from_bytes(header[4:], "little")
        body = pos + 8
        if cid == b"fmt ":
            raw = _read_at(fd, head, body, min(csize, 40))
            if len(raw) < 16:
                return None
            tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", raw)
            if tag == _WAVE_FORMAT_EXTENSIBLE and len(raw) >= 26:
                tag = int.from_bytes(raw[24:26], "little")  # first two bytes of the sub-format GUID
            fmt = (tag, channels, rate, block_align, bits)
        elif cid == b"data":
            if fmt is None:
                return None
            tag, channels, rate, block_align, bits = fmt
            available = size - body
            if csize == _STREAMED:
                csize = available
            if block_align == 0 or rate == 0:
                return None
            if csize > available:
                return (
                    f"truncated: its data chunk declares {csize} bytes ({csize / block_align / rate:.3f} s) but "
                    f"the file holds {available} ({max(available, 0) / block_align / rate:.3f} s); "
                    "copy or convert it again"
                )
            if tag not in _PARSED_CODECS or bits not in _PARSED_CODECS[tag] or block_align != channels * bits // 8:
                return None
            frames = csize // block_align
            if frames == 0:
                extra = f" although {available} bytes follow it (header never completed?)" if available else ""
                return f"no audio: its data chunk declares 0 frames{extra}"
            return AudioInfo(frames, rate, channels)
        pos = body + csize + (csize & 1)
    return None


def _soundfile_info(path: str) -> AudioInfo | str:
    try:
        info = sf.info(path)
    except Exception as err:  # noqa: BLE001 - any decoder failure is the user's file
        return f"unreadable by soundfile: {getattr(err, 'error_string', None) or err}"
    if info.frames <= 0:
        return "no audio: 0 frames"
    if info.samplerate <= 0 or info.channels <= 0:
        return f"invalid header: {info.samplerate} Hz, {info.channels} channel(s)"
    return AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))


def _probe(path: str) -> AudioInfo | str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "listed but not found"
    except OSError as err:
        return f"cannot open: {err.strerror or err}"
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return "empty file (0 bytes)"
        head = os.read(fd, _HEAD)
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            parsed = _parse_wav(fd, head, size)
            if parsed is not None:
                return parsed
    except OSError as err:
        return f"cannot read: {err.strerror or err}"
    finally:
        os.close(fd)
    return _soundfile_info(path)


def probe_audio(path: str | os.PathLike) -> AudioInfo | str:
    """Header of one audio file: its :class:`AudioInfo`, or a sentence saying what is wrong with it.

    Ordinary PCM and float WAVs are parsed here (only the first few KB are read: 4-6x faster than
    ``soundfile.info``, see ``benchmarks/audio_check.py``); anything else (FLAC, OGG, other codecs, unusual
    layouts) goes through ``soundfile.info``.
    """
    return _probe(os.fspath(path))


def probe_files(paths: Sequence[str | os.PathLike], workers: Optional[int] = None) -> list[AudioInfo | str]:
    """:func:`probe_audio` of every path, in order, on a thread pool (file system waits overlap).

    ``workers`` defaults to 4 per CPU core, at most 32. With warm caches the work is GIL-bound and threads
    gain nothing (nor cost much); when reads wait for the disk they overlap (1.4x with 8 threads on a local
    disk with cold pages, ``benchmarks/audio_check.py``; more on a network file system).
    """
    paths = [os.fspath(p) for p in paths]
    if workers is None:
        workers = min(32, 4 * (os.cpu_count() or 1))
    chunks = [paths[i : i + _CHUNK_FILES] for i in range(0, len(paths), _CHUNK_FILES)]
    if workers <= 1 or len(chunks) <= 1:
        return [_probe(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(workers, len(chunks)), thread_name_prefix="audio-check") as pool:
        return [info for chunk in pool.map(lambda c: [_probe(p) for p in c], chunks) for info in chunk]


# --------------------------------------------------------------------------- annotations against the audio
def _check_durations(s: ClipSet, lengths: Mapping[str, float], tolerance: float) -> None:
    """Warn once per durations.tsv whose values disagree with the audio lengths."""
    assert s.durations is not None
    off = [f for f, d in lengths.items() if f in s.durations and abs(s.durations[f] - d) > tolerance]
    if not off:
        return
    f = off[0]
    source = getattr(s.durations, "source", None) or "durations.tsv"
    line = (getattr(s.durations, "lines", None) or {}).get(f)
    logger.warning(
        "%s: %d of %d duration(s) differ from the audio length by more than %g s, e.g. %s%s: %g s there, "
        "%.3f s of audio; events are bounded by the shorter, scoring uses durations.tsv",
        source,
        len(off),
        len(lengths),
        tolerance,
        f"line {line}: " if line else "",
        f,
        s.durations[f],
        lengths[f],
    )


def bound_events(
    events: pd.DataFrame, ends: Mapping[str, float], tolerance: float = TOLERANCE
) -> tuple[pd.DataFrame, list[AnnotationError]]:
    """Hold strong events to their clip's end: ``(events clipped, problems)``.

    An onset at or after ``ends[filename]`` is a problem naming the annotation line; an offset after the end
    is clipped to it, with one warning (count and example line) when it ran past by more than ``tolerance``.
    Clips absent from ``ends`` (their audio failed a check) and no-event rows are left as they are.
    """
    source = events.attrs.get("source", "annotations")
    row_lines = events.attrs.get("row_lines")
    end = events["filename"].map(ends).to_numpy(dtype=np.float64)
    onset = events["onset"].to_numpy(dtype=np.float64)
    offset = events["offset"].to_numpy(dtype=np.float64)
    known = ~np.isnan(end) & ~np.isnan(onset)

    def line(i: int) -> Optional[int]:
        if row_lines is not None:
            return int(row_lines[i])
        return events.attrs.get("lines", {}).get(events["filename"].iat[i])

    def describe(i: int) -> str:
        return f"{events['filename'].iat[i]} {events['event_label'].iat[i]} {onset[i]:g}-{offset[i]:g} s"

    starts_past = known & (onset >= end)
    problems = [
        AnnotationError(
            source,
            line(i),
            f"event {describe(i)} starts at or after the end of its clip ({end[i]:.3f} s); "
            "is it annotated on the right file?",
        )
        for i in np.flatnonzero(starts_past)
    ]
    past = known & ~starts_past & (offset > end)
    if not past.any():
        return events, problems
    far = np.flatnonzero(past & (offset > end + tolerance))
    if len(far):
        i = far[0]
        logger.warning(
            "%s: %d event(s) end more than %g s after the end of their clip and were clipped to it, "
            "e.g. line %s: %s, clip ends at %.3f s",
            source,
            len(far),
            tolerance,
            line(i),
            describe(i),
            end[i],
        )
    out = events.copy()
    out["offset"] = np.where(past, end, offset)
    out.attrs = dict(events.attrs)
    return out, problems


# --------------------------------------------------------------------------- all sets
def check_sets(
    sets: Sequence[ClipSet],
    problems: Sequence[AnnotationError] = (),
    tolerance: float = TOLERANCE,
    workers: Optional[int] = None,
) -> dict[str, Optional[pd.DataFrame]]:
    """Check every file of every set (see the module docstring); return each set's events, clipped.

    ``problems`` found earlier (e.g. an annotation file that could not be read) are reported with the
    rest. Raises :class:`DataCheckError` listing all of them when there is any.
    """
    problems = list(problems)
    jobs: list[tuple[ClipSet, str]] = []
    for s in sets:
        if not s.audio_dir.is_dir():
            missing = f"audio folder {s.audio_dir} does not exist"
            problems.append(AnnotationError(s.source or s.audio_dir, None, missing))
            continue
        jobs += [(s, f) for f in s.filenames]
    infos = probe_files([os.path.join(s.audio_dir, f) for s, f in jobs], workers)

    lengths: dict[str, dict[str, float]] = {s.name: {} for s in sets}
    bad_audio: dict[str, list[AnnotationError]] = {s.name: [] for s in sets}
    formats: Counter = Counter()
    for (s, f), info in zip(jobs, infos):
        if isinstance(info, AudioInfo):
            lengths[s.name][f] = info.duration
            formats[(info.sample_rate, info.channels)] += 1
            continue
        path, line = s.where(f)
        message = f"audio file {s.audio_dir / f}: {info}" if s.source is not None else info
        bad_audio[s.name].append(AnnotationError(path, line, message))

    out: dict[str, Optional[pd.DataFrame]] = {}
    for s in sets:
        problems += sorted(bad_audio[s.name], key=lambda p: p.line or 0)  # in annotation-file order
        ends = s.lengths = lengths[s.name]
        if s.durations is not None:
            source = getattr(s.durations, "source", None) or "durations.tsv"
            missing = [f for f in s.filenames if f not in s.durations]
            problems += [AnnotationError(*s.where(f), f"{f}: no duration in {source}") for f in missing]
            _check_durations(s, ends, tolerance)
            ends = {f: min(d, s.durations[f]) if f in s.durations else d for f, d in ends.items()}
        out[s.name] = s.events
        if s.events is not None:
            out[s.name], event_problems = bound_events(s.events, ends, tolerance)
            problems += event_problems
    if problems:
        raise DataCheckError(problems)
    if jobs:
        shown = ", ".join(f"{n} at {rate} Hz/{ch} ch" for (rate, ch), n in formats.most_common(4))
        names = ", ".join(s.name for s in sets)
        logger.info("Checked %d audio file(s) of %s: all readable (%s)", len(jobs), names, shown)
    return out


def warn_unlisted_clips(durations: Path, tsv: Path, audio: Path, listed: dict[str, float], clips: list[str]) -> None:
    """Warn about clips with a duration and audio but no ground-truth row: they are not evaluated."""
    known = set(clips)
    unlisted = [f for f in sorted(listed) if f not in known and (audio / f).is_file()]
    if unlisted:
        logger.warning(
            "%d clip(s) of %s with audio in %s are not in %s and are not evaluated (DCASE ground truth lists a clip "
            "without events as a row with empty onset, offset and label), e.g. %s",
            len(unlisted),
            durations,
            audio,
            tsv,
            unlisted[:3],
        )


def audio_sample_rates(folders: Sequence[Path]) -> dict[int, int]:
    """``{rate: number of files}`` over ``folders``, read from the files' headers (:func:`probe_files`); unreadable
    or non-audio files are left to the checks of the sets."""
    paths = []
    for folder in dict.fromkeys(folders):
        if folder.is_dir():
            paths += sorted(str(p) for p in folder.rglob("*") if p.is_file())
    return dict(Counter(info.sample_rate for info in probe_files(paths) if isinstance(info, AudioInfo)))


def resolve_input_sample_rate(value: Any, model_rate: int, folders: Sequence[Path]) -> int | None:
    """``features.input_sample_rate`` as the model is built with it: ``"auto"`` becomes the files' rate when they
    all share one that differs from ``model_rate`` (the model then resamples; logged), else None (the loader
    resamples, as without the key); the model's own rate becomes None too (no resampler, the same front-end and
    checkpoints as without the key); any other value is returned as it is."""
    if value != "auto":
        return None if value is not None and value == int(model_rate) else value
    rates = audio_sample_rates(folders)
    if len(rates) == 1 and next(iter(rates)) != int(model_rate):
        rate = next(iter(rates))
        logger.info(
            "features.input_sample_rate=auto: all %d audio files are at %d Hz, the model resamples them to "
            "%d Hz on the device (the loader passes them at their own rate)",
            rates[rate],
            rate,
            model_rate,
        )
        return rate
    shown = ", ".join(f"{n} at {r} Hz" for r, n in sorted(rates.items())) or "no audio files found"
    logger.info(
        "features.input_sample_rate=auto: files %s; %s",
        shown,
        "already at the model's rate, nothing to resample"
        if list(rates) == [int(model_rate)]
        else f"the loader resamples to {model_rate} Hz",
    )
    return None
