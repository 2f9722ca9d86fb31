"""A DCASE Task 4 submission package from run directories, and its check.

Command line::

    python -m sed.submit RUN [RUN ...] --label Doe_UNI_task4_1 --eval-audio DIR --report REPORT.pdf -o OUT
    python -m sed.submit --system Doe_UNI_task4_1 RUN1 RUN2 RUN3 --system Doe_UNI_task4_2 RUN ... --eval-audio DIR ...
    python -m sed.submit --check OUT/Doe_UNI_task4.zip

A system is one to several runs (DCASE asks for three independent trainings); a package holds up to four systems
of one participant. ``OUT`` (a new or empty folder, or one this tool wrote) receives ``<Lastname>_<INST>_task4.zip``
and its unpacked ``task4/`` tree, laid out as :mod:`sed.dcase.layout` says: per run the post-processed and the
unprocessed scores, one sed_scores_eval table per evaluation clip, and codecarbon's CSV files; per system
``<label>.meta.yaml`` (:mod:`sed.dcase.metadata`); the technical report.

The outputs are those of the **evaluation set** (``--eval-audio DIR``): every run's tested checkpoint (the one its
test results are of) runs through :class:`sed.inference.detector.Detector` on every file, any length, and the energy of that
inference is measured with codecarbon (on the GPU used only). ``--dev-test`` packages the runs' own dev-test outputs
instead, for a dry run: that package is marked ``not_submittable`` and the log says so.

Every package built is checked (:mod:`sed.dcase.checker`) and what is left to do is printed: fields still ``TODO``
(give them with ``--info FILE.yaml``), a missing report, fewer than three runs, the baseline energy
(``--baseline-energy``, measured by ``python -m sed.dcase.baseline_energy``).

``OUT`` is built beside itself and swapped in at the end, so it is never half-written; an existing ``OUT`` that
this tool did not write (no ``.sed-submission.json`` marker) is refused.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import pandas as pd
import yaml

from sed.dcase.checker import Finding, check_package
from sed.dcase.layout import (
    MAX_SYSTEMS,
    TASK_DIR,
    codecarbon_dir,
    meta_path,
    output_dir,
    parse_label,
    report_path,
    zip_name,
)
from sed.dcase.metadata import RunInfo, metadata_text
from sed.dcase.template import DEFAULT_YEAR, YEARS
from sed.utils.io import swap_in_dir

log = logging.getLogger(__name__)

MARKER = ".sed-submission.json"
DEV_TEST_NOTE = "outputs of the development test set (--dev-test), not of the evaluation set: not for submission"


class SubmissionError(ValueError):
    """The runs or the output folder cannot make a package; the message says which file and why."""


class Built(NamedTuple):
    """A package written: its zip and what its check found (empty: ready to submit)."""

    path: Path
    findings: list[Finding]


# ---------------------------------------------------------------------- reading a run
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SubmissionError(f"{path}: not found") from None
    except ValueError as err:
        raise SubmissionError(f"{path}: not valid JSON ({err})") from None


def _run_config(run_dir: Path) -> Any:
    """The run's ``.hydra/config.yaml`` (unresolved; keys are read one by one)."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise SubmissionError(f"{path}: not found; is {run_dir} a run directory written by train.py?")
    return OmegaConf.load(path)


def _model(run_dir: Path, model: Optional[str]) -> str:
    if model is None:  # the network validation preferred (sed.run records it in status.json)
        from sed.run.rundir import read_status

        model = read_status(run_dir).get("preferred_model") or "teacher"
    if model not in ("teacher", "student"):
        raise SubmissionError(f"--model must be teacher or student, got {model!r}")
    return model


def _tested_checkpoint(run_dir: Path, metrics: dict[str, Any], cfg: Any) -> Path:
    """The checkpoint whose test results the package reports (recorded with them)."""
    recorded = (metrics.get("complexity") or {}).get("checkpoint") or (None if cfg.train else cfg.ckpt_path)
    if not recorded:
        raise SubmissionError(f"{run_dir}: the test results do not say which checkpoint was tested")
    path = Path(recorded)
    if not path.is_file():
        raise SubmissionError(f"{path}: the checkpoint {run_dir} tested is not found")
    return path


