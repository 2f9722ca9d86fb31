"""Scene generation: place events over a background, annotate them, and write a DCASE-format dataset.

Level convention (**SNR**): for every event,
``SNR_dB = 10·log10(P_event / P_background)`` where ``P_event`` is the mean power (mean of
squared samples) of the event signal alone over its annotated span ``[onset, offset)`` (after
clipping at the clip end), and ``P_background`` is the mean power of the background signal
alone over the whole clip. SNRs are drawn uniformly from ``snr_range`` (DESED: 6-30 dB). The
mixture is then scaled as a whole if its peak would exceed ``peak`` (SNRs are unchanged).

Randomness: every clip has its own generator seeded from ``(seed, subset, index)``, so a clip
does not depend on how many workers generated the dataset, and the same seed gives
byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sed.synth.layout import AUDIO_SUBDIR, SETTINGS_KEYS, SUBSETS, DatasetLayout, dataset_layout  # noqa: F401
from sed.synth.soundbank import SoundBank, load_soundbank
from sed.utils.errors import UserError

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
DEFAULT_SIZES: dict[str, int] = {"strong": 400, "weak": 200, "unlabeled": 400, "validation": 100, "test": 100}
_SUBSET_ID = {name: i for i, name in enumerate(SUBSETS)}
_PREFIX = {"strong": "strong", "weak": "weak", "unlabeled": "unlabeled", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class SceneConfig:
    """How clips are composed (shared by all subsets unless noted)."""

    clip_duration: float = 10.0
    sample_rate: int = 16000
    snr_range: tuple[float, float] = (6.0, 30.0)
    # P(number of events = 1, 2, ...) for a clip that has events
    n_events_probs: tuple[float, ...] = (0.3, 0.3, 0.2, 0.12, 0.08)
    # fraction of clips without any event (strong/unlabeled/validation/test; weak clips always have one)
    empty_fraction: float = 0.1
    # fraction of weak/unlabeled/validation/test clips shorter than clip_duration (as in real DESED)
    short_fraction: float = 0.1
    short_range: tuple[float, float] = (0.4, 0.95)
    # an event that fits is kept whole with this probability; otherwise it may run past the clip end
    p_inside: float = 0.75
    background_dbfs: tuple[float, float] = (-45.0, -25.0)
    peak: float = 0.9


@dataclass
class Scene:
    """A generated clip: mono float32 audio and its events ``(onset, offset, label)`` in seconds."""

    audio: np.ndarray
    events: list[tuple[float, float, str]]
    duration: float


def make_scene(
    bank: SoundBank,
    rng: np.random.Generator,
    config: SceneConfig,
    n_events: int,
    duration: float | None = None,
) -> Scene:
    """Mix ``n_events`` random events of ``bank`` over one of its backgrounds (SNR: see module doc).

    Onsets are on a 1 ms grid; an event running past the clip end is cut there and its
    annotated offset is the clip end. Overlaps (including same-class ones) are allowed.
    """
    sr = config.sample_rate
    duration = config.clip_duration if duration is None else duration
    n = int(round(duration * sr))
    level = 10.0 ** (rng.uniform(*config.background_dbfs) / 20.0)
    mix = bank.background(rng, n, sr).astype(np.float64) * level
    events: list[tuple[float, float, str]] = []
    for _ in range(n_events):
        label = bank.classes[int(rng.integers(len(bank.classes)))]
        x = bank.event(label, rng, sr)
        ev_dur = x.size / sr
        if ev_dur <= duration and rng.random() < config.p_inside:
            latest = duration - ev_dur
        else:
            latest = duration - min(ev_dur, 0.2, duration / 2)
        onset_ms = int(rng.integers(0, int(latest * 1000) + 1))
        start = onset_ms * sr // 1000
        stop = min(n, start + x.size)
        if stop <= start:
            continue
        seg = x[: stop - start].astype(np.float64)
        power = float(np.mean(seg * seg))
        if power <= 0:
            continue
        snr = rng.uniform(*config.snr_range)
        gain = level * 10.0 ** (snr / 20.0) / np.sqrt(power)
        mix[start:stop] += gain * seg
        events.append((round(start / sr, 3), round(stop / sr, 3), label))
    peak = float(np.max(np.abs(mix))) if n else 0.0
    if peak > config.peak:
        mix *= config.peak / peak
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    return Scene(audio=mix.astype(np.float32), events=events, duration=round(n / sr, 3))


# ----------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    subset: str
    index: int
    path: str
    n_events: int
    duration: float


def _scene_settings(config: SceneConfig) -> dict:
    """How scenes are composed, as it reads back from a JSON marker (tuples become lists); the clip duration
    and sample rate are settings of their own."""
    fields = dataclasses.asdict(config)
    del fields["clip_duration"], fields["sample_rate"]
    return json.loads(json.dumps(fields))


def _clip_rng(seed: int, subset: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SUBSET_ID[subset], int(index)]))


def _plan(subset: str, n: int, seed: int, config: SceneConfig, audio_dir: Path) -> list[_Job]:
    """Decide, per clip, the number of events and the duration (exact empty/short counts)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SUBSET_ID[subset], 10**6]))
    counts = 1 + rng.choice(
        len(config.n_events_probs), size=n, p=np.asarray(config.n_events_probs) / sum(config.n_events_probs)
    )
    if subset != "weak" and config.empty_fraction > 0 and n >= 2:
        n_empty = max(1, int(round(config.empty_fraction * n)))
        counts[rng.permutation(n)[:n_empty]] = 0
    durations = np.full(n, config.clip_duration)
    if subset != "strong" and config.short_fraction > 0 and n >= 10:
        n_short = int(round(config.short_fraction * n))
        durations[rng.permutation(n)[:n_short]] = np.round(
            config.clip_duration * rng.uniform(*config.short_range, n_short), 3
        )
    return [
        _Job(subset, i, str(audio_dir / f"{_PREFIX[subset]}_{i + 1:05d}.wav"), int(counts[i]), float(durations[i]))
        for i in range(n)
    ]


