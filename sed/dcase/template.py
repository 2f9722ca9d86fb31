"""The DCASE Task 4 metadata template of 2023 and 2024, as key specifications, and the check of a metadata file.

The organisers' template text itself is not in any public source this project could read (the task pages point to
an example package); the keys below are assembled from the sources that are, each field naming its source:

* ``T1``: the DCASE Task 1 submission validator, toni-heittola/dcase2024_task1_submission_validator ``main.py``
  (the general DCASE layout: ``submission`` with label, name, abbreviation, authors with lastname, firstname,
  email, affiliation; one corresponding author; abbreviation of at most 10 characters; ``system`` with
  description, complexity, external_datasets, source_code; ``results.development_dataset``).
* ``T4``: the DCASE 2024 Task 4 submission validator (``validate_submissions.py``): authors need a first and a last
  name, a corresponding author; ``input_sampling_rate`` a number; ``acoustic_features`` a string or a list;
  ``total_parameters`` an integer; ``source_code`` null when not shared; ``results.devtest.desed.PSDS1`` and
  ``results.devtest.maestro.mPAUC`` floats; no "baseline" in label, name or abbreviation.
* ``T4-2020``: the 2020 Task 4 validator (turpaultn/dcase20_task4 ``validate_submissions.py``):
  ``ensemble_method_subsystem_count`` a number or null.
* ``R23``, ``R24``: DCASE-REPO/DESED_task ``recipes/dcase2023_task4_baseline/README.md`` and
  ``recipes/dcase2024_task4_baseline/README.md``: energy of training, dev-test inference and (2023) evaluation
  inference in kWh; the baseline's reference energy on the same hardware (2023: dev-test and evaluation inference;
  2024: 10 training epochs and dev-test inference); MACs for 10 s of audio counted as THOP counts them.
* ``issue``: issue 26's list of the template's keys (``system.description`` with input_sampling_rate,
  acoustic_features, data_augmentation, machine_learning_method, ensemble_method_subsystem_count,
  pretrained_models; ``system.complexity`` with total_parameters, MACs and energy; ``system.source_code``;
  ``results.development_dataset``).
* ``sed``: fields this project's package carried before (kept, optional).

Check a package with your year's template text when the organisers publish it: it takes precedence.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

YEARS = (2023, 2024)
DEFAULT_YEAR = 2024
TODO = "TODO"


class Field(NamedTuple):
    """One key: the YAML kinds it may hold (``str int float number bool list map null``), whether it must be
    there, where the rule comes from, and for ``map`` its keys (``None``: any key) or for ``list`` its items' keys."""

    kinds: tuple[str, ...]
    required: bool
    source: str
    keys: Optional[dict[str, "Field"]] = None
    values: Optional["Field"] = None  # a map with free keys (class names): the spec of each value


def _f(
    kinds: str, required: bool, source: str, keys: Optional[dict[str, Field]] = None, values: Optional[Field] = None
) -> Field:
    return Field(tuple(kinds.split("|")), required, source, keys, values)


_AUTHOR = {
    "lastname": _f("str", True, "T1, T4"),
    "firstname": _f("str", True, "T1, T4"),
    "email": _f("str", True, "T1"),
    "corresponding": _f("bool", False, "T1, T4"),
    "affiliation": _f(
        "map",
        True,
        "T1",
        {
            "abbreviation": _f("str", True, "T1 (label's institute)"),
            "institute": _f("str", True, "T1"),
            "department": _f("str|null", False, "T1"),
            "location": _f("str", True, "T1"),
        },
    ),
}

_SUBMISSION = _f(
    "map",
    True,
    "T1",
    {
        "label": _f("str", True, "T1, T4"),
        "name": _f("str", True, "T1, T4"),
        "abbreviation": _f("str", True, "T1 (at most 10 characters), T4"),
        "authors": _f("list", True, "T1, T4", _AUTHOR),
    },
)

