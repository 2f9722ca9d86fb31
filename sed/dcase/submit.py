"""A DCASE Task 4 submission package from a finished run.

Command line::

    python -m sed.submit RUN_DIR [--eval-audio DIR] [--model teacher|student] [--label LABEL] -o OUT

``OUT`` (a new or empty folder, or one this tool wrote) receives::

    <label>/<label>.meta.yaml          system metadata: filled from the run, fields for you marked "# TODO"
    <label>/<label>.output.tsv         events: filename onset offset event_label (post-processed, thresholded)
    <label>/<label>.output_scores/     one sed_scores_eval score table per clip (post-processed scores)
    <label>.zip                        the <label>/ folder, archived (--archive tar.gz for a .tar.gz)

With ``--eval-audio`` the outputs are those of the evaluation audio, run through :class:`sed.infer.Detector` (any
length; the checkpoint the run tested, or ``--checkpoint``); without it, the run's own test outputs
(``test/<model>/``) are packaged. Scores are median-filtered as at test time and events thresholded at the first
of ``evaluation.thresholds``, as ``test/<model>/events_th<t>.tsv``.

The metadata holds the run's parameters and MACs (``complexity`` block of ``test/<model>/metrics.json``), energy
(``energy.json``), development-set PSDS1, PSDS2 and F1 (``test/<model>/metrics.json``) and the front-end and
training settings from ``.hydra/config.yaml``. Names, authors, affiliation, technical report and external data
cannot come from a run: they are marked ``# TODO``. Check the field list against the task page of your year.

``OUT`` is built beside itself and swapped in at the end, so it is never half-written; an existing ``OUT`` that
this tool did not write (no ``.sed-submission.json`` marker) is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd
import yaml

from sed.utils.io import swap_in_dir

log = logging.getLogger(__name__)

MARKER = ".sed-submission.json"
DEFAULT_LABEL = "Lastname_INST_task4_1"
ARCHIVES = ("zip", "tar.gz")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class SubmissionError(ValueError):
    """The run or the output folder cannot make a submission; the message says which file and why."""


# ---------------------------------------------------------------------- reading the run
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


def _tested_checkpoint(run_dir: Path, metrics: dict[str, Any], cfg: Any, given: Optional[str]) -> Path:
    """The checkpoint whose test results the package reports: ``--checkpoint``, else the one recorded with them."""
    if given:
        path = Path(given)
    else:
        recorded = (metrics.get("complexity") or {}).get("checkpoint") or (None if cfg.train else cfg.ckpt_path)
        if not recorded:
            raise SubmissionError(
                f"{run_dir}: the test results do not say which checkpoint was tested; pass --checkpoint"
            )
        path = Path(recorded)
    if not path.is_file():
        raise SubmissionError(f"{path}: checkpoint not found (pass --checkpoint)")
    return path


def _eval_outputs(
    eval_audio: Path, checkpoint: Path, model: str, device: Optional[str], postprocessing: Optional[Path] = None
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, float | str]:
    """Post-processed scores and thresholded events of every audio file in ``eval_audio``; any file that cannot be
    processed is an error (a submission covers the whole evaluation set). ``postprocessing``: the run's settings
    tuned on validation (default: those beside the checkpoint, if any); the threshold is then ``"tuned"``."""
    from sed.data.inputs import collect_inputs
    from sed.evaluation.postprocess import audio_id
    from sed.infer import Detector

    files = collect_inputs([eval_audio])
    detector = Detector.from_checkpoint(checkpoint, model=model, device=device, postprocessing=postprocessing)
    scores: dict[str, pd.DataFrame] = {}
    events, failed = [], []
    for i, (name, path) in enumerate(files, start=1):
        try:
            prediction = detector.predict_file(path)
        except Exception as err:  # noqa: BLE001 - reported with the file name, all together
            failed.append(f"{path}: {' '.join(str(err).split())}")
            continue
        scores[audio_id(name)] = detector.scores(prediction)
        events.append(detector.events(prediction, name))
        if i % 100 == 0 or i == len(files):
            log.info("[%d/%d] evaluation files processed", i, len(files))
    if failed:
        raise SubmissionError(f"{len(failed)} evaluation file(s) could not be processed:\n  " + "\n  ".join(failed))
    table = pd.concat(events, ignore_index=True)
    tuned = detector.postprocessing is not None and detector.postprocessing.thresholds is not None
    return scores, table, "tuned" if tuned else detector.default_threshold


def _test_outputs(run_dir: Path, model: str, cfg: Any) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, float | str]:
    """The run's own post-processed test scores and events at the thresholds tuned on validation when the run
    tuned them (``events_tuned.tsv``), else at the first evaluation threshold."""
    from sed.data.tsv import STRONG_COLUMNS
    from sed.evaluation.outputs import events_file_name, read_scores_dir

    out = run_dir / "test" / model
    threshold: float | str = "tuned" if (out / events_file_name("tuned")).is_file() else float(
        list(cfg.evaluation.thresholds)[0])
    events_path = out / events_file_name(threshold)
    if not events_path.is_file():
        raise SubmissionError(f"{events_path}: not found (the run's test outputs are incomplete)")
    try:
        events = pd.read_csv(events_path, sep="\t", dtype={"filename": str, "event_label": str}, keep_default_na=False,
                             na_values={"onset": [""], "offset": [""]})
    except (OSError, ValueError) as err:
        raise SubmissionError(f"{events_path}: cannot read the event list ({err})") from None
    if list(events.columns) != list(STRONG_COLUMNS):
        raise SubmissionError(f"{events_path}: expected columns {list(STRONG_COLUMNS)}, got {list(events.columns)}")
    return read_scores_dir(out / "scores_postprocessed"), events, threshold


# ---------------------------------------------------------------------- metadata
def _v(value: Any) -> str:
    """A YAML scalar (flow style), e.g. ``null``, ``0.1234``, ``'a: b'``."""
    if isinstance(value, float):
        value = float(f"{value:.6g}")
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _input_rate(cfg: Any, metrics: dict[str, Any]) -> float:
    """The rate the system takes audio at: the front-end's input rate when the model resamples
    (``features.input_sample_rate``), else the model's ``data.sample_rate``. ``auto`` is resolved from the files
    when the model is built, so the number is read from the tested checkpoint's saved configuration."""
    rate = cfg.features.get("input_sample_rate")
    tested = (metrics.get("complexity") or {}).get("checkpoint")
    if rate == "auto" and tested and Path(tested).is_file():
        from sed.run.checkpointing import read_checkpoint

        rate = read_checkpoint(tested)["hyper_parameters"]["config"]["features"].get("input_sample_rate")
    return float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else float(cfg.data.sample_rate)


