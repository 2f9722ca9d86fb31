"""The schema of ``data`` (paths, the embedded data's generation, one or several datasets) and ``paths``: part of
:mod:`sed.run.config`, where the whole configuration is assembled."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from sed.synth.scenes import DEFAULT_SIZES


@dataclass
class PathsConfig:
    data_dir: str = "data"
    exp_dir: str = "exp"
    # The run directory: checkpoints, TensorBoard events, scaler, test outputs, resolved config.
    run_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class GenerateSizesConfig:
    """Clips per subset of the generated dataset (sed.synth's defaults)."""

    strong: int = DEFAULT_SIZES["strong"]
    weak: int = DEFAULT_SIZES["weak"]
    unlabeled: int = DEFAULT_SIZES["unlabeled"]
    validation: int = DEFAULT_SIZES["validation"]
    test: int = DEFAULT_SIZES["test"]


@dataclass
class TrainSubsetConfig:
    """A training subset of a dataset (``data.datasets.<name>.train.<subset>``; sed.data.sets.TrainSubset)."""

    kind: str = "strong"  # strong | weak | unlabeled
    # strong/weak labels (a strong TSV may carry a confidence column: soft labels); unlabeled: a TSV with a
    # filename column, or null to list the audio folder
    tsv: Optional[str] = None
    audio: Optional[str] = None
    batch_size: Optional[int] = None  # rows of every batch (>= 1)
    window_hop: Optional[float] = None  # long recordings: clip-length windows every this many seconds
    consistency: bool = True  # the mean-teacher consistency loss applies to its rows


@dataclass
class EvalSetConfig:
    """A dataset's validation or test set (sed.data.sets.EvalSet)."""

    tsv: Optional[str] = None
    audio: Optional[str] = None
    durations: Optional[str] = None  # filename/duration TSV (required)
    metrics: str = "psds"  # psds (PSDS, F1s) | mpauc (segment-based mean partial AUROC: soft-labelled recordings)
    classes: Optional[List[str]] = None  # the classes scored; null: those the dataset annotates
    min_confidence: float = 0.5  # mpauc: the events above this confidence are the ground truth


@dataclass
class DatasetConfig:
    """One dataset of ``data.datasets`` (sed.data.sets.Dataset): its vocabulary and its sets; paths relative to
    ``root``."""

    root: Optional[str] = None  # null: data.root
    generate: Optional[str] = None  # clips | recordings: generated there with data.generate=true (sed.synth)
    generate_sizes: Dict[str, int] = field(default_factory=dict)
    classes: Optional[List[str]] = None  # the model's classes it annotates (its aliases' targets too); null: all
    aliases: Dict[str, Any] = field(default_factory=dict)  # label in its files -> model class (or a list)
    train: Dict[str, TrainSubsetConfig] = field(default_factory=dict)
    validation: Optional[EvalSetConfig] = None
    test: Optional[EvalSetConfig] = None


@dataclass
class DataConfig:
    """Where the clips and DCASE annotations are, and how batches are made.

    Paths are relative to ``root`` unless absolute; a subset whose TSV is null is not used. ``datasets`` (several
    datasets, e.g. DESED and MAESTRO: docs/datasets.md) replaces the per-subset keys ``strong_tsv`` ...
    ``test_durations`` and ``batch_sizes``, which describe one dataset.
    """

    _target_: str = "sed.data.datamodule.SEDDataModule"
    root: str = MISSING
    generate: bool = False  # create the embedded synthetic dataset (sed.synth) in `root` if it is absent
    generate_seed: int = 0
    generate_sizes: GenerateSizesConfig = field(default_factory=lambda: GenerateSizesConfig())
    # The model's classes. null: the union of data.datasets' classes, else one class per line of <root>/classes.txt
    classes: Optional[List[str]] = None
    datasets: Dict[str, DatasetConfig] = field(default_factory=dict)  # {}: one dataset, from the keys below
    sample_rate: int = 16000
    clip_duration: float = 10.0
    strong_tsv: Optional[str] = "metadata/train/strong.tsv"
    strong_audio: str = "audio/train/strong"
    weak_tsv: Optional[str] = "metadata/train/weak.tsv"
    weak_audio: str = "audio/train/weak"
    unlabeled_tsv: Optional[str] = "metadata/train/unlabeled.tsv"  # a TSV with `filename`, or a folder of audio
    unlabeled_audio: str = "audio/train/unlabeled"
    val_tsv: str = "metadata/validation/validation.tsv"
    val_audio: str = "audio/validation"
    val_durations: str = "metadata/validation/durations.tsv"
    test_tsv: str = "metadata/test/test.tsv"
    test_audio: str = "audio/test"
    test_durations: str = "metadata/test/durations.tsv"
    batch_sizes: List[int] = field(default_factory=lambda: [12, 12, 24])  # strong, weak, unlabeled rows per batch
    eval_batch_size: int = 24
    epoch_length: Any = "min"  # "min" (DESED), "max", or a number of batches
    num_workers: int = 2
    channel: str = "mean"  # multichannel audio to mono: "mean" or "random"
    cache_dir: Optional[str] = None  # decoded, resampled audio cached here once (.npy)
    # Weak clips held out for validation (DCASE baseline: 0.1): the objective's weak F1 is computed on them.
    weak_val_fraction: float = 0.0
    nonfinite_audio: str = "error"  # NaN/Inf samples: "error" (names the file) or "zero" (silence, warned)
    # Load and check the test set when training starts too, so a broken one fails before training; on when
    # the run will test.
    check_test: bool = "${test}"  # type: ignore[assignment]
