"""The layout of a DCASE Task 4 submission package: labels, paths and file names.

One zip holds every system of a participant (up to 4) and the technical report::

    <Lastname>_<INST>_task4.zip
      task4/<Lastname>_<INST>_task4.technical_report.pdf
      task4/<label>/<label>.meta.yaml
      task4/<label>/<label>_run<i>.output/<clip>.tsv               post-processed scores, run i = 1, 2, 3
      task4/<label>/<label>_run<i>_unprocessed.output/<clip>.tsv   the model's scores before post-processing
      task4/<label>/<label>_run<i>.codecarbon/*.csv                codecarbon's records of run i
      task4/<label>/<label>.baseline_codecarbon/*.csv              the baseline reference on the same hardware

Sources:

* label ``[Lastname]_[INST]_task4_[1-4]``, four ``_``-separated parts, the index 1 to 4, at most 4 systems per
  task, one zip with the outputs, the meta files and the technical report: DCASE's submission instructions
  (dcase.community/challenge2024/submission) and the Task 1 submission validator
  (toni-heittola/dcase2024_task1_submission_validator, ``main.py``: ``task1/<label>/<label>.output...``,
  ``<label>.meta.yaml``, the label's third part the task, its index 1-4).
* the third part ``task4`` (2024) or ``task4a`` (2023 subtask A): issue 26's reading of the two years' labels.
* ``<label>_run<i>.output/`` and ``<label>_run<i>_unprocessed.output/``, folders of one sed_scores_eval table per
  evaluation clip for three trainings, the report as a PDF beside the system folders: the DCASE 2024 Task 4
  submission validator (``validate_submissions.py``: ``<label>_run{1,2,3}.output``, ``..._unprocessed.output``,
  ``*.pdf`` next to the system folders).
* the codecarbon CSV files in the package: DESED_task ``recipes/dcase2024_task4_baseline/README.md`` ("submit the
  whole .csv files"); their names here are this project's (the README points to an example package not public).
* the report's file name is this project's convention; the validators only look for a ``.pdf``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

TASK_DIR = "task4"
MAX_SYSTEMS = 4
RUNS = 3  # three independent trainings (DESED_task 2023/2024 READMEs, "Multi-runs evaluation")
TASK_TAGS = ("task4", "task4a")
EXAMPLE_LABELS = ("Lastname_INST_task4_1", "Cornell_CMU_task4_1")  # templates' own labels: must be changed
_PART = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")


class Label(NamedTuple):
    """A parsed submission label ``<lastname>_<institute>_<task>_<index>``."""

    lastname: str
    institute: str
    task: str
    index: int

    def __str__(self) -> str:
        return f"{self.lastname}_{self.institute}_{self.task}_{self.index}"

    @property
    def participant(self) -> str:
        """``<Lastname>_<INST>_task4``: the name of the package and of the report."""
        return f"{self.lastname}_{self.institute}_{self.task.rstrip('ab')}"


def label_problem(label: str) -> str | None:
    """Why ``label`` is not a Task 4 submission label (``None`` when it is one)."""
    parts = str(label).split("_")
    if len(parts) != 4:
        return (
            f"{label!r} has {len(parts)} '_'-separated part(s); a label is [Lastname]_[INST]_task4_[1-4], "
            "four parts (no '_' inside the name or the institute), e.g. Doe_UNI_task4_1"
        )
    lastname, institute, task, index = parts
    for what, part in (("last name", lastname), ("institute abbreviation", institute)):
        if not _PART.match(part):
            return f"{label!r}: the {what} {part!r} must start with a letter and hold letters, digits or '-'"
    if task not in TASK_TAGS:
        return f"{label!r}: the third part must be one of {', '.join(TASK_TAGS)}, got {task!r}"
    if index not in ("1", "2", "3", "4"):
        return f"{label!r}: the submission index (last part) must be 1 to 4, got {index!r}"
    return None


def parse_label(label: str) -> Label:
    """``label`` parsed; ``ValueError`` with the reason when it is not a Task 4 label."""
    problem = label_problem(label)
    if problem:
        raise ValueError(problem)
    lastname, institute, task, index = str(label).split("_")
    return Label(lastname, institute, task, int(index))


def system_dir(label: str) -> str:
    return f"{TASK_DIR}/{label}"


def meta_path(label: str) -> str:
    return f"{system_dir(label)}/{label}.meta.yaml"


def output_dir(label: str, run: int, unprocessed: bool = False) -> str:
    """Folder of run ``run``'s score tables (1-based), post-processed or not."""
    return f"{system_dir(label)}/{label}_run{run}{'_unprocessed' if unprocessed else ''}.output"


def codecarbon_dir(label: str, run: int | None) -> str:
    """Folder of codecarbon's CSV files of run ``run`` (``None``: the baseline reference)."""
    return f"{system_dir(label)}/{label}" + (".baseline_codecarbon" if run is None else f"_run{run}.codecarbon")


def report_path(participant: str) -> str:
    return f"{TASK_DIR}/{participant}.technical_report.pdf"


def zip_name(participant: str) -> str:
    return f"{participant}.zip"


_SYSTEM_FILE = re.compile(
    r"^(?P<label>[^/]+)(?:_run(?P<run>\d+)(?P<unprocessed>_unprocessed)?\.output/[^/]+\.tsv"
    r"|_run(?P<cc_run>\d+)\.codecarbon/[^/]+\.csv|\.baseline_codecarbon/[^/]+\.csv|\.meta\.yaml)$"
)


class SystemFile(NamedTuple):
    """What a path inside ``task4/<label>/`` is: ``kind`` in ``meta``, ``output``, ``codecarbon``."""

    label: str
    kind: str
    run: int | None
    unprocessed: bool


def classify(folder_label: str, relative: str) -> SystemFile | None:
    """``relative`` (a path under ``task4/<folder_label>/``) as a :class:`SystemFile`, or ``None`` when its name
    is not one of the package's (or not named after ``folder_label``)."""
    m = _SYSTEM_FILE.match(relative)
    if m is None or m.group("label") != folder_label:
        return None
    if relative.endswith(".meta.yaml"):
        return SystemFile(folder_label, "meta", None, False)
    if m.group("run") is not None:
        return SystemFile(folder_label, "output", int(m.group("run")), bool(m.group("unprocessed")))
    return SystemFile(folder_label, "codecarbon", int(m.group("cc_run")) if m.group("cc_run") else None, False)