def _features_name(cfg: Any) -> str:
    kind = cfg.features.kind
    return {"mel": "log-mel energies", "mfcc": "MFCC", "stft": "log-magnitude spectrogram"}.get(kind, kind)


def _augmentations(cfg: Any) -> Optional[str]:
    names = []
    if cfg.training.mixup.enabled:
        names.append("mixup")
    augment = cfg.training.get("augment") or {}  # absent from runs made before training.augment existed
    for key, name in (("filter_augment", "FilterAugment"), ("frame_shift", "frame shift"), ("spec_augment", "SpecAugment")):
        if (augment.get(key) or {}).get("prob", 0.0) > 0:
            names.append(name)
    return ", ".join(names) or None


def _median_filter_ms(cfg: Any) -> str:
    frame_s = cfg.features.hop_length * _time_pooling(cfg) / cfg.data.sample_rate
    windows = sorted({int(w) for w in cfg.evaluation.median_window})
    return ", ".join(f"{w * frame_s * 1000:.0f}" for w in windows)


def _time_pooling(cfg: Any) -> int:
    product = 1
    for pool in cfg.model.pooling:
        product *= int(pool[0])
    return product


def metadata_yaml(
    label: str, run_dir: Path, cfg: Any, metrics: dict[str, Any], energy: dict[str, Any], model: str,
    threshold: float | str,
) -> str:
    """The ``<label>.meta.yaml`` text: DCASE's layout (submission, system, results), run values filled in."""
    complexity = metrics.get("complexity") or {}
    fit, test = energy.get("fit") or {}, energy.get("test") or {}
    hardware = (test or fit).get("hardware") or {}
    device = hardware.get("gpu_model") or hardware.get("cpu_model")
    if device and hardware.get("gpu_model") and hardware.get("gpu_count"):
        device = f"{hardware['gpu_count']} x {hardware['gpu_model']}"
    measured = (test or fit).get("measured")
    method = "; ".join(f"{k} {v}" for k, v in ((test or fit).get("method") or {}).items()) or None
    tag = threshold if isinstance(threshold, str) else f"{threshold:g}"
    postprocessing = f"median filtering ({_median_filter_ms(cfg)} ms), threshold {tag}"
    pp = metrics.get("postprocessing") or {}
    if pp.get("tuned_on"):  # sed.evaluation.tuning: chosen on the validation set
        postprocessing = ("sound event bounding boxes (SEBBs)" if pp.get("method") == "sebbs" else
                          "class-wise median filtering") + " tuned on validation" + (
            ", class-wise thresholds tuned on validation" if tag == "tuned" else f", threshold {tag}")
    ev = metrics.get(f"event_f1_macro@{tag}")
    classes = sorted({k.split("/", 1)[1] for k in metrics if k.startswith(f"event_f1@{tag}/")})
    class_lines = "".join(f"      {_v(c)}: {_v(metrics.get(f'event_f1@{tag}/{c}'))}\n" for c in classes) or "      {}\n"
    method_name = "CRNN" if cfg.model.get("_target_", "").endswith("CRNN") else "TODO"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""\
