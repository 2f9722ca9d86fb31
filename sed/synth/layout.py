"""Where a generated dataset's files are (DESED-like folders and metadata) and whether its generation finished:
the paths :func:`sed.synth.scenes.generate_dataset` writes and the data module reads."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

SUBSETS: tuple[str, ...] = ("strong", "weak", "unlabeled", "validation", "test")
AUDIO_SUBDIR = {
    "strong": "audio/train/strong",
    "weak": "audio/train/weak",
    "unlabeled": "audio/train/unlabeled",
    "validation": "audio/validation",
    "test": "audio/test",
}
# What identifies a generated dataset: a folder generated with the same settings is the same dataset.
SETTINGS_KEYS = ("generator_version", "seed", "sizes", "clip_duration", "sample_rate", "soundbank", "scene")


@dataclass(frozen=True)
class DatasetLayout:
    """Paths of a generated dataset (DESED-like). ``complete()`` tells whether generation finished."""

    root: Path
    strong_audio: Path
    weak_audio: Path
    unlabeled_audio: Path
    validation_audio: Path
    test_audio: Path
    strong_tsv: Path
    weak_tsv: Path
    unlabeled_tsv: Path
    validation_tsv: Path
    validation_durations: Path
    test_tsv: Path
    test_durations: Path
    classes_file: Path
    readme: Path
    marker: Path
    progress_marker: Path

    def audio_dir(self, subset: str) -> Path:
        """Audio folder of ``subset`` (one of :data:`SUBSETS`)."""
        return getattr(self, f"{subset}_audio")

    def complete(self) -> bool:
        """True when the ``.complete`` marker (written last) and every metadata file exist."""
        files = (
            self.marker,
            self.classes_file,
            self.strong_tsv,
            self.weak_tsv,
            self.unlabeled_tsv,
            self.validation_tsv,
            self.validation_durations,
            self.test_tsv,
            self.test_durations,
        )
        return all(p.is_file() for p in files)

    def params(self) -> dict | None:
        """Generation parameters recorded in the marker (None if incomplete/unreadable)."""
        try:
            return json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def generated_settings(self) -> dict | None:
        """Settings of the generator run that owns this folder, from its completion marker or, for an
        interrupted run, its progress marker; None when no marker of the generator is there (a ``.complete``
        written by another tool, such as recipes/desed/prepare.py, does not count)."""
        for marker in (self.marker, self.progress_marker):
            try:
                found = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(found, dict) and "generator_version" in found:
                from sed.synth.scenes import SceneConfig, _scene_settings  # the generator's, which uses this

                found.setdefault("scene", _scene_settings(SceneConfig()))  # older markers: the defaults
                return {key: found.get(key) for key in SETTINGS_KEYS}
        return None

    def classes(self) -> list[str]:
        """Class list from ``classes.txt``."""
        return [c for c in self.classes_file.read_text(encoding="utf-8").splitlines() if c.strip()]

    def as_dict(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)}


def dataset_layout(out_dir: str | os.PathLike) -> DatasetLayout:
    """Paths of the dataset under ``out_dir`` (nothing is read or created)."""
    root = Path(out_dir)
    meta = root / "metadata"
    return DatasetLayout(
        root=root,
        strong_audio=root / AUDIO_SUBDIR["strong"],
        weak_audio=root / AUDIO_SUBDIR["weak"],
        unlabeled_audio=root / AUDIO_SUBDIR["unlabeled"],
        validation_audio=root / AUDIO_SUBDIR["validation"],
        test_audio=root / AUDIO_SUBDIR["test"],
        strong_tsv=meta / "train" / "strong.tsv",
        weak_tsv=meta / "train" / "weak.tsv",
        unlabeled_tsv=meta / "train" / "unlabeled.tsv",
        validation_tsv=meta / "validation" / "validation.tsv",
        validation_durations=meta / "validation" / "durations.tsv",
        test_tsv=meta / "test" / "test.tsv",
        test_durations=meta / "test" / "durations.tsv",
        classes_file=root / "classes.txt",
        readme=root / "README.txt",
        marker=root / ".complete",
        progress_marker=root / ".generating",
    )
