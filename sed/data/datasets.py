"""Clip datasets for strong, weak and unlabeled audio, streamed from disk.

A dataset's kind follows from the labels given: a strong DataFrame makes strong rows, a weak
DataFrame weak rows, neither unlabeled rows. Every item has the same keys and shapes, so the
three kinds can share one batch; ``has_strong`` / ``has_weak`` tell the loss which targets
are real (strong loss on strong rows only, weak loss on weak rows only).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from torch.utils.data import ConcatDataset, Dataset, get_worker_info

from sed.data.audio import (
    CHANNEL_MODES,
    NONFINITE_POLICIES,
    AudioError,
    check_finite,
    fit_length,
    read_raw,
    resample,
)
from sed.data.encoder import LabelEncoder
from sed.data.tsv import CONFIDENCE, AnnotationError
from sed.features.frontend import input_clip_samples
from sed.utils.io import atomic_open

logger = logging.getLogger(__name__)
_CACHE_HINT = "; set a cache_dir (data.cache_dir) to resample each file once instead of every epoch"


class SEDDataset(Dataset):
    """Fixed-length clips with their targets.

    Args:
        audio_dir: folder holding the audio files named in ``filenames``.
        filenames: clips of this dataset; ``None`` takes the filenames of ``strong``/``weak``
            in order of first appearance. A clip absent from ``strong`` has no events.
        encoder: label encoder (its clip duration must match).
        sample_rate: rate of the audio items: the encoder's (the model's) rate, or the rate the model takes when it
            resamples its input (``features.input_sample_rate``); labels are framed at the encoder's rate either
            way (crop shifts and lengths are converted through seconds, exactly).
        strong / weak: labels from :func:`sed.data.tsv.read_strong` / ``read_weak``
            (at most one of them).
        random_crop: training crops a random window of longer files (labels move with it);
            evaluation crops from 0. Shorter files are zero-padded at the end.
        channel: ``"mean"`` or ``"random"`` channel for multi-channel files.
        seed: seed of the crop/channel randomness in the main process; in DataLoader workers
            the worker seed (derived from the global seed) is combined with it. An item asked for as
            ``dataset[(index, item_seed)]`` draws from ``item_seed`` alone instead (training:
            :class:`sed.data.sampler.MixedBatchSampler` with ``item_seeds``).
        cache_dir: when set, each file is decoded and resampled once and stored as ``.npy``
            (read back memory-mapped, so only the crop is touched); entries decoded under
            ``nonfinite="zero"`` are kept apart from the others.
        check_readable: also open every file's header at construction (slower, but a broken
            file fails now instead of mid-epoch).
        nonfinite: NaN/Inf samples are an error naming the file (``"error"``) or replaced with
            silence and logged (``"zero"``); see :func:`sed.data.audio.check_finite`.
        whole_clip: evaluation: every item is the whole file (never cropped; a shorter one is
            zero-padded to the clip length as usual), its strong target covers the whole file, and
            ``length`` holds its true number of samples. :func:`collate` pads such items to the
            longest of the batch.
        window_hop: training on long recordings: every file gives one item per window of ``clip_duration``
            starting every ``window_hop`` seconds (labels cut to the window), plus a last, zero-padded one
            starting one hop later when audio is left after the last whole window; a file no longer than a
            window gives one item. Needs ``lengths``. None: one item per file (a random crop of a longer one).
        lengths: seconds of audio per file (:attr:`sed.data.checks.ClipSet.lengths`), for ``window_hop``.
        extra: constant tensors added to every item under their keys (the training datamodule's per-dataset
            ``class_mask``, ``mix_group`` and ``consistency``).

    Errors: a missing audio file raises :class:`AnnotationError` naming the annotation file
    and line when known (else the audio path); an empty dataset raises naming its source.
    """

    def __init__(
        self,
        audio_dir: str | os.PathLike,
        filenames: Sequence[str] | None,
        encoder: LabelEncoder,
        sample_rate: int,
        clip_duration: float,
        strong: pd.DataFrame | None = None,
        weak: pd.DataFrame | None = None,
        random_crop: bool = False,
        channel: str = "mean",
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        check_readable: bool = False,
        nonfinite: str = "error",
        whole_clip: bool = False,
        window_hop: float | None = None,
        lengths: Mapping[str, float] | None = None,
        extra: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        if strong is not None and weak is not None:
            raise ValueError("SEDDataset takes strong or weak labels, not both")
        if channel not in CHANNEL_MODES:
            raise ValueError(f"channel must be one of {CHANNEL_MODES}, got {channel!r}")
        if nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
        if abs(float(clip_duration) - encoder.clip_duration) > 1e-9:
            raise ValueError(
                f"dataset ({clip_duration} s) and label encoder ({encoder.clip_duration} s) disagree on the clip "
                "duration; labels would be misaligned"
            )
        self.audio_dir = Path(audio_dir)
        self.encoder = encoder
        self.sample_rate = int(sample_rate)
        self.clip_duration = float(clip_duration)
        # At another rate than the encoder's (a model that resamples its input), the clip whose resampling gives the
        # encoder's clip exactly (sed.features.frontend.input_clip_samples raises when there is none).
        self.n_samples = input_clip_samples(self.clip_duration, self.sample_rate, encoder.sample_rate)
        self.random_crop = bool(random_crop)
        self.channel = channel
        self.seed = int(seed)
        self.nonfinite = nonfinite
        self.whole_clip = bool(whole_clip)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        labels = strong if strong is not None else weak
        self.kind = "strong" if strong is not None else "weak" if weak is not None else "unlabeled"

        # Where the clip list came from, for error messages.
        attrs = labels.attrs if labels is not None else {}
        self.source: str | None = getattr(filenames, "source", None) or attrs.get("source")
        self._lines: dict[str, int] = dict(attrs.get("lines", {}) or getattr(filenames, "lines", {}) or {})

        if filenames is None:
            if labels is None:
                raise ValueError("SEDDataset needs filenames for unlabeled data")
            filenames = list(dict.fromkeys(labels["filename"]))
        self.filenames: list[str] = [str(f) for f in filenames]
        if not self.filenames:
            raise AnnotationError(self.source or self.audio_dir, None, f"empty dataset: no {self.kind} clips listed")
        if len(set(self.filenames)) != len(self.filenames):
            seen: set[str] = set()
            dup = next(f for f in self.filenames if f in seen or seen.add(f))
            raise AnnotationError(self.source or self.audio_dir, self._lines.get(dup), f"duplicate clip {dup!r}")
        self._check_files(check_readable)

        self._events: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._confidences: dict[str, np.ndarray] = {}  # soft labels: each event's confidence (sed.data.tsv)
        self._weak: dict[str, np.ndarray] = {}
        if strong is not None:
            self._index_strong(strong)
        if weak is not None:
            self._index_weak(weak)
        self.extra = dict(extra or {})
        self.window_hop = None if window_hop is None else float(window_hop)
        self._lengths = None if window_hop is None or lengths is None else dict(lengths)
        self._starts: list[float | None] = [None] * len(self.filenames)  # item -> window start (s), None: crop
        self._files = list(range(len(self.filenames)))  # item -> file
        if self.window_hop is not None:
            self._index_windows(lengths)
        self._gen: torch.Generator | None = None
        self._gen_key: Any = object()

    # --- construction helpers ---------------------------------------------------------
    def _where(self, name: str) -> tuple[str | os.PathLike, int | None]:
        if self.source is not None:
            return self.source, self._lines.get(name)
        return self.audio_dir / name, None

    def _check_files(self, check_readable: bool) -> None:
        if not self.audio_dir.is_dir():
            raise AnnotationError(self.source or self.audio_dir, None, f"audio folder {self.audio_dir} does not exist")
        present = {e.name for e in os.scandir(self.audio_dir) if e.is_file()}
        missing = [
            f for f in self.filenames if f not in present and not (os.sep in f and (self.audio_dir / f).is_file())
        ]
        if missing:
            where, line = self._where(missing[0])
            more = f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""
            raise AnnotationError(where, line, f"audio file {self.audio_dir / missing[0]} listed but not found{more}")
        if check_readable:
            for f in self.filenames:
                try:
                    sf.info(os.fspath(self.audio_dir / f))
                except Exception as err:  # noqa: BLE001 - any decoder failure is the user's file
                    where, line = self._where(f)
                    raise AnnotationError(where, line, f"audio file {self.audio_dir / f} unreadable: {err}") from None

    def _index_strong(self, strong: pd.DataFrame) -> None:
        wanted = set(self.filenames)
        df = strong[strong["filename"].isin(wanted)]
        df = df[~(df["onset"].isna() | df["offset"].isna())]
        known = set(self.encoder.classes)
        bad = df[~df["event_label"].isin(known)]
        if len(bad):
            name, label = bad["filename"].iloc[0], bad["event_label"].iloc[0]
            where, line = self._where(name)
            raise AnnotationError(where, line, f"unknown label {label!r} for {name}; known: {self.encoder.classes}")
        idx = df["event_label"].map(self.encoder._index).to_numpy(dtype=np.int64)
        on = df["onset"].to_numpy(dtype=np.float64)
        off = df["offset"].to_numpy(dtype=np.float64)
        conf = df[CONFIDENCE].to_numpy(dtype=np.float32) if CONFIDENCE in df.columns else None
        for name, rows in pd.Series(np.arange(len(df))).groupby(df["filename"].to_numpy()):
            r = rows.to_numpy()
            self._events[name] = (on[r], off[r], idx[r])
            if conf is not None:
                self._confidences[name] = conf[r]

    def _index_weak(self, weak: pd.DataFrame) -> None:
        for name, labels in zip(weak["filename"], weak["event_labels"]):
            if isinstance(labels, str):
                labels = [p.strip() for p in labels.split(",") if p.strip()]
            try:
                self._weak[name] = self.encoder.encode_weak(labels)
            except ValueError as err:
                where, line = self._where(name)
                raise AnnotationError(where, line, str(err)) from None

    def _index_windows(self, lengths: Mapping[str, float] | None) -> None:
        if self.window_hop <= 0:
            raise ValueError(f"window_hop must be > 0 seconds, got {self.window_hop}")
        if lengths is None or any(f not in lengths for f in self.filenames):
            raise ValueError("SEDDataset(window_hop=...) needs the length of every file (lengths)")
        files, starts = [], []
        for i, name in enumerate(self.filenames):
            for start in window_starts(float(lengths[name]), self.clip_duration, self.window_hop):
                files.append(i)
                starts.append(start)
        self._files, self._starts = files, starts

    def active_frames(self) -> tuple[np.ndarray, int]:
        """Per class, the label frames of this set in which the class is active (``[C]``; soft labels count their
        value), and the number of label frames: clips of ``clip_duration`` uncropped, a recording cut into windows
        (``window_hop``) over its whole length."""
        n_classes, n_frames = self.encoder.n_classes, self.encoder.n_frames
        active = np.zeros(n_classes, dtype=np.float64)
        total = 0
        for name in self.filenames:
            n = n_frames
            if self._lengths is not None:
                n = max(n_frames, int(np.ceil(self._lengths[name] / self.encoder.frame_duration - 1e-9)))
            total += n
            ev = self._events.get(name)
            if ev is not None:
                active += self.encoder.encode_arrays(*ev, n_frames=n, values=self._confidences.get(name)).sum(axis=1)
        return active, total

    def active_frame_fractions(self) -> np.ndarray:
        """Per class, the share of this set's label frames (:meth:`active_frames`) in which the class is active:
        ``[C]``, 0 for every class of a set without strong labels."""
        active, total = self.active_frames()
        return active / total

    # --- randomness -------------------------------------------------------------------
    def _rng(self) -> torch.Generator:
        """Generator for crops/channels: seeded from ``seed`` and, in a worker, the worker seed."""
        info = get_worker_info()
        key = None if info is None else (info.id, info.seed)
        if self._gen is None or key != self._gen_key:
            seed = self.seed if info is None else (info.seed * 1_000_003 + self.seed) % (2**63)
            self._gen = torch.Generator().manual_seed(seed)
            self._gen_key = key
        return self._gen

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_gen"] = None
        state["_gen_key"] = object()
        return state

    # --- audio ------------------------------------------------------------------------
    def _cache_path(self, path: Path, mode: str) -> Path:
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.sample_rate}|{mode}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        return self.cache_dir / f"{self.sample_rate}Hz" / f"{path.name}.{mode}.{digest}.npy"

    def _decode(self, path: Path, mono: bool) -> np.ndarray:
        data, rate = read_raw(path, self.nonfinite)
        if mono and data.shape[0] > 1:
            data = data.mean(axis=0, keepdims=True)
        return resample(torch.from_numpy(data), rate, self.sample_rate).numpy().astype(np.float32, copy=False)

    def _cached(self, path: Path) -> np.ndarray:
        """``[channels, samples]`` at the target rate, from the cache (decoded once)."""
        mono = self.channel == "mean"
        # Audio decoded under nonfinite="zero" may hold zeroed NaN/Inf samples: cached apart, so that a run with the
        # default policy ("error", whose entries hold only finite audio) decodes the file and reports it.
        mode = ("mono" if mono else "all") + ("-nonfinite_zero" if self.nonfinite == "zero" else "")
        try:
            cpath = self._cache_path(path, mode)
        except FileNotFoundError:
            raise AudioError(f"{path}: audio file not found") from None
        if cpath.is_file():
            try:
                return np.load(cpath, mmap_mode="r")
            except (ValueError, OSError):
                logger.warning("%s: unreadable cache entry, decoding %s again", cpath, path)
        data = self._decode(path, mono)
        cpath.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(cpath, "wb", fsync=False) as f:  # a lost cache entry is just decoded again
            np.save(f, data)
        return data

    def _crop_start(self, n: int, gen: torch.Generator, window: float | None = None) -> int:
        if window is not None:  # a window of a long recording (window_hop)
            return min(int(round(window * self.sample_rate)), max(n - 1, 0))
        if n <= self.n_samples or not self.random_crop:
            return 0
        return int(torch.randint(n - self.n_samples + 1, (1,), generator=gen))

    def _pick_channel(self, n_channels: int, gen: torch.Generator) -> int | None:
        """Channel to keep, or None for the mean of all (a mono file needs no mixing)."""
        if n_channels == 1:
            return 0
        if self.channel == "mean":
            return None
        return int(torch.randint(n_channels, (1,), generator=gen))

    def _varies(self, n_samples: int, n_channels: int, window: float | None = None) -> bool:
        """Whether a file of this length (at the target rate) and channel count gives other audio at every epoch:
        a random crop of a longer file (not a fixed window of it), a random channel of a multi-channel one (a frozen
        encoder's embeddings of such clips cannot be cached)."""
        crop = window is None and self.random_crop and n_samples > self.n_samples
        return crop or (self.channel == "random" and n_channels > 1)

    def _load(self, path: Path, gen: torch.Generator, window: float | None = None) -> tuple[torch.Tensor, int, bool]:
        """Return the clip (``n_samples`` long), its crop start in samples (``window``: the start in seconds of
        a window of a long recording instead of a crop) and whether it varies per epoch."""
        if self.cache_dir is not None:
            data = self._cached(path)
            ch = self._pick_channel(data.shape[0], gen)
            start = self._crop_start(data.shape[1], gen, window)
            seg = data[:, start : start + self.n_samples]
            seg = seg.mean(axis=0) if ch is None else seg[ch]
            wav = torch.from_numpy(np.array(seg, dtype=np.float32))
            varies = self._varies(data.shape[1], data.shape[0], window)
            return fit_length(wav, self.n_samples, random_crop=False)[0], start, varies
        # Files already at the target rate: read only the crop (streams long files).
        try:
            info = sf.info(os.fspath(path))
        except Exception as err:  # noqa: BLE001
            if not path.exists():
                raise AudioError(f"{path}: audio file not found") from None
            raise AudioError(f"{path}: cannot read audio file: {err}") from None
        if info.samplerate == self.sample_rate and info.frames > 0:
            ch = self._pick_channel(info.channels, gen)
            start = self._crop_start(info.frames, gen, window)
            try:
                data, _ = sf.read(os.fspath(path), start=start, frames=self.n_samples, dtype="float32", always_2d=True)
            except Exception as err:  # noqa: BLE001
                raise AudioError(f"{path}: cannot read audio file: {err}") from None
            data = check_finite(data, path, self.nonfinite)
            wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1) if ch is None else data[:, ch]))
            varies = self._varies(info.frames, info.channels, window)
            return fit_length(wav, self.n_samples, random_crop=False)[0], start, varies
        data, rate = read_raw(path, self.nonfinite)
        ch = self._pick_channel(data.shape[0], gen)
        mono = data.mean(axis=0) if ch is None else data[ch]
        wav = resample(torch.from_numpy(np.ascontiguousarray(mono)), rate, self.sample_rate, hint=_CACHE_HINT)
        varies = self._varies(wav.shape[-1], data.shape[0], window)
        if window is not None:
            start = self._crop_start(wav.shape[-1], gen, window)
            wav = fit_length(wav[start : start + self.n_samples].to(torch.float32), self.n_samples, False)[0]
            return wav, start, varies
        return (*fit_length(wav.to(torch.float32), self.n_samples, self.random_crop, gen), varies)

    def _load_whole(self, path: Path, gen: torch.Generator) -> tuple[torch.Tensor, int]:
        """The whole file at the target rate (zero-padded to the clip length when shorter) and its true length."""
        data = self._cached(path) if self.cache_dir is not None else self._decode(path, self.channel == "mean")
        ch = self._pick_channel(data.shape[0], gen)
        wav = torch.from_numpy(np.array(data.mean(axis=0) if ch is None else data[ch], dtype=np.float32))
        length = int(wav.shape[-1])
        return fit_length(wav, self.n_samples, random_crop=False)[0] if length < self.n_samples else wav, length

    # --- Dataset API ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):  # (index, the item's own seed): draws independent of the loading history
            index, gen = int(key[0]), torch.Generator().manual_seed(int(key[1]))
        else:
            index, gen = key, self._rng()
        name = self.filenames[self._files[index]]
        n_classes, n_frames = self.encoder.n_classes, self.encoder.n_frames
        if self.whole_clip:
            audio, length = self._load_whole(self.audio_dir / name, gen)
            start, varies = 0, False
            if length > self.n_samples:  # frames starting before the end of the file (on the encoder's grid)
                n_frames = -(-length * self.encoder.sample_rate // (self.sample_rate * self.encoder.frame_hop_samples))
        else:
            audio, start, varies = self._load(self.audio_dir / name, gen, self._starts[index])
        if self.kind == "strong":
            ev = self._events.get(name)
            if ev is None:
                strong = np.zeros((n_classes, n_frames), dtype=np.float32)
            else:
                strong = self.encoder.encode_arrays(
                    *ev, shift=start / self.sample_rate, n_frames=n_frames, values=self._confidences.get(name)
                )
            weak = strong.max(axis=1)
        elif self.kind == "weak":
            strong = np.zeros((n_classes, n_frames), dtype=np.float32)
            weak = self._weak.get(name)
            if weak is None:
                weak = np.zeros(n_classes, dtype=np.float32)
        else:
            strong = np.zeros((n_classes, n_frames), dtype=np.float32)
            weak = np.zeros(n_classes, dtype=np.float32)
        item = {
            "audio": audio,
            "strong": torch.from_numpy(strong),
            "weak": torch.from_numpy(np.array(weak, dtype=np.float32)),
            "has_strong": torch.tensor(self.kind == "strong"),
            "has_weak": torch.tensor(self.kind == "weak"),
            "filename": name,
            "index": int(index),
            "varies": torch.tensor(varies),  # other audio at the next epoch (see _varies)
        }
        if self.whole_clip:
            item["length"] = torch.tensor(length)
        item.update(self.extra)
        return item

    def __repr__(self) -> str:
        windows = f" in {len(self)} windows" if self.window_hop is not None else ""
        return f"SEDDataset({self.kind}, {len(self.filenames)} clips{windows} from {self.source or self.audio_dir})"


def window_starts(length: float, window: float, hop: float) -> list[float]:
    """Start times (s) of the training windows of a recording of ``length`` seconds (:class:`SEDDataset`'s
    ``window_hop``): every ``hop`` while a whole ``window`` fits, then one more, zero-padded, when audio is left
    after the last whole window (the 2024 baseline cuts MAESTRO's recordings so: 10-s windows, 1-s hop)."""
    if length <= window:
        return [0.0]
    n_whole = int(np.floor((length - window) / hop + 1e-9)) + 1
    starts = [round(k * hop, 9) for k in range(n_whole)]
    if starts[-1] + window < length - 1e-9:
        starts.append(round(n_whole * hop, 9))
    return starts


class SeededConcatDataset(ConcatDataset):
    """Datasets end to end, as ``ConcatDataset``, whose items are asked for as ``(index, item_seed)`` (global index,
    the seed of the item's random draws): what :class:`sed.data.sampler.MixedBatchSampler` yields with
    ``item_seeds``."""

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        i = bisect.bisect_right(self.cumulative_sizes, index)
        return self.datasets[i][(index - (self.cumulative_sizes[i - 1] if i else 0), seed)]


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of a list of items; ``filename`` stays a list, ``index`` a LongTensor.

    Whole-clip items (``whole_clip=True``, with a ``length``) of different lengths have their ``audio`` and
    ``strong`` zero-padded at the end to the longest of the batch; ``length`` keeps each one's true length.
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    padded = ("audio", "strong") if "length" in batch[0] else ()
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if key == "filename":
            out[key] = values
        elif key == "index":
            out[key] = torch.tensor(values, dtype=torch.long)
        elif key in padded:
            size = max(v.shape[-1] for v in values)
            out[key] = torch.stack([torch.nn.functional.pad(v, (0, size - v.shape[-1])) for v in values])
        else:
            out[key] = torch.stack(values)
    return out