# DCASE Task 4 submission metadata, written by `python -m sed.submit` on {now}
# from run {run_dir} ({model}).
# Values marked "# TODO" cannot come from a run: complete them. Check the fields against the
# metadata template of your challenge year (task page), which takes precedence over this file.

submission:
  # [Last name of corresponding author]_[Abbreviation of institute]_task4_[submission index 1-4]
  label: {_v(label)}{"  # TODO" if label == DEFAULT_LABEL else ""}
  name: TODO  # TODO: system name for the results tables
  abbreviation: TODO  # TODO: at most 10 characters
  authors:
    - lastname: TODO  # TODO
      firstname: TODO  # TODO
      email: TODO  # TODO
      corresponding: true
      affiliation:
        abbreviation: TODO  # TODO
        institute: TODO  # TODO
        department: TODO  # TODO
        location: TODO  # TODO: city, country

system:
  description:
    input_channels: mono
    input_sampling_rate: {_v(_input_rate(cfg, metrics) / 1000)}  # kHz
    acoustic_features: {_v(_features_name(cfg))}
    data_augmentation: {_v(_augmentations(cfg))}
    embeddings: null  # TODO if you use pre-trained embeddings
    machine_learning_method: {method_name}
    ensemble_method_subsystem_count: null
    decision_making: null
    machine_learning_semi_supervised: mean-teacher student
    segmentation_method: null
    post-processing: {_v(postprocessing)}
    pretrained_models: null  # TODO if any
  complexity:
    total_parameters: {_v(complexity.get("parameters"))}  # one CRNN (student and teacher have the same)
    # Multiply-accumulate operations per {_v(complexity.get("clip_duration_s"))}-s clip: front-end + scaler + CRNN
    # (FlopCounterMode; the FFT and element-wise operations are not counted)
    macs: {_v(complexity.get("macs"))}
    macs_frontend: {_v(complexity.get("macs_frontend"))}
    energy_consumption:  # kWh, codecarbon ({"measured" if measured else "estimated: " + str(method) if measured is False else "not measured"})
      training: {_v(fit.get("energy_kwh"))}
      inference: {_v(test.get("energy_kwh"))}  # the development test set, student and teacher in one pass
      training_duration_s: {_v(fit.get("duration_s"))}
      inference_duration_s: {_v(test.get("duration_s"))}
      hardware: {_v(device)}
      # TODO: DCASE may also ask for the energy of a reference (baseline) training on the same hardware
  external_datasets: []  # TODO: list every external dataset and pre-trained model (name, url, used_for)
  source_code: TODO  # TODO: URL of your code (optional)

results:
  development_dataset:
    # {model} on the run's test set (test/{model}/metrics.json), checkpoint {complexity.get("checkpoint")}
    psds1: {_v(metrics.get("psds1"))}
    psds2: {_v(metrics.get("psds2"))}
    event_f1_macro: {_v(ev)}  # event-based, collar 200 ms, threshold {tag}
    intersection_f1_macro: {_v(metrics.get(f"intersection_f1_macro@{tag}"))}
    segment_f1_macro: {_v(metrics.get(f"segment_f1_macro@{tag}"))}
    weak_f1: {_v(metrics.get("weak_f1"))}
    class_wise_event_f1:
{class_lines}"""


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


def _archive(folder: Path, dest: Path, fmt: str) -> Path:
    """``folder`` as ``dest`` (zip or tar.gz), paths starting with the folder's name."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if fmt == "zip":
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for p in files:
                z.write(p, p.relative_to(folder.parent).as_posix())
    else:
        with tarfile.open(dest, "w:gz") as t:
            for p in files:
                t.add(p, arcname=p.relative_to(folder.parent).as_posix())
    return dest


