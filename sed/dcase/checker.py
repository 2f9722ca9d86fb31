"""``python -m sed.submit --check PACKAGE.zip``: a submission package checked as DCASE's validators check one.

What is checked (the rule's source in brackets; see :mod:`sed.dcase.layout` and :mod:`sed.dcase.template`):

* the zip opens and its members are intact; every member lies under ``task4/`` (no absolute or ``..`` paths)
  [Task 1 validator: ``testzip``, the task folder];
* a technical report, a PDF, beside the system folders [Task 4 2024 validator];
* 1 to 4 system folders, each named by a valid label, all of one participant [DCASE submission instructions];
* every file of a system folder named after its label, in the package's layout [Task 1 validator: "possibly
  wrongly formatted filename"];
* ``<label>.meta.yaml``: YAML that DCASE's validator reads the same way (it strips ``#...`` from every line), every
  key against the year's template, its kinds, nothing left ``TODO``, one corresponding author, the label the same
  as the folder's [Task 1 and Task 4 validators];
* the outputs of three runs, post-processed (required) and unprocessed (a warning when absent), every score file
  read by sed_scores_eval, the same clips and classes in every run [Task 4 2024 validator];
* codecarbon's CSV files for each run (2024: required) [DESED_task 2024 README].

Errors make the package unfit to submit; warnings name what the rules ask for but DCASE's validator lets pass.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, Optional

import yaml

from sed.dcase.layout import MAX_SYSTEMS, RUNS, TASK_DIR, classify, label_problem, parse_label
from sed.dcase.template import DEFAULT_YEAR, check_metadata


class Finding(NamedTuple):
    """One problem: ``level`` is ``error`` or ``warning``; ``where`` the path in the package (or ``package``)."""

    level: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper():7s} {self.where}: {self.message}"


def _dcase_yaml(text: str) -> Any:
    """The YAML as DCASE's Task 4 validator reads it: everything after a ``#`` on a line dropped."""
    return yaml.safe_load("\n".join(line.split("#")[0].rstrip() for line in text.splitlines()))


def _check_meta(text: str, where: str, label: str, year: int) -> list[Finding]:
    try:
        meta = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return [Finding("error", where, f"not valid YAML: {' '.join(str(err).split())}")]
    found = [Finding("error", where, p) for p in check_metadata(meta, year, label)]
    try:
        same = _dcase_yaml(text) == meta
    except yaml.YAMLError:
        same = False
    if not same:
        found.append(
            Finding(
                "error",
                where,
                "DCASE's validator drops everything after '#' on a line: a value "
                "holding '#' (quote it out or remove it) would be read otherwise",
            )
        )
    return found


def _check_scores(folder: Path, where: str) -> tuple[list[Finding], Optional[tuple[frozenset, tuple]]]:
    """Every file of ``folder`` read by sed_scores_eval; returns the findings and ``(clips, classes)``."""
    from sed_scores_eval.base_modules.io import read_sed_scores, validate_score_dataframe

    files = sorted(folder.iterdir())
    if not files:
        return [Finding("error", where, "no score files")], None
    found: list[Finding] = []
    classes: set[tuple] = set()
    for path in files:
        try:
            scores = read_sed_scores(path)
            _, event_classes = validate_score_dataframe(scores)
            classes.add(tuple(event_classes))
        except Exception as err:  # noqa: BLE001 - any failure to read is the finding
            found.append(Finding("error", f"{where}/{path.name}", f"not readable by sed_scores_eval: {err}"))
    if len(classes) > 1:
        found.append(Finding("error", where, f"score files with different classes: {sorted(classes)[:2]}"))
    return found, (frozenset(p.name for p in files), next(iter(classes)) if len(classes) == 1 else ())