_DESCRIPTION = _f(
    "map",
    True,
    "T1, issue",
    {
        "input_channels": _f("str", False, "sed"),
        "input_sampling_rate": _f("number", True, "T4, issue (kHz)"),
        "acoustic_features": _f("str|list", True, "T4, issue"),
        "data_augmentation": _f("str|list|null", True, "issue"),
        "embeddings": _f("str|list|null", False, "T1"),
        "machine_learning_method": _f("str|list", True, "T1, issue"),
        "ensemble_method_subsystem_count": _f("int|null", True, "T4-2020, issue"),
        "decision_making": _f("str|null", False, "T1"),
        "machine_learning_semi_supervised": _f("str|null", False, "sed"),
        "segmentation_method": _f("str|null", False, "sed"),
        "post-processing": _f("str|null", False, "sed"),
        "pretrained_models": _f("str|list|null", True, "issue"),
    },
)

_EXTERNAL = _f(
    "list|null",
    False,
    "T1, issue",
    {
        "name": _f("str", True, "T1"),
        "url": _f("str", True, "T1"),
        "total_audio_length": _f("number|str|null", False, "T1"),
    },
)

_NUM = "number"
_ENERGY = {
    2023: {
        "training": _f(_NUM, True, "R23 (whole system training, kWh)"),
        "devtest_inference": _f(_NUM, True, "R23 (dev-test inference)"),
        "evaluation_inference": _f(_NUM, True, "R23 (evaluation set inference)"),
        "baseline_devtest_inference": _f("number|null", False, "R23 (baseline on the same hardware)"),
        "baseline_evaluation_inference": _f("number|null", False, "R23 (baseline on the same hardware)"),
    },
    2024: {
        "training": _f(_NUM, True, "R24 (whole system training, kWh)"),
        "devtest_inference": _f(_NUM, True, "R24 (dev-test inference)"),
        "evaluation_inference": _f("number|null", False, "R23 (asked in 2023; measured anyway)"),
        "baseline_training": _f("number|null", False, "R24 (baseline, 10 epochs, same hardware)"),
        "baseline_devtest_inference": _f("number|null", False, "R24 (baseline dev-test inference, same hardware)"),
    },
}

_RESULTS = {
    2023: _f(
        "map",
        True,
        "T1, issue",
        {
            "development_dataset": _f(
                "map",
                True,
                "T1, issue",
                {
                    "psds1": _f(_NUM, True, "R23 (PSDS scenario 1)"),
                    "psds2": _f(_NUM, True, "R23 (PSDS scenario 2)"),
                    "event_f1_macro": _f("number|null", False, "R23 (collar-based F1)"),
                    "intersection_f1_macro": _f("number|null", False, "R23 (intersection-based F1)"),
                    "segment_f1_macro": _f("number|null", False, "sed"),
                    "weak_f1": _f("number|null", False, "sed"),
                    "class_wise_event_f1": _f("map|null", False, "sed", values=_f("number|null", False, "sed")),
                },
            ),
        },
    ),
    2024: _f(
        "map",
        True,
        "T4",
        {
            "devtest": _f(
                "map",
                True,
                "T4",
                {
                    "desed": _f(
                        "map",
                        True,
                        "T4",
                        {
                            "PSDS1": _f("float", True, "T4 (float)"),
                            "PSDS2": _f("float|null", False, "sed"),
                            "intersection_f1_macro": _f("float|null", False, "sed"),
                            "event_f1_macro": _f("float|null", False, "sed"),
                        },
                    ),
                    "maestro": _f("map", True, "T4", {"mPAUC": _f("float", True, "T4 (float)")}),
                },
            ),
        },
    ),
}


def template(year: int) -> Field:
    """The metadata template of ``year`` (2023 or 2024) as a :class:`Field` tree."""
    if year not in YEARS:
        raise ValueError(f"--year must be one of {YEARS}, got {year}")
    return _f(
        "map",
        True,
        "T1",
        {
            "submission": _SUBMISSION,
            "system": _f(
                "map",
                True,
                "T1",
                {
                    "description": _DESCRIPTION,
                    "complexity": _f(
                        "map",
                        True,
                        "issue",
                        {
                            "total_parameters": _f("int", True, "T4, issue"),
                            "macs": _f("int", True, "R23, R24 (MACs for 10 s of audio, THOP), issue"),
                            "energy_consumption": _f("map", True, "issue, R23, R24", dict(_ENERGY[year])),
                        },
                    ),
                    "external_datasets": _EXTERNAL,
                    "source_code": _f("str|null", True, "T1, T4, issue"),
                },
            ),
            "results": _RESULTS[year],
            # This project's mark on a package that must not be submitted (dev-test outputs).
            "not_submittable": _f("str", False, "sed"),
        },
    )