def build_submission(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    eval_audio: Optional[str | os.PathLike] = None,
    model: Optional[str] = None,
    label: str = DEFAULT_LABEL,
    checkpoint: Optional[str] = None,
    archive: str = "zip",
    device: Optional[str] = None,
) -> Path:
    """Write the submission package of ``run_dir`` into ``out`` (layout in the module docstring); returns the
    archive's path. Raises :class:`SubmissionError` naming the file at fault."""
    from sed.data.tsv import write_strong
    from sed.dcase.energy import read_energy
    from sed.evaluation.outputs import write_scores_dir

    run_dir, out = Path(run_dir), Path(out)
    if model is None:  # the network validation preferred (sed.run.job records it in status.json)
        from sed.run.rundir import read_status

        model = read_status(run_dir).get("preferred_model") or "teacher"
    if model not in ("teacher", "student"):
        raise SubmissionError(f"--model must be teacher or student, got {model!r}")
    if archive not in ARCHIVES:
        raise SubmissionError(f"--archive must be one of {ARCHIVES}, got {archive!r}")
    if not _LABEL_RE.match(label):
        raise SubmissionError(f"--label {label!r}: use letters, digits, '_', '-' and '.' (e.g. {DEFAULT_LABEL})")
    if not run_dir.is_dir():
        raise SubmissionError(f"{run_dir}: no such run directory")
    _check_out(out)
    metrics_path = run_dir / "test" / model / "metrics.json"
    if not metrics_path.is_file():
        raise SubmissionError(
            f"{metrics_path}: not found; the run has no test results for the {model} (run with test=true, or "
            "evaluate a checkpoint with train=false ckpt_path=...)"
        )
    metrics = _read_json(metrics_path)
    cfg = _run_config(run_dir)
    energy = read_energy(run_dir)
    ckpt: Optional[Path] = None
    if eval_audio is not None:
        eval_audio = Path(eval_audio)
        if not eval_audio.exists():
            raise SubmissionError(f"{eval_audio}: no such evaluation audio folder or file")
        ckpt = _tested_checkpoint(run_dir, metrics, cfg, checkpoint)
        tuned = run_dir / "postprocessing.json"
        scores, events, threshold = _eval_outputs(eval_audio, ckpt, model, device,
                                                  tuned if tuned.is_file() else None)
    else:
        if checkpoint:
            raise SubmissionError("--checkpoint is for --eval-audio; without it the run's test outputs are packaged")
        scores, events, threshold = _test_outputs(run_dir, model, cfg)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        folder = tmp / label
        folder.mkdir()
        write_scores_dir(scores, folder / f"{label}.output_scores", owned=True)
        write_strong(events, folder / f"{label}.output.tsv")
        (folder / f"{label}.meta.yaml").write_text(
            metadata_yaml(label, run_dir, cfg, metrics, energy, model, threshold), encoding="utf-8"
        )
        name = f"{label}.{archive}"
        _archive(folder, tmp / name, archive)
        record = {
            "run_dir": str(run_dir.resolve()), "model": model, "label": label,
            "eval_audio": str(eval_audio) if eval_audio is not None else None,
            "checkpoint": str(ckpt) if ckpt is not None else None, "archive": name,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (tmp / MARKER).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        _check_out(out)  # again: it may have changed meanwhile
        swap_in_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Submission of %d clip(s), %d event(s) written to %s", len(scores), len(events), out)
    return out / name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sed.submit", description="Write a DCASE Task 4 submission package from a run.")
    parser.add_argument("run_dir", help="run directory written by train.py (with test/<model>/metrics.json)")
    parser.add_argument("-o", "--output", required=True, help="folder to write (new, empty, or written by sed.submit)")
    parser.add_argument("--eval-audio", default=None,
                        help="folder of evaluation audio to detect events in (default: package the run's test outputs)")
    parser.add_argument("--model", choices=("teacher", "student"), default=None,
                        help="network to package (default: the one validation preferred, from the run's status.json)")
    parser.add_argument("--label", default=DEFAULT_LABEL,
                        help="submission label, [Lastname]_[INST]_task4_[1-4] (default: %(default)s, to be changed)")
    parser.add_argument("--checkpoint", default=None,
                        help="with --eval-audio: checkpoint to run (default: the one the run tested)")
    parser.add_argument("--archive", choices=ARCHIVES, default="zip", help="default: %(default)s")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; 0 on success, 2 when the package cannot be made (the message names the file at fault)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from sed.data.audio import AudioError
    from sed.data.tsv import AnnotationError

    try:
        path = build_submission(args.run_dir, args.output, args.eval_audio, args.model, args.label, args.checkpoint,
                                args.archive, args.device)
    except (SubmissionError, FileNotFoundError, AudioError, AnnotationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Submission package: {path} (complete the fields marked TODO in "
          f"{Path(args.output) / args.label / (args.label + '.meta.yaml')}, then add your technical report)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
