"""Several datasets (sed.data.sets): the one-dataset case, vocabularies, aliases, masks and bad descriptions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sed.data.sets import (
    DatasetConfigError,
    check_classes,
    describe_classes,
    map_strong,
    map_weak,
    parse_datasets,
    resolve_classes,
    scored_events,
    single_dataset,
)

DESED = ["Alarm_bell_ringing", "Dishes", "Dog", "Speech"]
MAESTRO = ["cutlery and dishes", "people talking", "children voices", "footsteps", "car"]


def _two(**maestro):
    """A DESED-like and a MAESTRO-like dataset, as the 2024 baseline pairs them."""
    return {
        "desed": {
            "classes": DESED,
            "train": {
                "synth": {"kind": "strong", "tsv": "s.tsv", "audio": "s", "batch_size": 6},
                "weak": {"kind": "weak", "tsv": "w.tsv", "audio": "w", "batch_size": 12},
                "unlabeled": {"kind": "unlabeled", "audio": "u", "batch_size": 24},
            },
            "validation": {"tsv": "v.tsv", "audio": "v", "durations": "vd.tsv"},
            "test": {"tsv": "t.tsv", "audio": "t", "durations": "td.tsv"},
        },
        "maestro": {
            "root": "/m",
            "classes": MAESTRO,
            "aliases": {"people talking": "Speech", "children voices": ["Speech"], "cutlery and dishes": "Dishes"},
            "train": {
                "real": {"tsv": "mt.tsv", "audio": "mt", "batch_size": 12, "window_hop": 1.0, "consistency": False}
            },
            "validation": {
                "tsv": "mv.tsv",
                "audio": "mv",
                "durations": "md.tsv",
                "metrics": "mpauc",
                "classes": ["people talking", "footsteps", "car"],
            },
            **maestro,
        },
    }


def test_the_per_subset_keys_are_the_one_dataset_case():
    legacy = single_dataset(
        "/r",
        ("st.tsv", "st"),
        ("wk.tsv", "wk"),
        (None, "un"),
        [4, 2, 0],
        ("v.tsv", "v", "vd.tsv"),
        ("t.tsv", "t", "td.tsv"),
    )
    same = parse_datasets(
        {
            "data": {
                "train": {
                    "strong": {"kind": "strong", "tsv": "st.tsv", "audio": "st", "batch_size": 4},
                    "weak": {"kind": "weak", "tsv": "wk.tsv", "audio": "wk", "batch_size": 2},
                },
                "validation": {"tsv": "v.tsv", "audio": "v", "durations": "vd.tsv"},
                "test": {"tsv": "t.tsv", "audio": "t", "durations": "td.tsv"},
            }
        },
        "/r",
    )[0]
    assert (
        [(t.name, t.kind, t.tsv, t.audio, t.batch_size) for t in legacy.train]
        == [(t.name, t.kind, t.tsv, t.audio, t.batch_size) for t in same.train]
        == [
            ("strong", "strong", Path("/r/st.tsv"), Path("/r/st"), 4),
            ("weak", "weak", Path("/r/wk.tsv"), Path("/r/wk"), 2),
        ]
    )
    assert [(e.name, e.tsv, e.durations) for e in legacy.eval_sets()] == [
        (e.name, e.tsv, e.durations) for e in same.eval_sets()
    ]
    classes = ["a", "b"]
    assert legacy.class_mask(classes).all() and legacy.labels(classes) == {"a": ("a",), "b": ("b",)}
    with pytest.raises(DatasetConfigError, match=r"data.batch_sizes needs 3 numbers"):
        single_dataset("/r", ("a", "a"), ("b", "b"), ("c", "c"), [1, 2], ("v", "v", "v"), ("t", "t", "t"))


def test_two_datasets_names_paths_classes_and_masks():
    desed, maestro = parse_datasets(_two(), "/root")
    assert [t.name for t in desed.train] == ["desed/synth", "desed/weak", "desed/unlabeled"]
    assert desed.validation.name == "val/desed" and maestro.validation.name == "val/maestro" and maestro.test is None
    assert desed.train[0].tsv == Path("/root/s.tsv") and maestro.train[0].tsv == Path("/m/mt.tsv")
    assert maestro.train[0].window_hop == 1.0 and maestro.train[0].consistency is False
    classes = resolve_classes([desed, maestro], None)
    assert classes == DESED + MAESTRO  # the union, in order: the model's 9 classes
    check_classes([desed, maestro], classes)
    # MAESTRO annotates its own classes and, through its aliases, Speech and Dishes; not Alarm_bell_ringing or Dog.
    assert maestro.class_mask(classes).tolist() == [False, True, False, True] + [True] * 5
    assert desed.class_mask(classes).tolist() == [True] * 4 + [False] * 5
    assert maestro.labels(classes)["people talking"] == ("people talking", "Speech")
    assert maestro.scored_classes(maestro.validation, classes) == ["people talking", "footsteps", "car"]
    assert desed.scored_classes(desed.validation, classes) == DESED
    text = describe_classes([desed, maestro], classes)
    assert "  Speech: desed, maestro ('people talking', 'children voices')" in text
    assert "  car: maestro" in text and "  Dog: desed" in text


def test_aliases_repeat_events_and_weak_labels_hand_checked():
    desed, maestro = parse_datasets(_two(), "/root")
    labels = maestro.labels(resolve_classes([desed, maestro], None))
    events = pd.DataFrame(
        {
            "filename": ["a.wav", "a.wav", "b.wav"],
            "onset": [0.0, 1.0, np.nan],
            "offset": [2.0, 3.0, np.nan],
            "event_label": ["people talking", "car", ""],
            "confidence": [0.6, 1.0, np.nan],
        }
    )
    events.attrs = {"source": "x.tsv", "lines": {"a.wav": 2, "b.wav": 4}, "row_lines": (2, 3, 4)}
    out = map_strong(events, labels)
    assert out[["event_label", "onset", "confidence"]].values.tolist()[:3] == [
        ["people talking", 0.0, 0.6],
        ["Speech", 0.0, 0.6],
        ["car", 1.0, 1.0],
    ]
    assert out.attrs["row_lines"] == (2, 2, 3, 4) and out["event_label"].iloc[3] == ""
    weak = pd.DataFrame({"filename": ["a.wav"], "event_labels": [("children voices", "people talking", "car")]})
    assert map_weak(weak, labels)["event_labels"].iloc[0] == ("children voices", "Speech", "people talking", "car")
    gt = scored_events(out, ["people talking", "footsteps", "car"])
    assert sorted(gt["event_label"]) == ["", "car", "people talking"]  # Speech is not scored on this set
    assert map_strong(events, {"car": ("car",), "people talking": ("people talking",)}) is events  # no aliases


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"aliases": {"people talking": "Speeches"}},
            r"data.datasets.maestro.aliases.'people talking': 'Speeches' is not one of the model's classes",
        ),
        (
            {"train": {"real": {"tsv": "a", "audio": "a", "batch_size": 0}}},
            r"data.datasets.maestro.train.real.batch_size=0: a listed subset needs at least 1 row per batch .*"
            r"~data.datasets.maestro.train.real",
        ),
        (
            {"validation": {"tsv": "a", "audio": "a"}},
            r"data.datasets.maestro.validation.durations is not set .*scoring needs every recording's duration",
        ),
        (
            {"validation": {"tsv": "a", "audio": "a", "durations": "d", "metrics": "auc"}},
            r"data.datasets.maestro.validation.metrics: 'auc' is not one of",
        ),
        (
            {"train": {"real": {"kind": "weak", "tsv": "a", "audio": "a", "batch_size": 2, "window_hop": 1.0}}},
            r"data.datasets.maestro.train.real.window_hop=1.0",
        ),
        (
            {"train": {"real": {"kind": "soft", "tsv": "a", "audio": "a", "batch_size": 2}}},
            r"data.datasets.maestro.train.real.kind: 'soft' is not one of",
        ),
        ({"train": {"real": {"audio": "a", "batch_size": 2}}}, r"data.datasets.maestro.train.real.tsv is not set"),
        ({"labels": {}}, r"data.datasets.maestro: unknown key\(s\) \['labels'\]"),
        ({"generate": "maestro"}, r"data.datasets.maestro.generate: 'maestro' is not one of"),
        (
            {"validation": {"tsv": "a", "audio": "a", "durations": "d", "classes": ["Dog"]}},
            r"data.datasets.maestro.validation.classes: \['Dog'\] are not among the classes 'maestro' annotates",
        ),
    ],
)
def test_bad_descriptions_name_the_key(change, message):
    with pytest.raises(DatasetConfigError, match=message):
        datasets = parse_datasets(_two(**change), "/root")
        check_classes(datasets, resolve_classes(datasets, None))


def test_a_class_annotated_by_no_dataset_and_unknown_dataset_classes():
    datasets = parse_datasets(_two(), "/root")
    with pytest.raises(DatasetConfigError, match=r"data.classes: \['Cat'\] annotated by no training dataset"):
        check_classes(datasets, resolve_classes(datasets, DESED + MAESTRO + ["Cat"]))
    with pytest.raises(DatasetConfigError, match=r"data.datasets.maestro.classes: \['car'\] are not among the model's"):
        check_classes(datasets, [c for c in DESED + MAESTRO if c != "car"])


def test_dataset_names_are_unique_and_usable():
    listed = [{"name": "desed", **_two()["desed"]}, {"name": "desed", **_two()["maestro"]}]
    with pytest.raises(DatasetConfigError, match=r"two datasets are named 'desed'"):
        parse_datasets(listed, "/root")
    assert [
        d.name for d in parse_datasets([{"name": "a", **_two()["desed"]}, {"name": "b", **_two()["maestro"]}], "/root")
    ] == ["a", "b"]
    for bad in ("student", "val", "my/set", ""):
        with pytest.raises(DatasetConfigError, match="cannot be a dataset or subset name"):
            parse_datasets({bad: _two()["desed"]}, "/root")
    with pytest.raises(DatasetConfigError, match="data.datasets is empty"):
        parse_datasets({}, "/root")


def test_a_repeated_dataset_name_in_a_yaml_file_is_refused_naming_its_lines(tmp_path):
    from hydra import compose, initialize_config_dir

    (tmp_path / "config.yaml").write_text("data:\n  datasets:\n    desed: {classes: [a]}\n    desed: {classes: [b]}\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        with pytest.raises(Exception, match=r"(?s)line 3.*found duplicate key desed.*line 4"):
            compose("config")