def _kind_ok(value: Any, kinds: tuple[str, ...]) -> bool:
    checks = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, float),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "list": lambda v: isinstance(v, list),
        "map": lambda v: isinstance(v, dict),
        "null": lambda v: v is None,
    }
    return any(checks[k](value) for k in kinds)


def _is_todo(value: Any) -> bool:
    return isinstance(value, str) and value.strip().upper().startswith(TODO)


def check_fields(value: Any, spec: Field, path: str = "") -> list[str]:
    """Every way ``value`` departs from ``spec``: a missing required key, a key the template does not have, a value
    of the wrong kind, a value still ``TODO``. One line each, naming the dotted key."""
    name = path or "(top level)"
    if _is_todo(value):
        return [f"{name}: still TODO, fill it in"]
    if not _kind_ok(value, spec.kinds):
        return [f"{name}: expected {' or '.join(spec.kinds)}, got {type(value).__name__} {value!r}"[:300]]
    problems: list[str] = []
    if isinstance(value, dict) and (spec.keys is not None or spec.values is not None):
        for key, sub in (spec.keys or {}).items():
            if key not in value:
                if sub.required:
                    problems.append(f"{path + '.' if path else ''}{key}: missing (required; source: {sub.source})")
            else:
                problems += check_fields(value[key], sub, f"{path + '.' if path else ''}{key}")
        if spec.keys is not None:
            for key in value:
                if key not in spec.keys:
                    problems.append(f"{path + '.' if path else ''}{key}: not a key of the template")
        else:
            for key, item in value.items():
                problems += check_fields(item, spec.values, f"{path}.{key}")
    if isinstance(value, list) and spec.keys is not None:
        for i, item in enumerate(value):
            problems += check_fields(item, _f("map", True, spec.source, spec.keys), f"{path}[{i}]")
    return problems


def check_metadata(meta: Any, year: int, label: Optional[str] = None) -> list[str]:
    """:func:`check_fields` against the year's template, plus the rules DCASE's validators add: one corresponding
    author (T1), an abbreviation of at most 10 characters (T1), the label of the file (``label``), no "baseline" in
    label, name or abbreviation and not the template's own label (T4)."""
    from sed.dcase.layout import EXAMPLE_LABELS, label_problem

    if not isinstance(meta, dict):
        return [f"the metadata is not a YAML mapping (got {type(meta).__name__})"]
    problems = check_fields(meta, template(year))
    if "not_submittable" in meta:
        problems.insert(0, f"not_submittable: {meta['not_submittable']}")
    submission = meta.get("submission") if isinstance(meta.get("submission"), dict) else {}
    got = submission.get("label")
    if isinstance(got, str) and not _is_todo(got):
        problem = label_problem(got)
        if problem:
            problems.append(f"submission.label: {problem}")
        elif got in EXAMPLE_LABELS:
            problems.append(
                f"submission.label: {got!r} is the template's example; use your own last name and institute"
            )
        if label is not None and got != label:
            problems.append(f"submission.label: {got!r} differs from the label of its folder and files ({label!r})")
    for key in ("label", "name", "abbreviation"):
        text = submission.get(key)
        if isinstance(text, str) and "baseline" in text.lower():
            problems.append(f"submission.{key}: must not contain 'baseline' (DCASE's validator refuses it)")
    abbreviation = submission.get("abbreviation")
    if isinstance(abbreviation, str) and len(abbreviation) > 10:
        problems.append(f"submission.abbreviation: {abbreviation!r} is longer than 10 characters")
    authors = submission.get("authors")
    if isinstance(authors, list):
        corresponding = sum(1 for a in authors if isinstance(a, dict) and a.get("corresponding") is True)
        if corresponding != 1:
            problems.append(
                f"submission.authors: {corresponding} authors marked corresponding: true, exactly one must be"
            )
    return problems
