"""LightningDataModule: DCASE folders and TSVs → mixed training batches and evaluation loaders."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import pytorch_lightning as pl
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from sed.data.datasets import SEDDataset, collate
from sed.data.encoder import LabelEncoder
from sed.data.sampler import MixedBatchSampler
from sed.data.tsv import read_durations, read_filenames, read_strong, read_weak

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
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD = 4 MiB
    except (OSError, AttributeError):  # not glibc
        pass


class SEDDataModule(pl.LightningDataModule):
    """Builds the strong / weak / unlabeled training subsets and the validation and test sets.

    Paths are relative to ``root`` unless absolute. A training subset whose TSV is ``None`` (or whose batch
    size is 0) is left out. The label encoder comes from the LightningModule (it depends on the network's
    time pooling) unless one is set with :meth:`set_encoder`.
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
        self.epoch_length = epoch_length
        self.num_workers = num_workers
        self.channel = channel
        self.cache_dir = cache_dir
        self.nonfinite_audio = nonfinite_audio
        self.seed = seed
        self.encoder: Optional[LabelEncoder] = None
        self.train_sets: dict[str, SEDDataset] = {}
        self.eval_datasets: dict[str, SEDDataset] = {}
        self.ground_truth: dict[str, pd.DataFrame] = {}
        self.durations: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------ paths and classes
    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def prepare_data(self) -> None:
        """Generate the embedded dataset when asked to and it is absent or half-written."""
        if not self.generate:
            return
        from sed.synth import DEFAULT_SIZES, dataset_layout, generate_dataset

        layout = dataset_layout(self.root)
        sizes = {**DEFAULT_SIZES, **(self.generate_sizes or {})}
        wanted = {"seed": self.generate_seed, "clip_duration": float(self.clip_duration),
                  "sample_rate": self.sample_rate, "sizes": sizes}
        if layout.complete():
            found = layout.params()
            if all(found.get(k) == v for k, v in wanted.items()):
                return
            log.info("%s was generated with %s; regenerating with %s", self.root,
                     {k: found.get(k) for k in wanted}, wanted)
        log.info("Generating the embedded dataset in %s (seed %d)", self.root, self.generate_seed)
        generate_dataset(
            self.root, seed=self.generate_seed, clip_duration=self.clip_duration, sample_rate=self.sample_rate,
            sizes=sizes,
        )

    @property
    def classes(self) -> list[str]:
        """Class list from the config, else one class per line of ``<root>/classes.txt``."""
        if self._classes is None:
            path = self.root / "classes.txt"
            if not path.is_file():
                raise FileNotFoundError(
                    f"data.classes is not set and {path} does not exist: list the classes in the config "
                    "(data.classes=[...]) or write them one per line in classes.txt"
                )
            self._classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return self._classes

    def set_encoder(self, encoder: LabelEncoder) -> None:
        self.encoder = encoder

    # ------------------------------------------------------------------ datasets
    def _dataset(self, audio: str, filenames: list[str], train: bool, **labels) -> SEDDataset:
        assert self.encoder is not None
        return SEDDataset(
            self.path(audio),
            filenames,
            self.encoder,
            sample_rate=self.sample_rate,
            clip_duration=self.clip_duration,
            random_crop=train,
            channel=self.channel,
            seed=self.seed,
            cache_dir=self.cache_dir,
            nonfinite=self.nonfinite_audio,
            **labels,
        )

    def _train_subset(self, name: str) -> Optional[SEDDataset]:
        tsv, audio = self.subsets[name]
        if tsv is None or self.batch_sizes[name] == 0:
            return None
        path = self.path(tsv)
        if name == "strong":
            df = read_strong(path, self.classes)
            return self._dataset(audio, sorted(df["filename"].unique()), True, strong=df)
        if name == "weak":
            df = read_weak(path, self.classes)
            return self._dataset(audio, list(df["filename"]), True, weak=df)
        return self._dataset(audio, read_filenames(path), True)

    def _eval_set(self, stage: str) -> SEDDataset:
        tsv, audio, durations = self.eval_sets[stage]
        gt = read_strong(self.path(tsv), self.classes)
        self.ground_truth[stage] = gt
        self.durations[stage] = read_durations(self.path(durations))
        filenames = sorted(gt["filename"].unique())
        missing = [f for f in filenames if f not in self.durations[stage]]
        if missing:
            raise ValueError(
                f"{self.path(durations)}: no duration for {len(missing)} clip(s) of {self.path(tsv)}, "
                f"e.g. {missing[0]}"
            )
        _warn_unlisted_clips(self.path(durations), self.path(tsv), self.path(audio), self.durations[stage], filenames)
        # Whole clips: one longer than clip_duration is evaluated over its whole length (SEDModule._eval_step).
        return self._dataset(audio, filenames, False, strong=gt, whole_clip=True)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.encoder is None:
            if self.trainer is None or not hasattr(self.trainer.lightning_module, "encoder"):
                raise RuntimeError("SEDDataModule needs a label encoder: call set_encoder() first")
            self.encoder = self.trainer.lightning_module.encoder
        if stage in (None, "fit") and not self.train_sets:
            for name in ("strong", "weak", "unlabeled"):
                subset = self._train_subset(name)
                if subset is not None:
                    self.train_sets[name] = subset
            if not self.train_sets:
                raise ValueError("No training data: data.strong_tsv, data.weak_tsv and data.unlabeled_tsv are all off")
            log.info("Training subsets: %s", {k: len(v) for k, v in self.train_sets.items()})
        if stage in (None, "fit", "validate") and "val" not in self.eval_datasets:
            self.eval_datasets["val"] = self._eval_set("val")
        if stage in (None, "test") and "test" not in self.eval_datasets:
            self.eval_datasets["test"] = self._eval_set("test")

    # ------------------------------------------------------------------ loaders
    def _world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
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
        return self._loader(ConcatDataset([self.train_sets[n] for n in names]), batch_sampler=sampler)

    def _eval_loader(self, stage: str) -> DataLoader:
        dataset = self.eval_datasets[stage]
        world_size, rank = self._world()
        sampler = None
        if world_size > 1:  # padded shards repeat a few clips; the module de-duplicates by filename
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        return self._loader(dataset, batch_size=self.eval_batch_size, sampler=sampler, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
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
