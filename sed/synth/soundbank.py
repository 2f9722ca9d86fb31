"""Sound sources for the synthetic dataset: the sound-bank protocol, a user's folder, and the loader.

A *sound bank* gives two things to the scene generator (:mod:`sed.synth.scenes`):

* ``event(label, rng, sample_rate) -> np.ndarray``: one instance of an event class, mono float32,
  trimmed so that its first and last samples are where the sound starts and ends (the annotation
  is the span of that array), normalised to unit RMS;
* ``background(rng, n_samples, sample_rate) -> np.ndarray``: a mono float32 background of exactly
  ``n_samples`` samples, unit RMS.

The default, :class:`~sed.synth.procedural.ProceduralSoundBank`, synthesises both from a seed.
:class:`FolderSoundBank` reads ``foreground/<class>/*.wav`` and ``background/*.wav`` of a user's
folder (any rate and channel count; mixed to mono and resampled with
``torchaudio.functional.resample``), so DESED-like data can be built from one's own recordings.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from sed.synth.dsp import TWO_PI, _unit_rms, trim_silence  # noqa: F401  (TWO_PI re-exported)
from sed.synth.procedural import (  # noqa: F401  (re-exported: these lived here before the split)
    DEFAULT_CLASSES,
    PROCEDURAL_CLASSES,
    EventClass,
    ProceduralSoundBank,
)
from sed.utils.errors import UserError

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class SoundbankError(ValueError, UserError):
    """A user soundbank folder is missing, empty or malformed; the message names the folder/file."""


class SoundBank(Protocol):
    """What the scene generator needs from a source of sounds."""

    classes: list[str]

    def event(self, label: str, rng: np.random.Generator, sample_rate: int) -> np.ndarray: ...

    def background(self, rng: np.random.Generator, n_samples: int, sample_rate: int) -> np.ndarray: ...

    def describe(self) -> str: ...


# ----------------------------------------------------------------------------------------------
# user folder
# ----------------------------------------------------------------------------------------------


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


class FolderSoundBank:
    """Sounds from ``root/foreground/<class>/*.wav`` and ``root/background/*.wav`` (also flac/ogg).

    Classes are the foreground subfolder names (sorted). Files are read on demand (cached
    per process), mixed to mono and resampled to the requested rate. An event is a whole
    foreground file, trimmed of leading/trailing silence; a background is a random excerpt
    of a background file, looped if the file is shorter than the clip.
    """

    def __init__(self, root: str | os.PathLike, classes: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise SoundbankError(f"soundbank folder {self.root} does not exist or is not a folder")
        fg = self.root / "foreground"
        bg = self.root / "background"
        for folder, what in ((fg, "foreground/<class>/*.wav"), (bg, "background/*.wav")):
            if not folder.is_dir():
                raise SoundbankError(f"soundbank {self.root}: missing folder {folder} (expected layout: {what})")
        found = sorted(d.name for d in fg.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not found:
            raise SoundbankError(f"soundbank folder {fg} has no class subfolders (expected {fg}/<class>/*.wav)")
        if classes is not None:
            missing = [c for c in classes if c not in found]
            if missing:
                raise SoundbankError(f"soundbank folder {fg} lacks class subfolder(s) {missing}; found {found}")
            found = list(classes)
        self.classes = found
        self.foreground: dict[str, list[Path]] = {}
        for c in self.classes:
            files = _audio_files(fg / c)
            if not files:
                raise SoundbankError(
                    f"soundbank class folder {fg / c} contains no audio files ({'/'.join(AUDIO_EXTENSIONS)})"
                )
            self.foreground[c] = files
        self.backgrounds = _audio_files(bg)
        if not self.backgrounds:
            raise SoundbankError(
                f"soundbank background folder {bg} contains no audio files ({'/'.join(AUDIO_EXTENSIONS)})"
            )
        import soundfile as sf

        for path in [p for files in self.foreground.values() for p in files] + self.backgrounds:
            try:
                info = sf.info(str(path))
            except Exception as err:  # soundfile raises several types for broken files
                raise SoundbankError(f"soundbank file {path} cannot be read as audio: {err}") from None
            if info.frames == 0:
                raise SoundbankError(f"soundbank file {path} is empty (0 samples)")
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def describe(self) -> str:
        return f"folder {self.root}"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def _load(self, path: Path, sample_rate: int) -> np.ndarray:
        key = (str(path), sample_rate)
        if key not in self._cache:
            import soundfile as sf

            try:
                data, rate = sf.read(str(path), dtype="float32", always_2d=True)
            except Exception as err:
                raise SoundbankError(f"soundbank file {path} cannot be read as audio: {err}") from None
            x = data.mean(axis=1)
            if rate != sample_rate:
                import torch

                from sed.data.audio import resample

                x = resample(torch.from_numpy(np.ascontiguousarray(x)), rate, sample_rate).numpy()
            if len(self._cache) > 256:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = x.astype(np.float32)
        return self._cache[key]

    def event(self, label: str, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
        files = self.foreground[label]
        path = files[int(rng.integers(len(files)))]
        x = trim_silence(self._load(path, sample_rate), sample_rate)
        if x.size == 0 or not np.any(x):
            raise SoundbankError(f"soundbank file {path} is silent")
        return _unit_rms(x)

    def background(self, rng: np.random.Generator, n_samples: int, sample_rate: int) -> np.ndarray:
        path = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        x = self._load(path, sample_rate)
        if x.size < n_samples:
            x = np.tile(x, int(np.ceil(n_samples / x.size)) + 1)
            start = int(rng.integers(0, x.size - n_samples + 1))
        else:
            start = int(rng.integers(0, x.size - n_samples + 1))
        out = x[start : start + n_samples]
        if not np.any(out):
            return out.astype(np.float32)  # silent background: events then sit on digital silence
        return _unit_rms(out)


def load_soundbank(soundbank: "str | os.PathLike | SoundBank | None") -> SoundBank:
    """``None`` -> :class:`ProceduralSoundBank`; a path -> :class:`FolderSoundBank`; a bank -> itself."""
    if soundbank is None:
        return ProceduralSoundBank()
    if isinstance(soundbank, (str, os.PathLike)):
        return FolderSoundBank(soundbank)
    return soundbank
