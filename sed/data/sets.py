"""The datasets a run reads: each one's training subsets, validation and test sets, annotated classes and aliases.

A run trains on one or several *datasets* (DCASE 2024 Task 4: DESED and MAESTRO Real). A dataset has its own
vocabulary: the model's classes it annotates (the others are masked for its clips: no loss, no attention) and
aliases from the labels of its files into the model's classes (MAESTRO's ``people talking`` is also ``Speech``).
Its training subsets each have a kind (strong, weak, unlabeled), a TSV and an audio folder, and a number of rows in
every batch; a strong subset may carry soft labels (a ``confidence`` column) and long recordings cut into windows.
Its validation and test sets are scored on their own classes with their own metrics (``psds``: PSDS, F1 ...;
``mpauc``: segment-based mean partial AUROC of soft-labelled long recordings).

The configuration's per-subset keys (``data.strong_tsv`` ... ``data.batch_sizes``) describe one dataset that
annotates every class: :func:`single_dataset` turns them into the same :class:`Dataset` as a one-entry
``data.datasets``, so one code path serves both. Names follow the number of datasets: with one, the training
subsets are ``strong``, ``weak``, ``unlabeled`` and the evaluation sets ``val`` and ``test`` (metric names as they
always were); with several, ``<dataset>/<subset>``, ``val/<dataset>`` and ``test/<dataset>``.

Every problem raises :class:`DatasetConfigError` naming the configuration key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from sed.utils.errors import ConfigError

KINDS = ("strong", "weak", "unlabeled")
METRICS = ("psds", "mpauc")
GENERATORS = ("clips", "recordings")  # sed.synth's embedded datasets
_RESERVED = {"student", "teacher", "val", "test", "val_weak", "obj_metric"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DatasetConfigError(ConfigError):
    """A dataset description the run cannot use; the message names the configuration key."""


@dataclass(frozen=True)
class TrainSubset:
    """One training subset: ``batch_size`` rows of every batch come from it."""

    name: str  # the sampler's and the logs' name: "strong", or "<dataset>/<subset>" with several datasets
    dataset: str
    kind: str
    tsv: Optional[Path]  # unlabeled: a TSV with a filename column or None (the audio folder is listed)
    audio: Path
    batch_size: int
    window_hop: Optional[float] = None  # long recordings: clip-length windows every this many seconds
    consistency: bool = True  # the mean-teacher consistency loss applies to its rows
    key: str = ""  # configuration key, for messages


@dataclass(frozen=True)
class EvalSet:
    """A validation or test set and how it is scored."""

    name: str  # "val" / "test", or "val/<dataset>" / "test/<dataset>" with several datasets
    stage: str  # "val" | "test"
    dataset: str
    tsv: Path
    audio: Path
    durations: Path
    metrics: str = "psds"  # psds | mpauc
    classes: Optional[tuple[str, ...]] = None  # scored classes; None: the dataset's
    min_confidence: float = 0.5  # mpauc: events above this confidence are the ground truth
    key: str = ""


@dataclass(frozen=True)
class Dataset:
    """One dataset: its vocabulary and its sets (see the module docstring)."""

    name: str
    root: Path
    classes: Optional[tuple[str, ...]] = None  # the model's classes it annotates; None: all of them
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # label -> model classes
    train: tuple[TrainSubset, ...] = ()
    validation: Optional[EvalSet] = None
    test: Optional[EvalSet] = None
    generate: Optional[str] = None  # "clips" | "recordings": sed.synth generates it into root when absent
    generate_sizes: Mapping[str, int] = field(default_factory=dict)
    key: str = "data"

    def annotated(self, model_classes: Sequence[str]) -> list[str]:
        """The model's classes this dataset annotates, in the model's order: its ``classes`` (all the model's when
        None) and its aliases' targets."""
        own = set(self.classes) if self.classes is not None else set(model_classes)
        own |= {t for targets in self.aliases.values() for t in targets}
        return [c for c in model_classes if c in own]

    def class_mask(self, model_classes: Sequence[str]) -> np.ndarray:
        """``[C]`` bool: true for the classes it annotates."""
        own = set(self.annotated(model_classes))
        return np.array([c in own for c in model_classes], dtype=bool)

    def labels(self, model_classes: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """Every label its files may use -> the model classes an event of that label marks: the label itself when
        it is an annotated class, plus its aliases."""
        out = {c: (c,) for c in self.annotated(model_classes)}
        for label, targets in self.aliases.items():
            own = (label,) if label in out else ()
            out[label] = tuple(dict.fromkeys(own + tuple(targets)))
        return out

    def scored_classes(self, eval_set: EvalSet, model_classes: Sequence[str]) -> list[str]:
        """The classes ``eval_set`` is scored on, in the model's order."""
        wanted = set(eval_set.classes) if eval_set.classes is not None else set(self.annotated(model_classes))
        return [c for c in model_classes if c in wanted]

    def eval_sets(self) -> list[EvalSet]:
        return [s for s in (self.validation, self.test) if s is not None]


# ---------------------------------------------------------------------------------------------- building
def _path(root: Path, value: Any) -> Path:
    p = Path(str(value))
    return p if p.is_absolute() else root / p


def single_dataset(
    root: str | Path,
    strong: tuple[Optional[str], str],
    weak: tuple[Optional[str], str],
    unlabeled: tuple[Optional[str], str],
    batch_sizes: Sequence[int],
    val: tuple[str, str, str],
    test: tuple[str, str, str],
) -> Dataset:
    """The dataset of the per-subset keys (``data.strong_tsv`` ... ``data.test_durations``, ``data.batch_sizes``):
    one vocabulary (every class annotated, no aliases), hard or soft labels, the embedded clips when generated. As
    always with these keys, a subset whose TSV is null or whose batch size is 0 is left out."""
    root = Path(root)
    if len(batch_sizes) != 3:
        raise DatasetConfigError(f"data.batch_sizes needs 3 numbers (strong, weak, unlabeled), got {list(batch_sizes)}")
    train = []
    for (kind, (tsv, audio)), size in zip(zip(KINDS, (strong, weak, unlabeled)), batch_sizes):
        if tsv is not None and int(size) > 0:
            train.append(
                TrainSubset(kind, "data", kind, _path(root, tsv), _path(root, audio), int(size), key=f"data.{kind}_tsv")
            )
    sets = [
        EvalSet(
            stage,
            stage,
            "data",
            _path(root, tsv),
            _path(root, audio),
            _path(root, dur),
            key=f"data.{'val' if stage == 'val' else 'test'}_tsv",
        )
        for stage, (tsv, audio, dur) in (("val", val), ("test", test))
    ]
    return Dataset("data", root, train=tuple(train), validation=sets[0], test=sets[1], generate="clips", key="data")


def _items(datasets: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """``(name, description)`` of a mapping keyed by name, or of a list of descriptions with a ``name`` each."""
    if isinstance(datasets, Mapping):
        return [(str(k), v or {}) for k, v in datasets.items()]
    out: list[tuple[str, Mapping[str, Any]]] = []
    for i, entry in enumerate(datasets):
        if not isinstance(entry, Mapping) or not entry.get("name"):
            raise DatasetConfigError(f"data.datasets[{i}] needs a name")
        name = str(entry["name"])
        if name in [n for n, _ in out]:
            raise DatasetConfigError(f"data.datasets: two datasets are named {name!r}; each needs its own name")
        out.append((name, {k: v for k, v in entry.items() if k != "name"}))
    return out


def _check_name(name: str, key: str) -> None:
    if not _NAME.match(name) or name in _RESERVED:
        raise DatasetConfigError(
            f"{key}: {name!r} cannot be a dataset or subset name (letters, digits, '_', '.', '-'; not one of "
            f"{sorted(_RESERVED)}): it names metrics and folders"
        )


def _aliases(raw: Any, key: str) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for label, targets in dict(raw or {}).items():
        targets = [targets] if isinstance(targets, str) else list(targets or [])
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise DatasetConfigError(f"{key}.{label!r}: an alias maps a label to a class name or a list of them")
        out[str(label)] = tuple(targets)
    return out


def _classes(raw: Any, key: str) -> Optional[tuple[str, ...]]:
    if raw is None:
        return None
    classes = [str(c) for c in raw]
    if not classes or len(set(classes)) != len(classes):
        raise DatasetConfigError(f"{key}: give a non-empty list of distinct class names, got {classes}")
    return tuple(classes)


def _train_subset(dataset: str, name: str, raw: Mapping[str, Any], root: Path, several: bool, key: str) -> TrainSubset:
    _check_name(name, key)
    kind = raw.get("kind", "strong")
    if kind not in KINDS:
        raise DatasetConfigError(f"{key}.kind: {kind!r} is not one of {KINDS}")
    if raw.get("audio") is None:
        raise DatasetConfigError(f"{key}.audio is not set: the folder of the subset's audio files")
    if raw.get("tsv") is None and kind != "unlabeled":
        raise DatasetConfigError(f"{key}.tsv is not set: the {kind} labels of the subset")
    size = raw.get("batch_size")
    if size is None or int(size) != size or int(size) < 1:
        raise DatasetConfigError(
            f"{key}.batch_size={size}: a listed subset needs at least 1 row per batch (remove the subset, e.g. "
            f"~{key}, to train without it)"
        )
    hop = raw.get("window_hop")
    if hop is not None and (kind == "weak" or float(hop) <= 0):
        raise DatasetConfigError(
            f"{key}.window_hop={hop}: windows of long recordings need a hop > 0 seconds and "
            "strong or unlabeled clips (a weak label says nothing about a window)"
        )
    tsv = raw.get("tsv")
    return TrainSubset(
        f"{dataset}/{name}" if several else name,
        dataset,
        kind,
        None if tsv is None else _path(root, tsv),
        _path(root, raw["audio"]),
        int(size),
        None if hop is None else float(hop),
        bool(raw.get("consistency", True)),
        key,
    )


def _eval_set(
    dataset: str, stage: str, raw: Optional[Mapping[str, Any]], root: Path, several: bool, key: str
) -> Optional[EvalSet]:
    if raw is None:
        return None
    for part, what in (
        ("tsv", "its strong labels"),
        ("audio", "its audio folder"),
        ("durations", "a filename/duration TSV: scoring needs every recording's duration"),
    ):
        if raw.get(part) is None:
            raise DatasetConfigError(f"{key}.{part} is not set ({what})")
    metrics = raw.get("metrics", "psds")
    if metrics not in METRICS:
        raise DatasetConfigError(f"{key}.metrics: {metrics!r} is not one of {METRICS}")
    confidence = float(raw.get("min_confidence", 0.5))
    if not 0.0 <= confidence < 1.0:
        raise DatasetConfigError(f"{key}.min_confidence={confidence} must lie in [0, 1)")
    return EvalSet(
        f"{stage}/{dataset}" if several else stage,
        stage,
        dataset,
        _path(root, raw["tsv"]),
        _path(root, raw["audio"]),
        _path(root, raw["durations"]),
        metrics,
        _classes(raw.get("classes"), f"{key}.classes"),
        confidence,
        key,
    )


def parse_datasets(datasets: Mapping[str, Any] | Sequence[Mapping[str, Any]], root: str | Path) -> list[Dataset]:
    """The :class:`Dataset` list of ``data.datasets`` (a mapping name -> description, or a list of descriptions
    with a ``name``); a dataset's paths are relative to its ``root`` (default ``root``, ``data.root``)."""
    items = _items(datasets)
    several = len(items) > 1
    out = []
    for name, raw in items:
        key = f"data.datasets.{name}"
        _check_name(name, key)
        unknown = set(raw) - {"root", "generate", "generate_sizes", "classes", "aliases", "train", "validation", "test"}
        if unknown:
            raise DatasetConfigError(f"{key}: unknown key(s) {sorted(unknown)}")
        droot = _path(Path(root), raw["root"]) if raw.get("root") is not None else Path(root)
        generate = raw.get("generate")
        if generate is not None and generate not in GENERATORS:
            raise DatasetConfigError(f"{key}.generate: {generate!r} is not one of {GENERATORS} (or null)")
        train = tuple(
            _train_subset(name, sub, dict(spec or {}), droot, several, f"{key}.train.{sub}")
            for sub, spec in dict(raw.get("train") or {}).items()
        )
        out.append(
            Dataset(
                name,
                droot,
                _classes(raw.get("classes"), f"{key}.classes"),
                _aliases(raw.get("aliases"), f"{key}.aliases"),
                train,
                _eval_set(name, "val", raw.get("validation"), droot, several, f"{key}.validation"),
                _eval_set(name, "test", raw.get("test"), droot, several, f"{key}.test"),
                generate,
                {str(k): int(v) for k, v in dict(raw.get("generate_sizes") or {}).items()},
                key,
            )
        )
    if not out:
        raise DatasetConfigError("data.datasets is empty: describe at least one dataset")
    return out


# ---------------------------------------------------------------------------------------------- classes
def resolve_classes(datasets: Sequence[Dataset], classes: Optional[Sequence[str]]) -> Optional[list[str]]:
    """The model's class list: ``classes`` (``data.classes``) when given, else the union of the datasets' listed
    classes in order of appearance; None when neither lists any (the caller reads ``classes.txt``)."""
    if classes:
        return [str(c) for c in classes]
    union = [c for d in datasets for c in (d.classes or ())]
    return list(dict.fromkeys(union)) or None


def check_classes(datasets: Sequence[Dataset], model_classes: Sequence[str]) -> None:
    """Refuse a dataset class or alias target that is not one of the model's, a model class no training dataset
    annotates, and an evaluation set scored on a class its dataset does not annotate."""
    known = set(model_classes)
    for d in datasets:
        extra = [c for c in d.classes or () if c not in known]
        if extra:
            raise DatasetConfigError(
                f"{d.key}.classes: {extra} are not among the model's classes {list(model_classes)}"
            )
        annotated = set(d.annotated(model_classes))
        for label, targets in d.aliases.items():
            for target in targets:
                if target not in known:
                    raise DatasetConfigError(
                        f"{d.key}.aliases.{label!r}: {target!r} is not one of the model's classes {list(model_classes)}"
                    )
        for s in d.eval_sets():
            outside = [c for c in s.classes or () if c not in annotated]
            if outside:
                raise DatasetConfigError(f"{s.key}.classes: {outside} are not among the classes {d.name!r} annotates")
    trained = [d for d in datasets if d.train]
    if trained:
        covered = {c for d in trained for c in d.annotated(model_classes)}
        orphans = [c for c in model_classes if c not in covered]
        if orphans:
            raise DatasetConfigError(
                f"data.classes: {orphans} annotated by no training dataset (its classes or aliases); the model would "
                "never learn them: remove them or add them to a dataset's classes"
            )


def describe_classes(datasets: Sequence[Dataset], model_classes: Sequence[str]) -> str:
    """The class list with the datasets that annotate each class (and through which of their labels)."""
    lines = [f"{len(model_classes)} classes (annotated by):"]
    for c in model_classes:
        who = []
        for d in datasets:
            if c not in d.annotated(model_classes):
                continue
            via = [label for label, targets in d.labels(model_classes).items() if c in targets and label != c]
            who.append(d.name + (f" ({', '.join(repr(v) for v in via)})" if via else ""))
        lines.append(f"  {c}: {', '.join(who) or '-'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- labels
def map_strong(events: pd.DataFrame, labels: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Strong events with each label replaced by the model classes it marks (an aliased event is repeated for every
    class); no-event rows and ``attrs`` (row lines follow the rows) kept. Identity when every label maps to itself."""
    if all(tuple(t) == (label,) for label, t in labels.items()):
        return events
    pairs = [
        (i, target)
        for i, label in enumerate(events["event_label"])
        for target in (labels.get(label, (label,)) if label else (label,))
    ]
    out = events.iloc[[i for i, _ in pairs]].reset_index(drop=True)
    out["event_label"] = [target for _, target in pairs]
    out.attrs = dict(events.attrs)
    if events.attrs.get("row_lines") is not None:
        out.attrs["row_lines"] = tuple(events.attrs["row_lines"][i] for i, _ in pairs)
    return out


def map_weak(weak: pd.DataFrame, labels: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Weak labels (tuples) with each label replaced by the model classes it marks."""
    out = weak.copy()
    out["event_labels"] = [
        tuple(dict.fromkeys(t for label in ls for t in labels.get(label, (label,)))) for ls in weak["event_labels"]
    ]
    out.attrs = dict(weak.attrs)
    return out


def scored_events(events: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Ground truth of an evaluation set on its scored ``classes``: events of other classes dropped (a clip left
    without events keeps a no-event row, so it is still scored)."""
    keep = events["event_label"].isin(list(classes)) | (events["event_label"] == "")
    if keep.all():
        return events
    kept = events[keep]
    lost = sorted(set(events["filename"]) - set(kept["filename"]))
    empty = pd.DataFrame({"filename": lost, "onset": np.nan, "offset": np.nan, "event_label": ""})
    out = pd.concat([kept, empty], ignore_index=True)
    out.attrs = {k: v for k, v in events.attrs.items() if k != "row_lines"}
    return out


# ---------------------------------------------------------------------------------------------- reading
def read_set(
    name: str, spec: TrainSubset | EvalSet, dataset: Dataset, model_classes: Sequence[str], problems: list
) -> Optional[tuple[Any, dict]]:
    """The clips of set ``name`` (a :class:`sed.data.checks.ClipSet` to check) and the labels its
    :class:`sed.data.datasets.SEDDataset` takes (``{"strong": …}`` or ``{"weak": …}``), in the model's classes:
    aliases applied, an evaluation set's ground truth on its scored classes. A bad annotation file goes to
    ``problems`` (and None is returned), so that every problem of a run is reported at once."""
    from sed.data.checks import ClipSet
    from sed.data.tsv import AnnotationError, read_durations, read_filenames, read_strong, read_weak

    labels = dataset.labels(model_classes)
    kind = spec.kind if isinstance(spec, TrainSubset) else "strong"
    clips, kwargs, ok = ClipSet(name, spec.audio, []), {}, True
    try:
        if kind == "unlabeled":
            files = read_filenames(spec.tsv if spec.tsv is not None else spec.audio)
            clips.filenames, clips.source, clips.lines = files, files.source, files.lines
        elif kind == "weak":
            kwargs["weak"] = weak = map_weak(read_weak(spec.tsv, list(labels)), labels)
            clips.filenames, clips.source, clips.lines = list(weak["filename"]), str(spec.tsv), weak.attrs["lines"]
        else:
            events = map_strong(read_strong(spec.tsv, list(labels)), labels)
            if isinstance(spec, EvalSet):
                events = scored_events(events, dataset.scored_classes(spec, model_classes))
            kwargs["strong"] = clips.events = events
            clips.filenames = sorted(events["filename"].unique())
            clips.source, clips.lines = str(spec.tsv), events.attrs["lines"]
    except AnnotationError as err:
        problems.extend(err.problems)  # each bad line of the file
        ok = False
    if isinstance(spec, EvalSet):
        try:
            clips.durations = read_durations(spec.durations)
        except AnnotationError as err:
            problems.extend(err.problems)
            ok = False
    return (clips, kwargs) if ok else None