def _write_wav(path: str, audio: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    sf.write(str(tmp), audio, sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, target)


def _run_job(
    bank: SoundBank, config: SceneConfig, seed: int, job: _Job
) -> tuple[str, float, list[tuple[float, float, str]]]:
    rng = _clip_rng(seed, job.subset, job.index)
    scene = make_scene(bank, rng, config, job.n_events, job.duration)
    _write_wav(job.path, scene.audio, config.sample_rate)
    return Path(job.path).name, scene.duration, scene.events


_WORKER: dict = {}


def _init_worker(bank: SoundBank, config: SceneConfig, seed: int) -> None:
    _WORKER.update(bank=bank, config=config, seed=seed)


def _run_job_in_worker(job: _Job) -> tuple[str, float, list[tuple[float, float, str]]]:
    return _run_job(_WORKER["bank"], _WORKER["config"], _WORKER["seed"], job)


def _check_sizes(sizes: Mapping[str, int] | None) -> dict[str, int]:
    out = dict(DEFAULT_SIZES)
    for key, value in (sizes or {}).items():
        if key not in out:
            raise ValueError(f"unknown subset {key!r} in sizes; expected some of {list(SUBSETS)}")
        if int(value) != value or value < 0:
            raise ValueError(f"size of {key!r} must be a non-negative integer, got {value!r}")
        out[key] = int(value)
    if out["validation"] < 1 or out["test"] < 1:
        raise ValueError("validation and test need at least one clip each")
    return out


def _readme(params: dict, classes: Sequence[str]) -> str:
    sizes = ", ".join(f"{k}={v}" for k, v in params["sizes"].items())
    return "\n".join(
        [
            "Synthetic DCASE-format sound event detection dataset (generated by `python -m sed.synth`).",
            "",
            f"generator version: {params['generator_version']}",
            f"seed: {params['seed']}",
            f"sizes: {sizes}",
            f"clip duration: {params['clip_duration']} s (some weak/unlabeled/validation/test clips are shorter; see durations.tsv)",
            f"sample rate: {params['sample_rate']} Hz, mono, 16-bit PCM WAV",
            f"soundbank: {params['soundbank']}",
            f"SNR range: {params['snr_range'][0]}-{params['snr_range'][1]} dB "
            "(mean event power over its annotated span / mean background power over the clip)",
            f"classes ({len(classes)}): {', '.join(classes)}",
            "",
            "audio/train/strong, audio/train/weak, audio/train/unlabeled, audio/validation, audio/test: clips",
            "metadata/train/strong.tsv: filename onset offset event_label (empty onset/offset/label: clip without events)",
            "metadata/train/weak.tsv: filename event_labels (comma-separated)",
            "metadata/train/unlabeled.tsv: filename",
            "metadata/validation/validation.tsv, metadata/test/test.tsv: strong labels; durations.tsv beside them",
            "Same-class events may overlap; their rows are kept separately (readers merge them).",
            "",
        ]
    )


class GenerationRefused(ValueError, UserError):
    """:func:`generate_dataset` will not write into a folder: it is not the generator's, or the generator made
    it with other settings. ``differences`` maps each setting that differs to ``(found, wanted)``."""

    def __init__(self, root: Path, reason: str, differences: Mapping[str, tuple] | None = None) -> None:
        self.root = root
        self.reason = reason
        self.differences = dict(differences or {})
        super().__init__(f"{root}: {reason}")


def _check_writable(layout: DatasetLayout, settings: dict) -> None:
    """Generation may create a new or empty folder, or finish one that an interrupted run of the same settings
    started; anything else would overwrite or delete what someone else wrote, so it is refused."""
    root = layout.root
    if not root.exists():
        return
    if not root.is_dir():
        raise GenerationRefused(root, "exists and is not a folder")
    found = layout.generated_settings()
    if found is None:
        if next(os.scandir(root), None) is None:
            return
        raise GenerationRefused(
            root, "the folder is not empty and carries no marker of the dataset generator; nothing was written to it"
        )
    differences = {k: (found[k], settings[k]) for k in SETTINGS_KEYS if found[k] != settings[k]}
    if "scene" in differences:  # name only the composition settings that differ
        there, asked = differences["scene"]
        differences["scene"] = tuple(
            {k: d.get(k) for k in sorted(set(there) | set(asked)) if there.get(k) != asked.get(k)}
            for d in (there, asked)
        )
    if differences:
        listed = "; ".join(f"{k}: {a!r} there, {b!r} asked" for k, (a, b) in differences.items())
        raise GenerationRefused(
            root,
            f"holds a dataset generated with other settings ({listed}); it is not regenerated in place",
            differences,
        )


def _clear_previous(layout: DatasetLayout, jobs: Sequence[_Job]) -> None:
    """Remove the completion marker and the clips an interrupted run of the same plan may have left: only the
    paths this plan writes (and their temporary files), never another file of the folder."""
    layout.marker.unlink(missing_ok=True)
    for job in jobs:
        target = Path(job.path)
        target.unlink(missing_ok=True)
        target.with_name(f".{target.name}.tmp").unlink(missing_ok=True)


def generate_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    soundbank: str | os.PathLike | SoundBank | None = None,
    clip_duration: float = 10.0,
    sample_rate: int = 16000,
    sizes: Mapping[str, int] | None = None,
    workers: int | None = None,
    config: SceneConfig | None = None,
) -> DatasetLayout:
    """Generate a complete DCASE-format dataset under ``out_dir`` and return its layout.

    ``soundbank``: None (procedural classes), a folder (``foreground/<class>/*.wav``,
    ``background/*.wav``) or a :class:`~sed.synth.soundbank.SoundBank`. ``sizes``: clips per
    subset (missing keys take :data:`DEFAULT_SIZES`). ``workers``: processes (default: CPU
    count, at most 8; the output does not depend on it).

    Safety: only a new or empty folder is generated into, or one this generator owns (its marker) with the
    same settings, which is returned as it is when complete and finished when an earlier run was interrupted;
    anything else raises :class:`GenerationRefused` before a byte is written. Files the generator did not
    plan are never deleted. A ``.generating`` marker is written first and ``.complete`` last, so an
    interrupted run is detectable and owned.
    """
    if clip_duration <= 0 or sample_rate <= 0:
        raise ValueError(f"clip_duration and sample_rate must be positive, got {clip_duration}, {sample_rate}")
    bank = load_soundbank(soundbank)
    sizes = _check_sizes(sizes)
    config = dataclasses.replace(
        config or SceneConfig(), clip_duration=float(clip_duration), sample_rate=int(sample_rate)
    )
    params = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "sizes": sizes,
        "clip_duration": float(clip_duration),
        "sample_rate": int(sample_rate),
        "soundbank": bank.describe(),
        "snr_range": list(config.snr_range),
        "scene": _scene_settings(config),
        "classes": list(bank.classes),
    }
    layout = dataset_layout(out_dir)
    settings = {k: params[k] for k in SETTINGS_KEYS}
    if layout.complete() and layout.generated_settings() == settings:
        logger.info("%s already holds the dataset of these settings", layout.root)
        return layout
    _check_writable(layout, settings)
    from sed.utils.io import atomic_write_text

    atomic_write_text(layout.progress_marker, json.dumps(params, indent=1, sort_keys=True) + "\n")
    jobs: list[_Job] = []
    for subset in SUBSETS:
        layout.audio_dir(subset).mkdir(parents=True, exist_ok=True)
        jobs += _plan(subset, sizes[subset], seed, config, layout.audio_dir(subset))
    _clear_previous(layout, jobs)
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    workers = max(1, min(int(workers), len(jobs) or 1))
    t0 = time.perf_counter()
    if workers == 1:
        results = [_run_job(bank, config, seed, job) for job in jobs]
    else:
        import multiprocessing as mp

        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_init_worker, initargs=(bank, config, seed)
        ) as pool:
            results = list(pool.map(_run_job_in_worker, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    logger.info("synthesised %d clips in %.1f s with %d worker(s)", len(jobs), time.perf_counter() - t0, workers)

    by_subset: dict[str, list[tuple[str, float, list[tuple[float, float, str]]]]] = {s: [] for s in SUBSETS}
    for job, result in zip(jobs, results):
        by_subset[job.subset].append(result)
    _write_metadata(layout, by_subset, bank.classes)
    atomic_write_text(layout.classes_file, "".join(f"{c}\n" for c in bank.classes))
    atomic_write_text(layout.readme, _readme(params, bank.classes))
    atomic_write_text(layout.marker, json.dumps(params, indent=1, sort_keys=True) + "\n")
    layout.progress_marker.unlink()
    return layout


def _strong_frame(results: list[tuple[str, float, list[tuple[float, float, str]]]]):
    import pandas as pd

    rows = []
    for name, _, events in results:
        if events:
            rows += [(name, on, off, label) for on, off, label in events]
        else:
            rows.append((name, float("nan"), float("nan"), ""))
    return pd.DataFrame(rows, columns=["filename", "onset", "offset", "event_label"])


def _write_metadata(layout: DatasetLayout, by_subset: dict, classes: Sequence[str]) -> None:
    import pandas as pd

    from sed.data.tsv import write_durations, write_strong, write_weak
    from sed.utils.io import atomic_write_text

    order = {c: i for i, c in enumerate(classes)}
    write_strong(_strong_frame(by_subset["strong"]), layout.strong_tsv)
    weak = pd.DataFrame(
        {
            "filename": [name for name, _, _ in by_subset["weak"]],
            "event_labels": [
                tuple(sorted({label for _, _, label in events}, key=order.__getitem__))
                for _, _, events in by_subset["weak"]
            ],
        }
    )
    write_weak(weak, layout.weak_tsv)
    atomic_write_text(
        layout.unlabeled_tsv, "filename\n" + "".join(f"{name}\n" for name, _, _ in by_subset["unlabeled"])
    )
    for subset, tsv, dur in (
        ("validation", layout.validation_tsv, layout.validation_durations),
        ("test", layout.test_tsv, layout.test_durations),
    ):
        write_strong(_strong_frame(by_subset[subset]), tsv)
        write_durations({name: d for name, d, _ in by_subset[subset]}, dur)
