"""The metadata check against the year's template (sed.dcase.template): one test per rule."""

from __future__ import annotations

import copy

import pytest

from sed.dcase.template import check_metadata


def _meta(year: int = 2024) -> dict:
    results = (
        {"devtest": {"desed": {"PSDS1": 0.41}, "maestro": {"mPAUC": 0.7}}}
        if year == 2024
        else {"development_dataset": {"psds1": 0.41, "psds2": 0.6}}
    )
    energy = {"training": 1.2, "devtest_inference": 0.02}
    if year == 2023:
        energy["evaluation_inference"] = 0.03
    return {
        "submission": {
            "label": "Doe_UNI_task4_1",
            "name": "CRNN mean teacher",
            "abbreviation": "CRNN-MT",
            "authors": [
                {
                    "lastname": "Doe",
                    "firstname": "Jane",
                    "email": "j@uni.edu",
                    "corresponding": True,
                    "affiliation": {"abbreviation": "UNI", "institute": "Uni", "location": "Paris, France"},
                },
                {
                    "lastname": "Roe",
                    "firstname": "Rick",
                    "email": "r@uni.edu",
                    "affiliation": {"abbreviation": "UNI", "institute": "Uni", "location": "Paris, France"},
                },
            ],
        },
        "system": {
            "description": {
                "input_sampling_rate": 16.0,
                "acoustic_features": "log-mel energies",
                "data_augmentation": "mixup",
                "machine_learning_method": "CRNN",
                "ensemble_method_subsystem_count": None,
                "pretrained_models": None,
            },
            "complexity": {"total_parameters": 1_112_420, "macs": 930_901_932, "energy_consumption": energy},
            "external_datasets": [],
            "source_code": None,
        },
        "results": results,
    }


@pytest.mark.parametrize("year", [2023, 2024])
def test_a_complete_file_passes(year):
    assert check_metadata(_meta(year), year, "Doe_UNI_task4_1") == []


def test_required_keys():
    meta = _meta()
    del meta["system"]["description"]["input_sampling_rate"]
    del meta["results"]["devtest"]["maestro"]
    assert check_metadata(meta, 2024) == [
        "system.description.input_sampling_rate: missing (required; source: T4, issue (kHz))",
        "results.devtest.maestro: missing (required; source: T4)",
    ]


def test_keys_outside_the_template():
    meta = _meta()
    meta["system"]["complexity"]["macs_full"] = 1
    assert check_metadata(meta, 2024) == ["system.complexity.macs_full: not a key of the template"]


def test_each_year_has_its_results():
    assert "results.devtest: not a key of the template" in check_metadata(_meta(2024), 2023)
    assert "results.devtest: missing (required; source: T4)" in check_metadata(_meta(2023), 2024)
    # 2023 asks for the evaluation set's inference energy too
    meta = _meta(2023)
    del meta["system"]["complexity"]["energy_consumption"]["evaluation_inference"]
    assert check_metadata(meta, 2023)[0].startswith(
        "system.complexity.energy_consumption.evaluation_inference: missing"
    )


def test_kinds():
    meta = _meta()
    meta["system"]["complexity"]["total_parameters"] = 1.1e6
    meta["results"]["devtest"]["desed"]["PSDS1"] = 1  # DCASE's validator wants a float
    meta["system"]["complexity"]["energy_consumption"]["training"] = None  # mandatory: a number
    problems = check_metadata(meta, 2024)
    assert [p.split(":")[0] for p in problems] == [
        "system.complexity.total_parameters",
        "system.complexity.energy_consumption.training",
        "results.devtest.desed.PSDS1",
    ]


def test_todo_values():
    meta = _meta()
    meta["submission"]["name"] = "TODO"
    meta["submission"]["authors"][0]["affiliation"]["location"] = "TODO: city, country"
    assert check_metadata(meta, 2024) == [
        "submission.name: still TODO, fill it in",
        "submission.authors[0].affiliation.location: still TODO, fill it in",
    ]


@pytest.mark.parametrize("flags, count", [((False, False), 0), ((True, True), 2)])
def test_exactly_one_corresponding_author(flags, count):
    meta = _meta()
    for author, flag in zip(meta["submission"]["authors"], flags):
        author["corresponding"] = flag
    assert check_metadata(meta, 2024) == [
        f"submission.authors: {count} authors marked corresponding: true, exactly one must be"
    ]


def test_abbreviation_of_at_most_ten_characters():
    meta = _meta()
    meta["submission"]["abbreviation"] = "CRNN-MT-long"
    assert check_metadata(meta, 2024) == ["submission.abbreviation: 'CRNN-MT-long' is longer than 10 characters"]


def test_the_label():
    meta = _meta()
    assert check_metadata(meta, 2024, "Doe_UNI_task4_2") == [
        "submission.label: 'Doe_UNI_task4_1' differs from the label of its folder and files ('Doe_UNI_task4_2')"
    ]
    meta["submission"]["label"] = "Doe_task4_1"
    assert "four parts" in check_metadata(meta, 2024)[0]
    meta["submission"]["label"] = "Lastname_INST_task4_1"
    assert "template's example" in check_metadata(meta, 2024)[0]


def test_no_baseline_in_the_names():
    meta = _meta()
    meta["submission"]["name"] = "Our baseline"
    assert check_metadata(meta, 2024) == ["submission.name: must not contain 'baseline' (DCASE's validator refuses it)"]


def test_not_submittable_mark():
    meta = copy.deepcopy(_meta())
    meta["not_submittable"] = "outputs of the development test set"
    assert check_metadata(meta, 2024) == ["not_submittable: outputs of the development test set"]