def _threshold(run_dir: Path, model: str, cfg: Any) -> float | str:
    """The threshold of the run's test F1 scores: ``tuned`` when it tuned class-wise thresholds on validation."""
    from sed.evaluation.outputs import events_file_name

    return (
        "tuned"
        if (run_dir / "test" / model / events_file_name("tuned")).is_file()
        else float(list(cfg.evaluation.thresholds)[0])
    )


def _complexity(metrics: dict[str, Any], checkpoint: Optional[Path], model: str) -> dict[str, Any]:
    """The run's complexity block with its ``per_10s`` MACs; a run written before they were counted gets them
    counted now from its tested checkpoint."""
    block = dict(metrics.get("complexity") or {})
    if "per_10s" in block or checkpoint is None:
        return block
    from sed.dcase.complexity import module_complexity
    from sed.training.module import SEDModule

    module = SEDModule.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=False)
    return {**module_complexity(module, model), "checkpoint": str(checkpoint)}


def _test_scores(run_dir: Path, model: str) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame]]:
    """The run's own dev-test scores: post-processed and raw."""
    from sed.evaluation.outputs import read_scores_dir

    out = run_dir / "test" / model
    try:
        return read_scores_dir(out / "scores_postprocessed"), read_scores_dir(out / "scores_raw")
    except (OSError, ValueError) as err:
        raise SubmissionError(f"{out}: the run's test outputs are incomplete ({err})") from None


def _eval_scores(
    eval_audio: Path,
    checkpoint: Path,
    model: str,
    device: Optional[str],
    run_dir: Path,
    codecarbon: Path,
    country: str,
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame], Optional[float]]:
    """Post-processed and raw scores of every audio file in ``eval_audio`` through ``checkpoint``, one forward
    pass each, and the kWh that inference took (codecarbon, written to ``codecarbon``; ``None`` when it cannot
    measure). Any file that cannot be processed is an error: a submission covers the whole evaluation set."""
    from sed.data.inputs import collect_inputs
    from sed.dcase.energy import gpu_ids, start_tracker
    from sed.evaluation.postprocess import audio_id, median_filter
    from sed.inference.detector import Detector, Prediction

    files = collect_inputs([eval_audio])
    tuned = run_dir / "postprocessing.json"
    detector = Detector.from_checkpoint(
        checkpoint, model=model, device=device, postprocessing=tuned if tuned.is_file() else None
    )
    tracker = None
    try:
        codecarbon.mkdir(parents=True, exist_ok=True)
        tracker = start_tracker(
            codecarbon,
            "evaluation",
            gpu_ids(detector.device),
            country,
            15.0,
            "machine",
            output_file="emissions_evaluation.csv",
        )
    except Exception as err:  # energy is reported, never a reason to fail the package
        log.warning("Evaluation inference energy not measured: %s: %s", type(err).__name__, err)
    processed: dict[str, pd.DataFrame] = {}
    raw: dict[str, pd.DataFrame] = {}
    failed = []
    try:
        for i, (name, path) in enumerate(files, start=1):
            try:
                prediction = detector.predict_file(path, postprocess=False)
            except Exception as err:  # noqa: BLE001 - reported with the file name, all together
                failed.append(f"{path}: {' '.join(str(err).split())}")
                continue
            key = audio_id(name)
            raw[key] = detector.scores(prediction)
            if detector.uses_sebbs:
                post = Prediction(prediction.probabilities, prediction.timestamps, boxes=True)
            else:
                post = Prediction(
                    median_filter(prediction.probabilities, detector.median_window), prediction.timestamps
                )
            processed[key] = detector.scores(post)
            if i % 100 == 0 or i == len(files):
                log.info("[%d/%d] evaluation files processed (%s)", i, len(files), run_dir.name)
    finally:
        kwh = None
        if tracker is not None:
            try:
                tracker.stop()
                kwh = float(tracker.final_emissions_data.energy_consumed)
            except Exception as err:  # noqa: BLE001
                log.warning("Evaluation inference energy not measured: %s: %s", type(err).__name__, err)
    if failed:
        raise SubmissionError(f"{len(failed)} evaluation file(s) could not be processed:\n  " + "\n  ".join(failed))
    return processed, raw, kwh


