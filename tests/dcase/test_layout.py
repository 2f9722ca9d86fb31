"""Submission labels and the package's file names (sed.dcase.layout): one test per rule."""

from __future__ import annotations

import pytest

from sed.dcase.layout import classify, label_problem, parse_label


@pytest.mark.parametrize("label", ["Doe_UNI_task4_1", "Doe_UNI_task4_4", "Van-Dam_TU-e_task4a_2", "Li_A1_task4_3"])
def test_valid_labels(label):
    assert label_problem(label) is None
    assert str(parse_label(label)) == label


def test_a_label_has_four_parts():
    assert "four parts" in label_problem("Doe")
    assert "four parts" in label_problem("Doe_UNI_task4")
    assert "four parts" in label_problem("Doe_Smith_UNI_task4_1")  # no '_' inside the name


def test_the_third_part_is_the_task():
    assert "third part" in label_problem("Doe_UNI_task1_1")
    assert "third part" in label_problem("Doe_UNI_Task4_1")


@pytest.mark.parametrize("index", ["0", "5", "01", "x"])
def test_the_index_is_1_to_4(index):
    assert "1 to 4" in label_problem(f"Doe_UNI_task4_{index}")


def test_name_and_institute_are_words():
    assert "last name" in label_problem("_UNI_task4_1")
    assert "institute" in label_problem("Doe_U.N.I_task4_1")
    with pytest.raises(ValueError, match="four parts"):
        parse_label("Doe")


def test_participant_names_the_package():
    assert parse_label("Doe_UNI_task4a_2").participant == "Doe_UNI_task4"


@pytest.mark.parametrize(
    "relative, expected",
    [
        ("L_I_task4_1.meta.yaml", ("meta", None, False)),
        ("L_I_task4_1_run2.output/clip 1.tsv", ("output", 2, False)),
        ("L_I_task4_1_run3_unprocessed.output/a.tsv", ("output", 3, True)),
        ("L_I_task4_1_run1.codecarbon/emissions.csv", ("codecarbon", 1, False)),
        ("L_I_task4_1.baseline_codecarbon/emissions.csv", ("codecarbon", None, False)),
    ],
)
def test_files_named_after_the_label(relative, expected):
    kind = classify("L_I_task4_1", relative)
    assert (kind.kind, kind.run, kind.unprocessed) == expected


@pytest.mark.parametrize(
    "relative",
    [
        "L_I_task4_2.meta.yaml",
        "L_I_task4_1.output.tsv",
        "notes.txt",
        "L_I_task4_1_run1.output/a.csv",
        "L_I_task4_1_run1.output/sub/a.tsv",
    ],
)
def test_other_names_are_not_the_package_s(relative):
    assert classify("L_I_task4_1", relative) is None
