"""A second embedded dataset in the manner of MAESTRO Real (DCASE 2024 Task 4): minutes-long scene recordings with
soft labels from simulated annotators (``python -m sed.synth OUT_DIR --recordings``).

* **Recordings**, not clips: each one a scene (street, cafe, station) of ``duration`` seconds (default 2 minutes),
  events at random times over a procedural background, at SNRs of 0-20 dB; training cuts them into windows, and
  evaluation scores them over their whole length.
* **A partly different vocabulary** (:data:`RECORDING_CLASSES`): ``footsteps`` is a class of the clip dataset
  too; ``people_talking``, ``announcement``, ``birds_singing`` and ``dishes`` are sounds of the clip dataset's
  ``speech_like``, ``chirp`` and ``click_train`` under other names (:data:`ALIASES`: as MAESTRO's
  ``people talking`` is DESED's ``Speech``); ``car_passing`` and ``door_knock`` are its own.
* **Soft labels**: every event is annotated by ``annotators`` simulated annotators (default 5), each of whom
  notices it with a probability rising with its SNR and marks its onset and offset with a random error of about
  0.15 s; the label is the mean of the marks of those who noticed it and its ``confidence`` the share who did
  (MAESTRO's confidences come from several annotators' agreement). An event nobody noticed is not annotated.
* **Splits**: ``train``, ``validation`` (checkpoint selection) and ``test``; mpAUC is computed on
  :data:`EVALUATED_CLASSES` (5 of 7, as MAESTRO Real's 11 of 17).

Layout under ``OUT_DIR``: ``audio/<split>/<scene>_<NNN>.wav``, ``metadata/<split>/<split>.tsv`` (``filename onset
offset event_label confidence``) and ``metadata/<split>/durations.tsv``, ``classes.txt``, ``README.txt``. The same
arguments give byte-identical files; a folder is generated into only when new, empty, or this generator's with the
same settings (markers ``.generating`` then ``.complete``), as :func:`sed.synth.generate_dataset` does.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from sed.synth.dsp import TWO_PI, _fades, _harmonics, _noise, _smooth_random, _spectral_filter, _unit_rms, trim_silence
from sed.synth.procedural import PROCEDURAL_CLASSES, ProceduralSoundBank
from sed.synth.scenes import GenerationRefused, _write_wav

logger = logging.getLogger(__name__)

RECORDINGS_VERSION = "1"
SPLITS = ("train", "validation", "test")
DEFAULT_RECORDING_SIZES: dict[str, int] = {"train": 6, "validation": 2, "test": 2}
DEFAULT_DURATION = 120.0
SCENES = ("street", "cafe", "station")


def _car_passing(rng: np.random.Generator, sr: int, dur: float) -> np.ndarray:
    """A vehicle driving by: low engine harmonics and tyre noise swelling to a peak and fading, pitch dropping."""
    n = int(dur * sr)
    t = np.arange(n) / sr
    peak = rng.uniform(0.35, 0.65) * dur
    swell = np.exp(-0.5 * ((t - peak) / (dur * rng.uniform(0.15, 0.25))) ** 2)
    f0 = rng.uniform(40.0, 90.0) * (1.0 + 0.06 * np.tanh((peak - t) / 0.8))  # Doppler-like drop past the peak
    engine = _harmonics(TWO_PI * np.cumsum(f0) / sr, 1.0 / np.arange(1, 13), float(f0.max()), sr)
    tyres = _noise(rng, n, sr, low=200.0, high=2500.0, slope=1.0)
    return (_unit_rms(engine) + rng.uniform(0.6, 1.2) * _unit_rms(tyres)) * swell


def _door_knock(rng: np.random.Generator, sr: int, dur: float) -> np.ndarray:
    """Two to five knocks on wood: damped 150-400 Hz resonances with a short noisy attack."""
    n = int(dur * sr)
    x = np.zeros(n)
    f = rng.uniform(150.0, 400.0)
    length = int(0.12 * sr)
    tt = np.arange(length) / sr
    hits = int(rng.integers(2, 6))
    gap = min(rng.uniform(0.12, 0.3), max(dur - 0.12, 0.05) / hits)
    for k in range(hits):
        s = int(k * gap * sr)
        m = min(length, n - s)
        if m <= 0:
            break
        tone = np.sin(TWO_PI * f * rng.uniform(0.95, 1.05) * tt[:m]) + 0.4 * rng.standard_normal(m)
        x[s : s + m] += tone * np.exp(-tt[:m] / rng.uniform(0.015, 0.03)) * rng.uniform(0.7, 1.0)
    return _spectral_filter(x, sr, low=80.0, high=min(3000.0, 0.45 * sr), order=2)


def _loudspeaker(rng: np.random.Generator, sr: int, dur: float) -> np.ndarray:
    """An announcement: speech through a 300-3400 Hz loudspeaker, with a faint echo."""
    voice = PROCEDURAL_CLASSES["speech_like"].synth(rng, sr, dur)
    voice = _spectral_filter(voice, sr, low=300.0, high=min(3400.0, 0.45 * sr), order=3)
    delay = int(rng.uniform(0.05, 0.12) * sr)
    echo = np.concatenate([np.zeros(delay), voice[:-delay]]) if 0 < delay < voice.size else 0.0
    return (voice + 0.35 * echo) * _fades(voice.size, sr, 0.05, 0.1)


@dataclass(frozen=True)
class RecordingClass:
    """A class of the recordings: its sound, its duration range (s) and its weight in each scene."""

    name: str
    sound: str  # a procedural class of sed.synth.procedural, or one of this module's
    duration: tuple[float, float]
    weights: tuple[float, float, float]  # street, cafe, station


RECORDING_CLASSES: dict[str, RecordingClass] = {
    c.name: c
    for c in (
        RecordingClass("people_talking", "speech_like", (2.0, 8.0), (1.0, 3.0, 1.5)),
        RecordingClass("announcement", "announcement", (2.0, 6.0), (0.0, 0.2, 1.5)),
        RecordingClass("birds_singing", "chirp", (1.0, 4.0), (1.5, 0.3, 0.2)),
        RecordingClass("dishes", "click_train", (0.5, 3.0), (0.0, 2.5, 0.3)),
        RecordingClass("footsteps", "footsteps", (1.5, 6.0), (1.5, 1.0, 2.0)),
        RecordingClass("car_passing", "car_passing", (3.0, 8.0), (2.5, 0.2, 0.5)),
        RecordingClass("door_knock", "door_knock", (0.4, 1.5), (0.3, 1.0, 0.5)),
    )
}
#: Labels of the recordings that are classes of the clip dataset (sed.synth.DEFAULT_CLASSES) under another name.
ALIASES: dict[str, str] = {
    "people_talking": "speech_like",
    "announcement": "speech_like",
    "birds_singing": "chirp",
    "dishes": "click_train",
}
#: The classes mpAUC is computed on (the others are annotated, trained on, and not scored).
EVALUATED_CLASSES: tuple[str, ...] = ("people_talking", "birds_singing", "dishes", "footsteps", "car_passing")
_OWN_SOUNDS = {"car_passing": _car_passing, "door_knock": _door_knock, "announcement": _loudspeaker}


@dataclass(frozen=True)
class RecordingConfig:
    """How recordings are composed and annotated."""

    duration: float = DEFAULT_DURATION
    sample_rate: int = 16000
    events_per_minute: float = 24.0
    snr_range: tuple[float, float] = (0.0, 20.0)
    background_dbfs: tuple[float, float] = (-40.0, -25.0)
    annotators: int = 5
    boundary_error: float = 0.15  # s, standard deviation of an annotator's onset/offset
    peak: float = 0.9


def _event(label: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    spec = RECORDING_CLASSES[label]
    dur = float(np.exp(rng.uniform(*np.log(spec.duration))))
    synth = _OWN_SOUNDS.get(spec.sound) or PROCEDURAL_CLASSES[spec.sound].synth
    return _unit_rms(trim_silence(synth(rng, sr, dur), sr))


def _annotate(
    rng: np.random.Generator, onset: float, offset: float, snr: float, length: float, config: RecordingConfig
) -> tuple[float, float, float] | None:
    """The event as the annotators saw it: ``(onset, offset, confidence)``, None when none of them noticed it."""
    noticed = rng.random(config.annotators) < np.clip(1.0 / (1.0 + np.exp(-(snr - 5.0) / 3.0)), 0.1, 0.97)
    marks = np.clip(rng.normal([onset, offset], config.boundary_error, (config.annotators, 2)), 0.0, length)
    if not noticed.any():
        return None
    a, b = marks[noticed].mean(axis=0)
    a, b = round(float(min(a, b)), 3), round(float(max(a, b)), 3)
    if b - a < 0.05:
        b = round(min(a + 0.05, length), 3)
    return a, b, round(float(noticed.mean()), 3)


def make_recording(rng: np.random.Generator, scene: str, config: RecordingConfig) -> tuple[np.ndarray, list]:
    """One scene recording: mono float32 audio and its annotated events ``(onset, offset, label, confidence)``."""
    sr, length = config.sample_rate, config.duration
    n = int(round(length * sr))
    level = 10.0 ** (rng.uniform(*config.background_dbfs) / 20.0)
    mix = ProceduralSoundBank().background(rng, n, sr).astype(np.float64) * level
    mix *= 1.0 + 0.3 * _smooth_random(rng, n, sr, 0.05)  # the scene's slow level changes
    weights = np.array([c.weights[SCENES.index(scene)] for c in RECORDING_CLASSES.values()])
    names = list(RECORDING_CLASSES)
    events = []
    for _ in range(int(rng.poisson(config.events_per_minute * length / 60.0))):
        label = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        x = _event(label, rng, sr)
        start = int(rng.integers(0, max(n - x.size // 2, 1)))
        stop = min(n, start + x.size)
        seg = x[: stop - start].astype(np.float64)
        power = float(np.mean(seg * seg)) if seg.size else 0.0
        if power <= 0:
            continue
        snr = rng.uniform(*config.snr_range)
        mix[start:stop] += level * 10.0 ** (snr / 20.0) / np.sqrt(power) * seg
        seen = _annotate(rng, start / sr, stop / sr, snr, round(n / sr, 3), config)
        if seen is not None:
            events.append((seen[0], seen[1], label, seen[2]))
    peak = float(np.max(np.abs(mix)))
    if peak > config.peak:
        mix *= config.peak / peak
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return mix.astype(np.float32), events


def _settings(seed: int, sizes: Mapping[str, int], config: RecordingConfig) -> dict:
    return json.loads(
        json.dumps(
            {
                "kind": "recordings",
                "version": RECORDINGS_VERSION,
                "seed": int(seed),
                "sizes": dict(sizes),
                "config": config.__dict__,
            }
        )
    )


def _check_sizes(sizes: Mapping[str, int] | None) -> dict[str, int]:
    out = dict(DEFAULT_RECORDING_SIZES)
    for key, value in (sizes or {}).items():
        if key not in out:
            raise ValueError(f"unknown split {key!r} in sizes; expected some of {list(SPLITS)}")
        if int(value) != value or value < 1:
            raise ValueError(f"size of {key!r} must be a positive integer, got {value!r}")
        out[key] = int(value)
    return out


def _owned(root: Path, settings: dict) -> bool:
    """True when ``root`` is new, empty, or this generator's with the same settings; refuses anything else."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise GenerationRefused(root, "exists and is not a folder")
    for marker in (root / ".complete", root / ".generating"):
        try:
            found = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(found, dict) or found.get("kind") != "recordings":
            break
        differences = {k: (found.get(k), settings[k]) for k in settings if found.get(k) != settings[k]}
        if differences:
            raise GenerationRefused(
                root,
                "holds recordings generated with other settings ("
                + "; ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in differences.items())
                + "); they are not regenerated in place",
                differences,
            )
        return (root / ".complete").is_file()
    if next(os.scandir(root), None) is None:
        return False
    raise GenerationRefused(
        root, "the folder is not empty and carries no marker of the recordings generator; nothing was written to it"
    )


