"""LightningDataModule: DCASE folders and TSVs → mixed training batches and evaluation loaders."""

from __future__ import annotations

import ctypes
import logging
import signal
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from sed.data.checks import audio_sample_rates, check_sets, resolve_input_sample_rate, warn_unlisted_clips
from sed.data.datasets import SEDDataset, SeededConcatDataset, collate
from sed.data.encoder import LabelEncoder
from sed.data.generation import generate
from sed.data.leakage import warn_shared_clips
from sed.data.sampler import MixedBatchSampler
from sed.data.sets import (
    DatasetConfigError,
    EvalSet,
    TrainSubset,
    check_classes,
    describe_classes,
    parse_datasets,
    read_set,
    resolve_classes,
    single_dataset,
)
from sed.data.tsv import AnnotationError, write_weak
from sed.utils.errors import ConfigError, InputNotFoundError

log = logging.getLogger(__name__)


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


class SEDDataModule(pl.LightningDataModule):
    """Builds the training subsets and the validation and test sets of one or several datasets.

    ``datasets`` (``data.datasets``; :mod:`sed.data.sets`) lists the datasets, each with its training subsets,
    validation and test sets, annotated classes and aliases; without it the per-subset keys (``strong_tsv`` ...
    ``test_durations``, ``batch_sizes``) describe the one dataset (the same code path). Paths are relative to
    ``root`` unless absolute. With the per-subset keys a training subset whose TSV is ``None`` (or whose batch
    size is 0) is left out. The label encoder comes from the LightningModule (it depends on the network's
    time pooling) unless one is set with :meth:`set_encoder`.

    Every training item carries its dataset's ``class_mask`` (``[C]``, the classes it annotates), its
    ``mix_group`` (the subsets of one dataset and kind are mixed up together; -1: never) and ``consistency`` (the
    mean-teacher consistency applies to it).

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
        datasets: Optional[Mapping[str, Any] | Sequence[Mapping[str, Any]]] = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.generate = generate
        self.generate_seed = generate_seed
        self.generate_sizes = dict(generate_sizes) if generate_sizes else None
        self._classes = list(classes) if classes else None
        self.sample_rate = sample_rate
        self.clip_duration = clip_duration
        if datasets:
            self.datasets = parse_datasets(datasets, self.root)
        else:
            self.datasets = [
                single_dataset(
                    self.root,
                    (strong_tsv, strong_audio),
                    (weak_tsv, weak_audio),
                    (unlabeled_tsv, unlabeled_audio),
                    batch_sizes,
                    (val_tsv, val_audio, val_durations),
                    (test_tsv, test_audio, test_durations),
                )
            ]
        self.subsets: dict[str, TrainSubset] = {t.name: t for d in self.datasets for t in d.train}
        self.eval_sets: dict[str, EvalSet] = {e.name: e for d in self.datasets for e in d.eval_sets()}
        self._dataset = {d.name: d for d in self.datasets}
        self.batch_sizes = {name: t.batch_size for name, t in self.subsets.items()}
        self.eval_batch_size = eval_batch_size
        if isinstance(epoch_length, str) and epoch_length.strip().isdigit():
            epoch_length = int(epoch_length)
        if not (epoch_length in ("min", "max") or (isinstance(epoch_length, int) and epoch_length > 0)):
            raise ConfigError(
                f"data.epoch_length must be 'min', 'max' or a number of batches > 0, got {epoch_length!r}"
            )
        self.epoch_length = epoch_length
        self.num_workers = num_workers
        self.channel = channel
        self.cache_dir = cache_dir
        self.nonfinite_audio = nonfinite_audio
        self.check_test = check_test
        if not 0.0 <= weak_val_fraction < 1.0:
            raise ConfigError(f"data.weak_val_fraction must be in [0, 1), got {weak_val_fraction}")
        weak = [t.name for t in self.subsets.values() if t.kind == "weak"]
        if weak_val_fraction > 0 and len(weak) > 1:
            raise DatasetConfigError(
                f"data.weak_val_fraction holds out clips of one weak subset; there are several ({weak})"
            )
        self.weak_val_fraction = float(weak_val_fraction)
        self.seed = seed
        self.encoder: Optional[LabelEncoder] = None
        self.input_sample_rate: int | None = None  # set with the encoder (set_encoder)
        self.train_sets: dict[str, SEDDataset] = {}
        self.eval_datasets: dict[str, SEDDataset] = {}
        self.ground_truth: dict[str, pd.DataFrame] = {}
        self.durations: dict[str, dict[str, float]] = {}
        self._resume: Optional[tuple[int, int]] = None  # (epoch, batch) a resumed run trains next
        self._train_sampler: Optional[MixedBatchSampler] = None
        self._validate_at_test = False
        self._classes_described = False

    @property
    def validate_at_test(self) -> bool:
        """The test stage also runs the validation set (second test loader) to tune the post-processing on it
        (sed.evaluation.tune_at_test); set by the job from the evaluation config. One dataset only."""
        return self._validate_at_test

    @validate_at_test.setter
    def validate_at_test(self, value: bool) -> None:
        if value and len(self.datasets) > 1:
            raise DatasetConfigError(
                "post-processing tuned on validation (evaluation.tune_postprocessing, evaluation.postprocessing=sebbs) "
                "and evaluation.save_validation_scores take one dataset; with several, set them off (the fixed "
                "evaluation.median_window, one length per class, applies)"
            )
        self._validate_at_test = bool(value)

    # ------------------------------------------------------------------ paths and classes
    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def prepare_data(self) -> None:
        """Generate the embedded datasets when asked to (``data.generate``; :mod:`sed.data.generation`): into a new
        or empty root, or to finish an interrupted generation of the same settings. Any other folder is refused,
        never overwritten."""
        if not self.generate:
            return
        for dataset in self.datasets:
            generate(dataset, self.generate_seed, self.clip_duration, self.sample_rate, self.generate_sizes)

    @property
    def classes(self) -> list[str]:
        """The model's classes: ``data.classes``, else the union of the datasets' classes, else one class per line of
        ``<root>/classes.txt``; checked against the datasets (:func:`sed.data.sets.check_classes`)."""
        if self._classes is None:
            self._classes = resolve_classes(self.datasets, None)
        if self._classes is None:
            if not self.root.is_dir():
                raise InputNotFoundError(f"data.root={self.root} does not exist (or is not a folder)")
            path = self.root / "classes.txt"
            if not path.is_file():
                raise InputNotFoundError(
                    f"data.classes is not set and {path} does not exist: list the classes in the config "
                    "(data.classes=[...]) or write them one per line in classes.txt"
                )
            # utf-8-sig: a byte-order mark (as some editors write) is not part of the first class name
            self._classes = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        if not self._classes_described:
            check_classes(self.datasets, self._classes)
            self._classes_described = True
            log.info("%s", describe_classes(self.datasets, self._classes))
        return self._classes

    def class_mask(self, dataset: str) -> np.ndarray:
        """``[C]`` bool: the model's classes ``dataset`` annotates."""
        return self._dataset[dataset].class_mask(self.classes)

    def scored_classes(self, name: str) -> list[str]:
        """The classes evaluation set ``name`` is scored on (the held-out weak clips: their dataset's)."""
        if name == "val_weak":
            weak = next(t for t in self.subsets.values() if t.kind == "weak")
            return self._dataset[weak.dataset].annotated(self.classes)
        spec = self.eval_sets[name]
        return self._dataset[spec.dataset].scored_classes(spec, self.classes)

    @property
    def masks_classes(self) -> bool:
        """Whether some training dataset annotates only some of the model's classes (losses and pooling masked)."""
        return any(not d.class_mask(self.classes).all() for d in self.datasets if d.train)

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
        """``{rate: number of files}`` of the audio folders in use (:func:`sed.data.checks.audio_sample_rates`)."""
        return audio_sample_rates(self._audio_folders())

    def _audio_folders(self) -> list[Path]:
        return [t.audio for t in self.subsets.values()] + [e.audio for e in self.eval_sets.values()]

    def resolve_input_sample_rate(self, value: Any, model_rate: int) -> int | None:
        """``features.input_sample_rate`` as the model is built with it, from the rates of the audio folders in use
        (:func:`sed.data.checks.resolve_input_sample_rate`)."""
        return resolve_input_sample_rate(value, model_rate, self._audio_folders())

    # ------------------------------------------------------------------ datasets
    def _make(self, audio: Path, filenames: list[str], train: bool, **labels) -> SEDDataset:
        assert self.encoder is not None
        return SEDDataset(
            audio,
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

    def _split_weak(self, filenames: list[str], labels: pd.DataFrame) -> tuple[list[str], list[str]]:
        """Hold out ``weak_val_fraction`` of the weak clips for validation (as the DCASE baseline: checkpoint
        selection then sees real recordings), drawn from ``seed``; the held-out list is saved in the run
        directory as ``weak_validation.tsv``."""
        n_val = max(1, round(self.weak_val_fraction * len(filenames)))
        if n_val >= len(filenames):
            raise ConfigError(f"data.weak_val_fraction={self.weak_val_fraction} leaves no weak clip to train on")
        order = np.random.default_rng([self.seed, 0x7EA4]).permutation(len(filenames))
        held = {filenames[i] for i in order[:n_val]}
        train = [f for f in filenames if f not in held]
        held_out = [f for f in filenames if f in held]
        log.info(
            "Holding out %d of %d weak clips for validation (data.weak_val_fraction=%g, seed %d)",
            n_val,
            len(filenames),
            self.weak_val_fraction,
            self.seed,
        )
        if self.trainer is not None and self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / "weak_validation.tsv"
            write_weak(labels[labels["filename"].isin(held)], path)
            log.info("Held-out weak clips listed in %s", path)
        return train, held_out

    def _wanted(self, stage: Optional[str]) -> list[str]:
        """Sets to load for ``stage`` that are not loaded yet."""
        names: list[str] = []
        if stage in (None, "fit") and not self.train_sets:
            names = list(self.subsets)
            if not names:
                raise ConfigError(
                    "No training data: data.strong_tsv, data.weak_tsv and data.unlabeled_tsv are all off"
                    if len(self.datasets) == 1 and self.datasets[0].key == "data"
                    else "No training data: no dataset of data.datasets has a train subset"
                )
        if stage in (None, "fit", "validate") or (stage == "test" and self.validate_at_test):
            names += self.stage_sets("val")
            if not self.stage_sets("val") and stage in (None, "fit", "validate"):
                raise DatasetConfigError(
                    "data.datasets: no dataset has a validation set (checkpoints are selected on it)"
                )
        if stage in (None, "test") or (stage == "fit" and self.check_test):
            names += self.stage_sets("test")
        return [n for n in names if n not in self.eval_datasets]

    def stage_sets(self, stage: str) -> list[str]:
        """The evaluation sets of ``stage`` ("val" or "test"), in dataset order."""
        return [name for name, spec in self.eval_sets.items() if spec.stage == stage]

    def _extra(self, subset: TrainSubset) -> dict[str, torch.Tensor]:
        """The per-item fields of a training subset: its dataset's class mask, its mixup group, consistency."""
        groups = [(t.dataset, t.kind) for t in self.subsets.values() if t.kind != "unlabeled"]
        groups = list(
            dict.fromkeys(
                sorted(groups, key=lambda g: (self.datasets.index(self._dataset[g[0]]), ("strong", "weak").index(g[1])))
            )
        )
        key = (subset.dataset, subset.kind)
        return {
            "class_mask": torch.from_numpy(self.class_mask(subset.dataset)),
            "mix_group": torch.tensor(groups.index(key) if key in groups else -1),
            "consistency": torch.tensor(subset.consistency),
        }

    def setup(self, stage: Optional[str] = None) -> None:
        if self.encoder is None:
            if self.trainer is None or not hasattr(self.trainer.lightning_module, "encoder"):
                raise RuntimeError("SEDDataModule needs a label encoder: call set_encoder() first")
            self.encoder = self.trainer.lightning_module.encoder
        if self.trainer is not None and hasattr(self.trainer.lightning_module, "frontend"):
            # The rate the model being trained or evaluated takes, whatever set_encoder was told.
            self.input_sample_rate = getattr(self.trainer.lightning_module.frontend, "input_sample_rate", None)
        problems: list[AnnotationError] = []
        sets = [(name, self.subsets.get(name) or self.eval_sets[name]) for name in self._wanted(stage)]
        read = [read_set(name, spec, self._dataset[spec.dataset], self.classes, problems) for name, spec in sets]
        read = [r for r in read if r is not None]
        events = check_sets([clips for clips, _ in read], problems)  # raises listing every problem
        roles = {name: spec.kind if isinstance(spec, TrainSubset) else spec.stage for name, spec in sets}
        warn_shared_clips([clips for clips, _ in read], roles)  # train/test leakage, clips in two training sets
        for clips, kwargs in read:
            name = clips.name
            if "strong" in kwargs:
                kwargs["strong"] = events[name]  # events past the end of their audio clipped
            if name in self.subsets:
                spec = self.subsets[name]
                files, extra = clips.filenames, self._extra(spec)
                if spec.kind == "weak" and self.weak_val_fraction > 0:
                    files, held_out = self._split_weak(clips.filenames, kwargs["weak"])
                    self.eval_datasets["val_weak"] = self._make(spec.audio, held_out, False, whole_clip=True, **kwargs)
                windows = {} if spec.window_hop is None else {"window_hop": spec.window_hop, "lengths": clips.lengths}
                self.train_sets[name] = self._make(spec.audio, files, True, extra=extra, **windows, **kwargs)
            else:
                spec = self.eval_sets[name]
                self.ground_truth[name], self.durations[name] = kwargs["strong"], clips.durations
                warn_unlisted_clips(spec.durations, spec.tsv, spec.audio, clips.durations, clips.filenames)
                # Whole clips: one longer than clip_duration is evaluated over its whole length (SEDModule._eval_step).
                self.eval_datasets[name] = self._make(spec.audio, clips.filenames, False, whole_clip=True, **kwargs)
        if any(clips.name in self.subsets for clips, _ in read):
            log.info("Training subsets: %s", {k: len(v) for k, v in self.train_sets.items()})

    def strong_active_fractions(self) -> Optional[np.ndarray]:
        """Per class, the share of the label frames of the strong training subsets of the datasets that annotate it
        in which it is active (``[C]``; 0 for a class no strong subset annotates), or ``None`` without a strong
        training subset (call :meth:`setup` first)."""
        strong = [(self.subsets[n], ds) for n, ds in self.train_sets.items() if self.subsets[n].kind == "strong"]
        if not strong:
            return None
        active = np.zeros(len(self.classes))
        frames = np.zeros(len(self.classes))
        for spec, ds in strong:
            counts, n = ds.active_frames()
            mask = self.class_mask(spec.dataset)
            active += np.where(mask, counts, 0.0)
            frames += np.where(mask, n, 0.0)
        return np.divide(active, frames, out=np.zeros_like(active), where=frames > 0)

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
            item_seeds=True,
        )
        if self._resume is not None:
            # Set here, before Lightning creates the epoch's iterator (a resumed epoch gets no set_epoch call
            # before that, and loader workers fetch their first batches as soon as it exists).
            epoch, batch = self._resume
            sampler.set_epoch(epoch)
            sampler.resume_at(epoch, batch)
            self._resume = None
        self._train_sampler = sampler
        return self._loader(SeededConcatDataset([self.train_sets[n] for n in names]), batch_sampler=sampler)

    # ------------------------------------------------------------------ resuming mid-epoch
    def state_dict(self) -> dict[str, int]:
        """Saved in every checkpoint: the next training batch, as ``epoch`` (whose order the sampler draws) and
        ``batches_done`` (of that epoch), so that a resumed run trains on exactly the batches the uninterrupted run
        would have trained on next (no batch twice, none skipped), in any epoch."""
        if self.trainer is None or self._train_sampler is None:
            return {}
        epoch = self._train_sampler.epoch  # Lightning's epoch counters differ between the hooks that save
        done = int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        if done >= self.trainer.num_training_batches:  # the epoch was trained to its end
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches_done": done}

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

    @property
    def val_loader_sets(self) -> list[str]:
        """The evaluation set of each validation loader: the validation sets, then the held-out weak clips."""
        return self.stage_sets("val") + (["val_weak"] if "val_weak" in self.eval_datasets else [])

    @property
    def test_loader_sets(self) -> list[str]:
        """The evaluation set of each test loader: the test sets, then (:attr:`validate_at_test`) the validation set."""
        return self.stage_sets("test") + (self.stage_sets("val") if self.validate_at_test else [])

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation sets; with ``weak_val_fraction``, also the held-out weak clips (last loader)."""
        loaders = [self._eval_loader(name) for name in self.val_loader_sets]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test sets; with :attr:`validate_at_test`, also the validation set (last loader)."""
        loaders = [self._eval_loader(name) for name in self.test_loader_sets]
        return loaders[0] if len(loaders) == 1 else loaders

    def scaler_fit_dataloader(self) -> DataLoader:
        """Every training clip once, in order, without random crops: what a dataset scaler is fitted on."""
        sets = []
        for name, spec in self.subsets.items():
            if name in self.train_sets:
                sets.append(self._make(spec.audio, list(self.train_sets[name].filenames), False))
        return DataLoader(
            ConcatDataset(sets), batch_size=self.eval_batch_size, collate_fn=collate, num_workers=self.num_workers
        )
