"""LightningDataModule: DCASE folders and TSVs → mixed training batches and evaluation loaders."""

from __future__ import annotations

import ctypes
import logging
import signal
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from sed.data.checks import ClipSet, check_sets
from sed.data.datasets import SEDDataset, collate
from sed.data.encoder import LabelEncoder
from sed.data.sampler import MixedBatchSampler
from sed.data.tsv import (
    AnnotationError,
    read_durations,
    read_filenames,
    read_strong,
    read_weak,
    write_weak,
)

log = logging.getLogger(__name__)


def _warn_unlisted_clips(durations: Path, tsv: Path, audio: Path, listed: dict[str, float], clips: list[str]) -> None:
    """Warn about clips with a duration and audio but no ground-truth row: they are not evaluated."""
    known = set(clips)
    unlisted = [f for f in sorted(listed) if f not in known and (audio / f).is_file()]
    if unlisted:
        log.warning(
            "%d clip(s) of %s with audio in %s are not in %s and are not evaluated (DCASE ground truth lists a clip "
            "without events as a row with empty onset, offset and label), e.g. %s",
            len(unlisted), durations, audio, tsv, unlisted[:3],
        )


def _init_worker(worker_id: int) -> None:
    """Seed the worker as Lightning does, and serve multi-MB allocations (decoded clips) by mmap.

    glibc otherwise keeps the freed audio buffers of a long-lived worker on its heap, and each worker's memory
    grows through an epoch (measured: 2 workers, 1,180 MiB peak growing vs 876 MiB flat;
    benchmarks/data_loading.py).
    """
    pl_worker_init_function(worker_id)
    # Ctrl-C and SLURM's SIGTERM reach the whole process group: the main process stops training after the step
    # (sed.run.checkpointing.ResumeCheckpoint) and then ends its workers; a worker dying first would break that step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD = 4 MiB
    except (OSError, AttributeError):  # not glibc
        pass


_SETTING_KEYS = {
    "seed": "data.generate_seed",
    "sizes": "data.generate_sizes",
    "clip_duration": "data.clip_duration",
    "sample_rate": "data.sample_rate",
}


def _refusal_advice(err: Exception) -> str:
    """A refused generation in the configuration's terms: which keys to set."""
    differences = getattr(err, "differences", {})
    if not differences:
        return (
            f"data.generate=true would write the synthetic dataset into data.root={err.root}, which already holds "
            "files the generator did not write; nothing was changed. To train on that data set data.generate=false "
            "(and its paths, e.g. data=desed for a prepared DESED copy); to generate the embedded data, point "
            "data.root at a new or empty folder."
        )
    name = lambda k: _SETTING_KEYS.get(k, f"generator {k}")  # noqa: E731
    listed = "; ".join(f"{name(k)}: {found!r} there, {wanted!r} in this run" for k, (found, wanted) in differences.items())
    return (
        f"data.root={err.root} holds the synthetic dataset generated with other settings ({listed}); it is not "
        "regenerated in place. Use it with its own settings, or point data.root at a new folder to generate one "
        "with this run's settings."
    )