# ---------------------------------------------------------------------- output folder
def _check_out(out: Path) -> None:
    """Refuse an ``out`` that exists and is not empty and not ours."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SubmissionError(f"{out}: exists and is not a folder")
    entries = [p.name for p in out.iterdir()]
    if entries and MARKER not in entries:
        raise SubmissionError(
            f"{out}: folder exists and was not written by sed.submit (no {MARKER}); give a new or empty folder"
        )


def _zip(tree: Path, dest: Path) -> None:
    """``tree/task4`` as ``dest``, member paths starting with ``task4/``."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p in sorted((tree / TASK_DIR).rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(tree).as_posix())


def _load_yaml(path: Optional[str | Path], what: str) -> Optional[dict[str, Any]]:
    if path is None:
        return None
    path = Path(path)
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SubmissionError(f"{what} {path}: not found") from None
    except yaml.YAMLError as err:
        raise SubmissionError(f"{what} {path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(value, dict):
        raise SubmissionError(f"{what} {path}: expected a mapping (the metadata layout), got {type(value).__name__}")
    return value


def _baseline(path: Optional[str | Path]) -> tuple[Optional[dict[str, Any]], list[Path]]:
    """The baseline reference (``baseline_energy.json`` or its folder) and its codecarbon CSV files."""
    if path is None:
        return None, []
    from sed.dcase.baseline_energy import REFERENCE_FILE

    path = Path(path)
    path = path / REFERENCE_FILE if path.is_dir() else path
    record = _read_json(path)
    csvs = [Path(p) for p in record.get("codecarbon_csv", []) if Path(p).is_file()]
    return record, csvs


# ---------------------------------------------------------------------- building
def build_package(
    systems: Sequence[tuple[str, Sequence[str | Path]]],
    out: str | Path,
    eval_audio: Optional[str | Path] = None,
    dev_test: bool = False,
    report_pdf: Optional[str | Path] = None,
    info: Optional[str | Path] = None,
    baseline_energy: Optional[str | Path] = None,
    year: int = DEFAULT_YEAR,
    model: Optional[str] = None,
    device: Optional[str] = None,
) -> Built:
    """Write the package of ``systems`` (``[(label, [run_dir, ...]), ...]``) into ``out`` (layout in the module
    docstring) and check it. Raises :class:`SubmissionError` naming the file at fault when it cannot be made."""
    out = Path(out)
    if year not in YEARS:
        raise SubmissionError(f"--year must be one of {YEARS}, got {year}")
    if not systems:
        raise SubmissionError("no system given: RUN_DIR ... --label LABEL, or --system LABEL RUN_DIR ...")
    if len(systems) > MAX_SYSTEMS:
        raise SubmissionError(f"{len(systems)} systems: DCASE takes at most {MAX_SYSTEMS} per task and participant")
    labels = [label for label, _ in systems]
    for label in labels:
        try:
            parse_label(label)
        except ValueError as err:
            raise SubmissionError(f"--label {err}") from None
    if len(set(labels)) != len(labels):
        raise SubmissionError(f"the same label twice: {labels}")
    participants = {parse_label(label).participant for label in labels}
    if len(participants) > 1:
        raise SubmissionError(f"labels of several participants {sorted(participants)}: one package, one participant")
    participant = participants.pop()
    if (eval_audio is None) == (not dev_test):
        raise SubmissionError(
            "give --eval-audio DIR (the evaluation set: what DCASE scores) or --dev-test (the runs' "
            "development test outputs, a package not for submission), not both"
            if eval_audio
            else "give --eval-audio DIR (the evaluation set: what DCASE scores), or --dev-test to "
            "package the runs' development test outputs (not for submission)"
        )
    if eval_audio is not None and not Path(eval_audio).exists():
        raise SubmissionError(f"{eval_audio}: no such evaluation audio folder or file")
    if report_pdf is not None:
        pdf = Path(report_pdf)
        if not pdf.is_file() or pdf.read_bytes()[:5] != b"%PDF-":
            raise SubmissionError(f"--report {pdf}: not a PDF file")
    given = _load_yaml(info, "--info")
    baseline, baseline_csvs = _baseline(baseline_energy)
    for _, runs in systems:
        if not runs:
            raise SubmissionError("a system without run directories")
        for run in runs:
            if not Path(run).is_dir():
                raise SubmissionError(f"{run}: no such run directory")
    _check_out(out)

    from sed.dcase.energy import read_energy
    from sed.evaluation.outputs import write_scores_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        record_systems = {}
        for label, runs in systems:
            infos = []
            for i, run in enumerate(runs, start=1):
                run_dir = Path(run)
                network = _model(run_dir, model)
                metrics_path = run_dir / "test" / network / "metrics.json"
                if not metrics_path.is_file():
                    raise SubmissionError(
                        f"{metrics_path}: not found; the run has no test results for the {network} "
                        "(run with test=true, or evaluate a checkpoint with train=false ckpt_path=...)"
                    )
                metrics = _read_json(metrics_path)
                cfg = _run_config(run_dir)
                checkpoint = _tested_checkpoint(run_dir, metrics, cfg) if eval_audio is not None else None
                cc = tmp / codecarbon_dir(label, i)
                eval_kwh = None
                if eval_audio is not None:
                    country = str((cfg.get("energy") or {}).get("country_iso_code", "FRA"))
                    processed, raw, eval_kwh = _eval_scores(
                        Path(eval_audio), checkpoint, network, device, run_dir, cc, country
                    )
                else:
                    processed, raw = _test_scores(run_dir, network)
                write_scores_dir(processed, tmp / output_dir(label, i), owned=True)
                write_scores_dir(raw, tmp / output_dir(label, i, unprocessed=True), owned=True)
                for csv in sorted((run_dir / "codecarbon").glob("*.csv")):
                    cc.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(csv, cc / csv.name)
                infos.append(
                    RunInfo(
                        run_dir.resolve(),
                        network,
                        cfg,
                        metrics,
                        read_energy(run_dir),
                        _complexity(metrics, checkpoint or _recorded(metrics), network),
                        eval_kwh,
                        _threshold(run_dir, network, cfg),
                    )
                )
            for csv in baseline_csvs:
                (tmp / codecarbon_dir(label, None)).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(csv, tmp / codecarbon_dir(label, None) / csv.name)
            text = metadata_text(
                label, infos, year, baseline, _info_for(given, label, labels), DEV_TEST_NOTE if dev_test else None
            )
            (tmp / meta_path(label)).write_text(text, encoding="utf-8")
            record_systems[label] = [str(r.run_dir) for r in infos]
        if report_pdf is not None:
            shutil.copyfile(report_pdf, tmp / report_path(participant))
        _zip(tmp, tmp / zip_name(participant))
        record = {
            "systems": record_systems,
            "year": year,
            "outputs": "development test set (not submittable)" if dev_test else str(Path(eval_audio).resolve()),
            "report": str(report_pdf) if report_pdf else None,
            "archive": zip_name(participant),
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / MARKER).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        _check_out(out)  # again: it may have changed meanwhile
        swap_in_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    path = out / zip_name(participant)
    findings = check_package(path, year)
    log.info("Package of %d system(s) written to %s", len(systems), path)
    if dev_test:
        log.warning(
            "NOT SUBMITTABLE: %s holds the development test outputs (--dev-test); build it with "
            "--eval-audio DIR to submit",
            path,
        )
    return Built(path, findings)


def _info_for(given: Optional[dict[str, Any]], label: str, labels: list[str]) -> Optional[dict[str, Any]]:
    """The ``--info`` values of system ``label``: the file's ``{label: {...}}`` entry when it is keyed by labels
    (a top-level ``common`` entry applies to every system), else the whole file."""
    if not given:
        return None
    if not any(key in labels for key in given):
        return given
    from sed.dcase.metadata import merge

    return merge(given.get("common") or {}, given.get(label) or {})


def _recorded(metrics: dict[str, Any]) -> Optional[Path]:
    recorded = (metrics.get("complexity") or {}).get("checkpoint")
    return Path(recorded) if recorded and Path(recorded).is_file() else None


# ---------------------------------------------------------------------- command line
