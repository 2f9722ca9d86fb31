"""DCASE data: annotation files, audio loading, label encoding, datasets and mixed batches."""

from __future__ import annotations

from sed.data.audio import AudioError, fit_length, read_audio
from sed.data.checks import DataCheckError, check_sets, probe_audio
from sed.data.datasets import SEDDataset, collate
from sed.data.encoder import LabelEncoder
from sed.data.sampler import MixedBatchSampler
from sed.data.tsv import (
    AnnotationError,
    DurationMap,
    FileList,
    merge_overlapping_events,
    read_durations,
    read_filenames,
    read_strong,
    read_weak,
    write_durations,
    write_strong,
    write_weak,
)

__all__ = [
    "AnnotationError",
    "AudioError",
    "DataCheckError",
    "DurationMap",
    "FileList",
    "LabelEncoder",
    "MixedBatchSampler",
    "SEDDataset",
    "check_sets",
    "collate",
    "fit_length",
    "merge_overlapping_events",
    "probe_audio",
    "read_audio",
    "read_durations",
    "read_filenames",
    "read_strong",
    "read_weak",
    "write_durations",
    "write_strong",
    "write_weak",
]