def _check_system(root: Path, label: str, names: list[str], year: int, eval_clips: Optional[int]) -> list[Finding]:
    """One ``task4/<label>/`` folder (``names``: its files, relative to it)."""
    where = f"{TASK_DIR}/{label}"
    found: list[Finding] = []
    runs: dict[tuple[int, bool], bool] = {}
    codecarbon: set[Optional[int]] = set()
    has_meta = False
    for name in names:
        kind = classify(label, name)
        if kind is None:
            found.append(
                Finding(
                    "error",
                    f"{where}/{name}",
                    f"not a file of the package: names start with {label}"
                    " (<label>.meta.yaml, <label>_run<i>[_unprocessed].output/<clip>.tsv, "
                    "<label>_run<i>.codecarbon/*.csv)",
                )
            )
        elif kind.kind == "meta":
            has_meta = True
        elif kind.kind == "output":
            runs[(kind.run, kind.unprocessed)] = True
        else:
            codecarbon.add(kind.run)
    if has_meta:
        text = (root / where / f"{label}.meta.yaml").read_text(encoding="utf-8", errors="replace")
        found += _check_meta(text, f"{where}/{label}.meta.yaml", label, year)
    else:
        found.append(Finding("error", where, f"no {label}.meta.yaml"))

    seen: dict[str, tuple[frozenset, tuple]] = {}
    for run in range(1, RUNS + 1):
        for unprocessed in (False, True):
            folder = f"{label}_run{run}{'_unprocessed' if unprocessed else ''}.output"
            if (run, unprocessed) not in runs:
                level = "warning" if unprocessed else "error"
                what = "unprocessed scores" if unprocessed else "post-processed scores"
                found.append(
                    Finding(
                        level,
                        where,
                        f"no {folder}/ ({what} of run {run}; DCASE asks for three "
                        "independent trainings, post-processed and unprocessed)",
                    )
                )
                continue
            problems, summary = _check_scores(root / where / folder, f"{where}/{folder}")
            found += problems
            if summary is not None:
                seen[folder] = summary
    extra = sorted({r for r, _ in runs if r > RUNS})
    if extra:
        found.append(Finding("warning", where, f"runs {extra} beyond {RUNS}: DCASE's validator reads runs 1-{RUNS}"))
    if seen:
        (first, (clips, classes)), *others = seen.items()
        for folder, (other_clips, other_classes) in others:
            if other_clips != clips:
                found.append(
                    Finding(
                        "error",
                        f"{where}/{folder}",
                        f"holds {len(other_clips)} clips, {first} "
                        f"{len(clips)}; {len(other_clips ^ clips)} differ: every run covers the same clips",
                    )
                )
            if other_classes != classes:
                found.append(
                    Finding("error", f"{where}/{folder}", f"classes {list(other_classes)} differ from {first}'s")
                )
        if eval_clips is not None and len(clips) != eval_clips:
            found.append(
                Finding("error", f"{where}/{first}", f"{len(clips)} score files, the evaluation set has {eval_clips}")
            )
    missing_cc = [r for r in range(1, RUNS + 1) if (r, False) in runs and r not in codecarbon]
    if missing_cc:
        found.append(
            Finding(
                "error" if year >= 2024 else "warning",
                where,
                f"no codecarbon CSV for run(s) {missing_cc} (<label>_run<i>.codecarbon/*.csv; "
                "2024 asks for the whole codecarbon files)",
            )
        )
    for run in sorted(codecarbon, key=lambda r: -1 if r is None else r):
        folder = f"{label}" + (".baseline_codecarbon" if run is None else f"_run{run}.codecarbon")
        for path in sorted((root / where / folder).glob("*.csv")):
            header = path.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
            if "energy_consumed" not in header.split(","):
                found.append(
                    Finding(
                        "error",
                        f"{where}/{folder}/{path.name}",
                        "not a codecarbon emissions CSV (no energy_consumed column)",
                    )
                )
    return found


def check_package(path: str | Path, year: int = DEFAULT_YEAR, eval_clips: Optional[int] = None) -> list[Finding]:
    """Every :class:`Finding` of the package at ``path`` (an empty list: nothing to fix). ``eval_clips``: the
    number of evaluation clips every run must cover (DESED 2024: 2200), when known."""
    path = Path(path)
    if not path.is_file():
        return [Finding("error", str(path), "no such file")]
    if not zipfile.is_zipfile(path):
        return [Finding("error", str(path), "not a zip archive (DCASE takes one zip package)")]
    found: list[Finding] = []
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory(prefix="sed-check-") as tmp:
        bad = archive.testzip()
        if bad:
            found.append(Finding("error", bad, "corrupt member (CRC mismatch)"))
        members = [i for i in archive.infolist() if not i.is_dir()]
        systems: dict[str, list[str]] = defaultdict(list)
        reports = []
        for info in members:
            parts = PurePosixPath(info.filename).parts
            if info.filename.startswith("/") or ".." in parts or parts[0] != TASK_DIR:
                found.append(
                    Finding("error", info.filename, f"outside {TASK_DIR}/ (every file goes under {TASK_DIR}/)")
                )
                continue
            if len(parts) == 2:
                if parts[1].lower().endswith(".pdf"):
                    reports.append(info)
                else:
                    found.append(
                        Finding(
                            "error",
                            info.filename,
                            f"unexpected file in {TASK_DIR}/ (only the report PDF and the system folders)",
                        )
                    )
                continue
            systems[parts[1]].append("/".join(parts[2:]))
        archive.extractall(
            tmp,
            members=[
                m
                for m in members
                if PurePosixPath(m.filename).parts[:1] == (TASK_DIR,) and ".." not in PurePosixPath(m.filename).parts
            ],
        )
        root = Path(tmp)
        if not reports:
            found.append(Finding("error", f"{TASK_DIR}/", "no technical report (a .pdf beside the system folders)"))
        for info in reports:
            if not (root / info.filename).read_bytes()[:5] == b"%PDF-":
                found.append(Finding("error", info.filename, "not a PDF file (no %PDF- header)"))
        if not systems:
            found.append(Finding("error", f"{TASK_DIR}/", "no system folder task4/<label>/"))
        if len(systems) > MAX_SYSTEMS:
            found.append(Finding("error", f"{TASK_DIR}/", f"{len(systems)} systems, at most {MAX_SYSTEMS} per task"))
        participants = set()
        for label, names in sorted(systems.items()):
            problem = label_problem(label)
            if problem:
                found.append(Finding("error", f"{TASK_DIR}/{label}", problem))
                continue
            participants.add(parse_label(label).participant)
            found += _check_system(root, label, sorted(names), year, eval_clips)
        if len(participants) > 1:
            found.append(
                Finding(
                    "error",
                    f"{TASK_DIR}/",
                    f"systems of several participants {sorted(participants)}: "
                    "one package holds one participant's systems",
                )
            )
    return found


def report(findings: list[Finding], path: str | Path) -> str:
    """The findings as the lines ``--check`` prints, with a last line saying whether the package can be submitted."""
    errors = sum(f.level == "error" for f in findings)
    warnings = len(findings) - errors
    lines = [str(f) for f in sorted(findings, key=lambda f: (f.level != "error", f.where))]
    verdict = f"{path}: ready to submit" if not errors else f"{path}: NOT ready to submit"
    lines.append(f"{verdict} ({errors} error(s), {warnings} warning(s))")
    return "\n".join(lines)