def generate_recordings(
    out_dir: str | os.PathLike,
    seed: int = 0,
    sample_rate: int = 16000,
    sizes: Mapping[str, int] | None = None,
    duration: float = DEFAULT_DURATION,
    config: RecordingConfig | None = None,
) -> Path:
    """Generate the recordings dataset (module docstring) under ``out_dir``; returns it. ``sizes``: recordings per
    split (missing keys: :data:`DEFAULT_RECORDING_SIZES`)."""
    import pandas as pd

    from sed.data.tsv import write_durations, write_strong
    from sed.utils.io import atomic_write_text

    root = Path(out_dir)
    sizes = _check_sizes(sizes)
    config = config or RecordingConfig()
    config = RecordingConfig(**{**config.__dict__, "duration": float(duration), "sample_rate": int(sample_rate)})
    if config.duration <= 0 or config.sample_rate <= 0 or config.annotators < 1:
        raise ValueError(f"duration, sample_rate and annotators must be positive, got {config}")
    settings = _settings(seed, sizes, config)
    if _owned(root, settings):
        logger.info("%s already holds the recordings of these settings", root)
        return root
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / ".generating", json.dumps(settings, indent=1, sort_keys=True) + "\n")
    (root / ".complete").unlink(missing_ok=True)
    for split_id, split in enumerate(SPLITS):
        audio = root / "audio" / split
        audio.mkdir(parents=True, exist_ok=True)
        rows, durations = [], {}
        for i in range(sizes[split]):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EC, split_id, i]))
            scene = SCENES[(i + split_id) % len(SCENES)]
            wav, events = make_recording(rng, scene, config)
            name = f"{scene}_{split}_{i + 1:03d}.wav"
            _write_wav(str(audio / name), wav, config.sample_rate)
            durations[name] = round(wav.size / config.sample_rate, 3)
            rows += [(name, a, b, label, c) for a, b, label, c in events] or [(name, np.nan, np.nan, "", np.nan)]
        meta = root / "metadata" / split
        meta.mkdir(parents=True, exist_ok=True)
        write_strong(
            pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label", "confidence"]),
            meta / f"{split}.tsv",
        )
        write_durations(durations, meta / "durations.tsv")
    atomic_write_text(root / "classes.txt", "".join(f"{c}\n" for c in RECORDING_CLASSES))
    atomic_write_text(root / "README.txt", _readme(settings))
    atomic_write_text(root / ".complete", json.dumps(settings, indent=1, sort_keys=True) + "\n")
    (root / ".generating").unlink()
    return root


def _readme(settings: dict) -> str:
    return "\n".join(
        [
            "Synthetic scene recordings with soft labels (generated by `python -m sed.synth OUT_DIR --recordings`).",
            "",
            f"settings: {json.dumps(settings, sort_keys=True)}",
            f"classes ({len(RECORDING_CLASSES)}): {', '.join(RECORDING_CLASSES)}",
            f"aliases into the clip dataset: {', '.join(f'{a} -> {b}' for a, b in ALIASES.items())}",
            f"evaluated classes (mpAUC): {', '.join(EVALUATED_CLASSES)}",
            "",
            "audio/<split>/*.wav: mono 16-bit PCM recordings; metadata/<split>/<split>.tsv: filename onset offset "
            "event_label confidence (the share of the simulated annotators who noticed the event); "
            "metadata/<split>/durations.tsv.",
            "",
        ]
    )
