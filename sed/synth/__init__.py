"""Synthetic DCASE-format dataset generator (``python -m sed.synth OUT_DIR``).

Procedurally synthesised event classes over varied backgrounds (or a user's soundbank folder),
placed at random onsets and SNRs, written as DESED-like subsets with strong/weak/unlabeled
annotations, deterministically from a seed. ``--recordings`` (:mod:`sed.synth.recordings`) makes a second,
MAESTRO-like dataset: minutes-long scene recordings with soft labels from simulated annotators.
"""

from __future__ import annotations

from sed.synth.recordings import (
    ALIASES,
    EVALUATED_CLASSES,
    RECORDING_CLASSES,
    generate_recordings,
)
from sed.synth.scenes import (
    DEFAULT_SIZES,
    GENERATOR_VERSION,
    SUBSETS,
    DatasetLayout,
    GenerationRefused,
    Scene,
    SceneConfig,
    dataset_layout,
    generate_dataset,
    make_scene,
)
from sed.synth.soundbank import (
    DEFAULT_CLASSES,
    FolderSoundBank,
    ProceduralSoundBank,
    SoundBank,
    SoundbankError,
    load_soundbank,
)

__all__ = [
    "ALIASES",
    "EVALUATED_CLASSES",
    "RECORDING_CLASSES",
    "generate_recordings",
    "DEFAULT_CLASSES",
    "DEFAULT_SIZES",
    "GENERATOR_VERSION",
    "SUBSETS",
    "DatasetLayout",
    "GenerationRefused",
    "FolderSoundBank",
    "ProceduralSoundBank",
    "Scene",
    "SceneConfig",
    "SoundBank",
    "SoundbankError",
    "dataset_layout",
    "generate_dataset",
    "load_soundbank",
    "make_scene",
]