class SEDDataModule(pl.LightningDataModule):
    """Builds the strong / weak / unlabeled training subsets and the validation and test sets.

    Paths are relative to ``root`` unless absolute. A training subset whose TSV is ``None`` (or whose batch
    size is 0) is left out. The label encoder comes from the LightningModule (it depends on the network's
    time pooling) unless one is set with :meth:`set_encoder`.

    :meth:`setup` reads every annotation file of the stage and checks every audio file they list
    (:mod:`sed.data.checks`) before any set is built, raising one error that lists all problems. With
    ``check_test`` (the configuration sets it when the run will test), fitting loads and checks the test set
    too, so a broken test set fails before training rather than after it.
    """

    def __init__(
        self,
        root: str,
        generate: bool = False,
        generate_seed: int = 0,
        generate_sizes: Optional[dict[str, int]] = None,
        classes: Optional[Sequence[str]] = None,
        sample_rate: int = 16000,
        clip_duration: float = 10.0,
        strong_tsv: Optional[str] = "metadata/train/strong.tsv",
        strong_audio: str = "audio/train/strong",
        weak_tsv: Optional[str] = "metadata/train/weak.tsv",
        weak_audio: str = "audio/train/weak",
        unlabeled_tsv: Optional[str] = "metadata/train/unlabeled.tsv",
        unlabeled_audio: str = "audio/train/unlabeled",
        val_tsv: str = "metadata/validation/validation.tsv",
        val_audio: str = "audio/validation",
        val_durations: str = "metadata/validation/durations.tsv",
        test_tsv: str = "metadata/test/test.tsv",
        test_audio: str = "audio/test",
        test_durations: str = "metadata/test/durations.tsv",
        batch_sizes: Sequence[int] = (12, 12, 24),
        eval_batch_size: int = 24,
        epoch_length: str | int = "min",
        num_workers: int = 2,
        channel: str = "mean",
        cache_dir: Optional[str] = None,
        nonfinite_audio: str = "error",
        check_test: bool = False,
        weak_val_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.generate = generate
        self.generate_seed = generate_seed
        self.generate_sizes = dict(generate_sizes) if generate_sizes else None
        self._classes = list(classes) if classes else None
        self.sample_rate = sample_rate
        self.clip_duration = clip_duration
        self.subsets = {
            "strong": (strong_tsv, strong_audio),
            "weak": (weak_tsv, weak_audio),
            "unlabeled": (unlabeled_tsv, unlabeled_audio),
        }
        self.eval_sets = {
            "val": (val_tsv, val_audio, val_durations),
            "test": (test_tsv, test_audio, test_durations),
        }
        if len(batch_sizes) != 3:
            raise ValueError(f"data.batch_sizes needs 3 numbers (strong, weak, unlabeled), got {list(batch_sizes)}")
        self.batch_sizes = dict(zip(("strong", "weak", "unlabeled"), (int(b) for b in batch_sizes)))
        self.eval_batch_size = eval_batch_size
        if isinstance(epoch_length, str) and epoch_length.strip().isdigit():
            epoch_length = int(epoch_length)
        if not (epoch_length in ("min", "max") or (isinstance(epoch_length, int) and epoch_length > 0)):
            raise ValueError(f"data.epoch_length must be 'min', 'max' or a number of batches > 0, got {epoch_length!r}")
        self.epoch_length = epoch_length
        self.num_workers = num_workers
        self.channel = channel
        self.cache_dir = cache_dir
        self.nonfinite_audio = nonfinite_audio
        self.check_test = check_test
        if not 0.0 <= weak_val_fraction < 1.0:
            raise ValueError(f"data.weak_val_fraction must be in [0, 1), got {weak_val_fraction}")
        self.weak_val_fraction = float(weak_val_fraction)
        self.seed = seed
        self.encoder: Optional[LabelEncoder] = None
        self.input_sample_rate: int | None = None  # set with the encoder (set_encoder)
        self.train_sets: dict[str, SEDDataset] = {}
        self.eval_datasets: dict[str, SEDDataset] = {}
        self.ground_truth: dict[str, pd.DataFrame] = {}
        self.durations: dict[str, dict[str, float]] = {}
        self._resume: Optional[tuple[int, int]] = None  # (epoch, batches done) of an interrupted epoch
        # The test stage also runs the validation set (second test loader) to tune the post-processing on it
        # (sed.evaluation.tune_at_test); set by the app from the evaluation config.
        self.validate_at_test = False

    # ------------------------------------------------------------------ paths and classes
    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def prepare_data(self) -> None:
        """Generate the embedded dataset when asked to (``data.generate``): into a new or empty ``root``, or to
        finish an interrupted generation of the same settings. Any other folder is refused, never overwritten."""
        if not self.generate:
            return
        from sed.synth import GenerationRefused, generate_dataset

        try:
            generate_dataset(
                self.root, seed=self.generate_seed, clip_duration=self.clip_duration, sample_rate=self.sample_rate,
                sizes=self.generate_sizes,
            )
        except GenerationRefused as err:
            raise ValueError(_refusal_advice(err)) from None

    @property
    def classes(self) -> list[str]:
        """Class list from the config, else one class per line of ``<root>/classes.txt``."""
        if self._classes is None:
            if not self.root.is_dir():
                raise FileNotFoundError(f"data.root={self.root} does not exist (or is not a folder)")
            path = self.root / "classes.txt"
            if not path.is_file():
                raise FileNotFoundError(
                    f"data.classes is not set and {path} does not exist: list the classes in the config "
                    "(data.classes=[...]) or write them one per line in classes.txt"
                )
            # utf-8-sig: a byte-order mark (as some editors write) is not part of the first class name
            self._classes = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        return self._classes

    def set_encoder(self, encoder: LabelEncoder, input_sample_rate: int | None = None) -> None:
        """The model's label encoder, and the rate its front-end takes audio at when it resamples inside the model
        (``features.input_sample_rate``; None: the encoder's rate, the loader resamples)."""
        self.encoder = encoder
        self.input_sample_rate = input_sample_rate

    @property
    def loader_sample_rate(self) -> int:
        """The rate the datasets deliver audio at: the model's input rate when it resamples, else ``sample_rate``."""
        return int(self.input_sample_rate or self.sample_rate)

    def audio_sample_rates(self) -> dict[int, int]:
        """``{rate: number of files}`` over the audio folders of the training subsets and the evaluation sets in use,
        read from the files' headers (:func:`sed.data.checks.probe_files`); unreadable or non-audio files are left
        to the checks of :meth:`setup`."""
        from collections import Counter

        from sed.data.checks import AudioInfo, probe_files

        folders = [audio for name, (tsv, audio) in self.subsets.items() if tsv is not None and self.batch_sizes[name] > 0]
        folders += [audio for _, audio, _ in self.eval_sets.values()]
        paths = []
        for folder in dict.fromkeys(self.path(f) for f in folders):
            if folder.is_dir():
                paths += sorted(str(p) for p in folder.rglob("*") if p.is_file())
        return dict(Counter(info.sample_rate for info in probe_files(paths) if isinstance(info, AudioInfo)))

    def resolve_input_sample_rate(self, value: Any, model_rate: int) -> int | None:
        """``features.input_sample_rate`` as the model is built with it: ``"auto"`` becomes the files' rate when they
        all share one that differs from ``model_rate`` (the model then resamples; logged), else None (the loader
        resamples, as without the key); the model's own rate becomes None too (no resampler, the same front-end and
        checkpoints as without the key); any other value is returned as it is."""
        if value != "auto":
            return None if value is not None and value == int(model_rate) else value
        rates = self.audio_sample_rates()
        if len(rates) == 1 and next(iter(rates)) != int(model_rate):
            rate = next(iter(rates))
            log.info("features.input_sample_rate=auto: all %d audio files are at %d Hz, the model resamples them to "
                     "%d Hz on the device (the loader passes them at their own rate)", rates[rate], rate, model_rate)
            return rate
        shown = ", ".join(f"{n} at {r} Hz" for r, n in sorted(rates.items())) or "no audio files found"
        log.info("features.input_sample_rate=auto: files %s; %s", shown,
                 "already at the model's rate, nothing to resample" if list(rates) == [int(model_rate)]
                 else f"the loader resamples to {model_rate} Hz")
        return None

    # ------------------------------------------------------------------ datasets
    def _dataset(self, audio: str, filenames: list[str], train: bool, **labels) -> SEDDataset:
        assert self.encoder is not None
        return SEDDataset(
            self.path(audio),
            filenames,
            self.encoder,
            sample_rate=self.loader_sample_rate,
            clip_duration=self.clip_duration,
            random_crop=train,
            channel=self.channel,
            seed=self.seed,
            cache_dir=self.cache_dir,
            nonfinite=self.nonfinite_audio,
            **labels,
        )

    def _read_set(self, name: str, problems: list[AnnotationError]) -> Optional[tuple[ClipSet, dict]]:
        """The clips of set ``name`` and the labels its dataset takes; a bad annotation file goes to ``problems``."""
        tsv, audio, durations = (*self.subsets[name], None) if name in self.subsets else self.eval_sets[name]
        path = self.path(tsv)
        clips, kwargs, ok = ClipSet(name, self.path(audio), []), {}, True
        try:
            if name == "unlabeled":
                files = read_filenames(path)
                clips.filenames, clips.source, clips.lines = files, files.source, files.lines
            elif name == "weak":
                kwargs["weak"] = labels = read_weak(path, self.classes)
                clips.filenames, clips.source, clips.lines = list(labels["filename"]), str(path), labels.attrs["lines"]
            else:
                kwargs["strong"] = clips.events = labels = read_strong(path, self.classes)
                clips.filenames = sorted(labels["filename"].unique())
                clips.source, clips.lines = str(path), labels.attrs["lines"]
        except AnnotationError as err:
            problems.append(err)
            ok = False
        if durations is not None:
            try:
                clips.durations = read_durations(self.path(durations))
            except AnnotationError as err:
                problems.append(err)
                ok = False
        return (clips, kwargs) if ok else None

    def _split_weak(self, filenames: list[str], labels: pd.DataFrame) -> tuple[list[str], list[str]]:
        """Hold out ``weak_val_fraction`` of the weak clips for validation (as the DCASE baseline: checkpoint
        selection then sees real recordings), drawn from ``seed``; the held-out list is saved in the run
        directory as ``weak_validation.tsv``."""
        n_val = max(1, round(self.weak_val_fraction * len(filenames)))
        if n_val >= len(filenames):
            raise ValueError(f"data.weak_val_fraction={self.weak_val_fraction} leaves no weak clip to train on")
        order = np.random.default_rng([self.seed, 0x7EA4]).permutation(len(filenames))
        held = {filenames[i] for i in order[:n_val]}
        train = [f for f in filenames if f not in held]
        held_out = [f for f in filenames if f in held]
        log.info("Holding out %d of %d weak clips for validation (data.weak_val_fraction=%g, seed %d)",
                 n_val, len(filenames), self.weak_val_fraction, self.seed)
        if self.trainer is not None and self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / "weak_validation.tsv"
            write_weak(labels[labels["filename"].isin(held)], path)
            log.info("Held-out weak clips listed in %s", path)
        return train, held_out

    def _wanted(self, stage: Optional[str]) -> list[str]:
        """Sets to load for ``stage`` that are not loaded yet."""
        names: list[str] = []
        if stage in (None, "fit") and not self.train_sets:
            names = [n for n, (tsv, _) in self.subsets.items() if tsv is not None and self.batch_sizes[n] > 0]
            if not names:
                raise ValueError("No training data: data.strong_tsv, data.weak_tsv and data.unlabeled_tsv are all off")
        if stage in (None, "fit", "validate") or (stage == "test" and self.validate_at_test):
            names.append("val")
        if stage in (None, "test") or (stage == "fit" and self.check_test):
            names.append("test")
        return [n for n in names if n not in self.eval_datasets]

    def setup(self, stage: Optional[str] = None) -> None:
        if self.encoder is None:
            if self.trainer is None or not hasattr(self.trainer.lightning_module, "encoder"):
                raise RuntimeError("SEDDataModule needs a label encoder: call set_encoder() first")
            self.encoder = self.trainer.lightning_module.encoder
        if self.trainer is not None and hasattr(self.trainer.lightning_module, "frontend"):
            # The rate the model being trained or evaluated takes, whatever set_encoder was told.
            self.input_sample_rate = getattr(self.trainer.lightning_module.frontend, "input_sample_rate", None)
        problems: list[AnnotationError] = []
        read = [r for r in (self._read_set(name, problems) for name in self._wanted(stage)) if r is not None]
        events = check_sets([clips for clips, _ in read], problems)  # raises listing every problem
        for clips, kwargs in read:
            name = clips.name
            if "strong" in kwargs:
                kwargs["strong"] = events[name]  # events past the end of their audio clipped
            if name == "weak" and self.weak_val_fraction > 0:
                train, held_out = self._split_weak(clips.filenames, kwargs["weak"])
                self.train_sets[name] = self._dataset(self.subsets[name][1], train, True, **kwargs)
                self.eval_datasets["val_weak"] = self._dataset(
                    self.subsets[name][1], held_out, False, whole_clip=True, **kwargs
                )
            elif name in self.subsets:
                self.train_sets[name] = self._dataset(self.subsets[name][1], clips.filenames, True, **kwargs)
            else:
                tsv, audio, durations = self.eval_sets[name]
                self.ground_truth[name], self.durations[name] = kwargs["strong"], clips.durations
                _warn_unlisted_clips(self.path(durations), self.path(tsv), self.path(audio), clips.durations,
                                     clips.filenames)
                # Whole clips: one longer than clip_duration is evaluated over its whole length (SEDModule._eval_step).
                self.eval_datasets[name] = self._dataset(audio, clips.filenames, False, whole_clip=True, **kwargs)
        if any(clips.name in self.subsets for clips, _ in read):
            log.info("Training subsets: %s", {k: len(v) for k, v in self.train_sets.items()})

    def strong_active_fractions(self) -> Optional[np.ndarray]:
        """Per class, the share of the strong training set's label frames in which it is active (``[C]``), or
        ``None`` without a strong training set (call :meth:`setup` first)."""
        strong = self.train_sets.get("strong")
        return None if strong is None else strong.active_frame_fractions()

    # ------------------------------------------------------------------ loaders
    def _world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        # Iterators draw their worker seeds from this generator rather than from torch's global one, so that a
        # resumed run (whose global random state comes from the checkpoint) draws what the uninterrupted one did.
        return DataLoader(
            dataset,
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=_init_worker if self.num_workers > 0 else None,
            pin_memory=self.trainer is not None and self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator",
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        names = list(self.train_sets)
        world_size, rank = self._world()
        sampler = MixedBatchSampler(
            [len(self.train_sets[n]) for n in names],
            [self.batch_sizes[n] for n in names],
            shuffle=True,
            seed=self.seed,
            epoch_length=self.epoch_length,
            num_replicas=world_size,
            rank=rank,
            names=names,
        )
        if self._resume is not None:
            sampler.resume_at(*self._resume)
            self._resume = None
        return self._loader(ConcatDataset([self.train_sets[n] for n in names]), batch_sampler=sampler)

    # ------------------------------------------------------------------ resuming mid-epoch
    def state_dict(self) -> dict[str, int]:
        """Saved in every checkpoint: how far the current training epoch got, so that a run resumed from a
        checkpoint written mid-epoch trains on the remaining batches only (no batch twice, none skipped)."""
        if self.trainer is None:
            return {}
        loop = self.trainer.fit_loop
        return {"epoch": int(loop.epoch_progress.current.processed),
                "batches_done": int(loop.epoch_loop.batch_progress.current.processed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state:
            self._resume = (int(state["epoch"]), int(state["batches_done"]))

    def _eval_loader(self, stage: str) -> DataLoader:
        dataset = self.eval_datasets[stage]
        world_size, rank = self._world()
        sampler = None
        if world_size > 1:  # padded shards repeat a few clips; the module de-duplicates by filename
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        return self._loader(dataset, batch_size=self.eval_batch_size, sampler=sampler, shuffle=False)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation set; with ``weak_val_fraction``, also the held-out weak clips (second loader)."""
        if "val_weak" in self.eval_datasets:
            return [self._eval_loader("val"), self._eval_loader("val_weak")]
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test set; with :attr:`validate_at_test`, also the validation set (second loader)."""
        if self.validate_at_test:
            return [self._eval_loader("test"), self._eval_loader("val")]
        return self._eval_loader("test")

    def scaler_fit_dataloader(self) -> DataLoader:
        """Every training clip once, in order, without random crops: what a dataset scaler is fitted on."""
        sets = []
        for name, (tsv, audio) in self.subsets.items():
            if name in self.train_sets:
                ds = self.train_sets[name]
                sets.append(self._dataset(audio, list(ds.filenames), False))
        return DataLoader(
            ConcatDataset(sets), batch_size=self.eval_batch_size, collate_fn=collate, num_workers=self.num_workers
        )
