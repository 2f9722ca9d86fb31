"""The ``<label>.meta.yaml`` of one system: the year's template (:mod:`sed.dcase.template`) filled from its runs.

What a run knows is filled in: input rate, features, augmentation, method, post-processing, parameters, MACs for
10 s of audio by THOP's rules (the full count beside it, as a comment), energy (training, dev-test and evaluation
inference, the baseline reference when measured), development results (the mean over the runs; each run's value
in a comment). What no run knows (system name, authors, affiliation, source code, external data, MAESTRO mpAUC
when the runs did not compute it) is ``TODO``; ``--info FILE.yaml`` (the same layout) fills it. Values given in the
info file replace the generated ones.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, Optional

import yaml

from sed.dcase.layout import parse_label
from sed.dcase.template import TODO


class RunInfo(NamedTuple):
    """What the metadata reads of one run (packaged network ``model``)."""

    run_dir: Path
    model: str
    cfg: Any  # the run's .hydra/config.yaml (OmegaConf)
    metrics: dict[str, Any]  # test/<model>/metrics.json
    energy: dict[str, Any]  # energy.json
    complexity: dict[str, Any]  # metrics.json's complexity block (with per_10s)
    eval_kwh: Optional[float]  # evaluation-set inference measured while packaging
    threshold: float | str  # the events' threshold the F1 scores were computed at ("tuned": class-wise)


def _v(value: Any) -> str:
    """A YAML scalar or empty collection in flow style, e.g. ``null``, ``0.1234``, ``'a: b'``, ``[]``."""
    if isinstance(value, float) and math.isfinite(value):
        value = float(f"{value:.6g}")
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def render(value: dict[str, Any], comments: dict[str, str], header: str = "") -> str:
    """``value`` as block YAML with ``comments[dotted key]`` after each key (``key[0]`` for list items)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]

    def note(path: str) -> str:
        return f"  # {comments[path]}" if path in comments else ""

    def mapping(d: dict[str, Any], path: str, indent: int, first_prefix: str = "") -> None:
        for i, (key, item) in enumerate(d.items()):
            pad = " " * indent if not (first_prefix and i == 0) else first_prefix
            sub = f"{path}.{key}" if path else key
            if isinstance(item, dict) and item:
                lines.append(f"{pad}{key}:{note(sub)}")
                mapping(item, sub, indent + 2)
            elif isinstance(item, list) and item and all(isinstance(x, dict) and x for x in item):
                lines.append(f"{pad}{key}:{note(sub)}")
                for j, element in enumerate(item):
                    mapping(element, f"{sub}[{j}]", indent + 4, " " * (indent + 2) + "- ")
            else:
                lines.append(f"{pad}{key}: {_v(item)}{note(sub)}")

    mapping(value, "", 0)
    return "\n".join(lines) + "\n"


def merge(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``given``'s values put in (mappings merged key by key, anything else replaced)."""
    out = dict(base)
    for key, value in given.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# ---------------------------------------------------------------------- run values
def _mean(values: list[Optional[float]]) -> Optional[float]:
    known = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(known) / len(known) if known else None


def _spread(values: list[Optional[float]]) -> str:
    known = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not known:
        return "not measured"
    runs = ", ".join(f"{v:.4g}" for v in known)
    if len(known) < 2:
        return f"run: {runs}"
    mean = sum(known) / len(known)
    std = math.sqrt(sum((v - mean) ** 2 for v in known) / (len(known) - 1))
    return f"mean of runs {runs} (std {std:.2g})"


def input_rate(cfg: Any, complexity: dict[str, Any]) -> float:
    """The rate the system takes audio at: the front-end's input rate when the model resamples
    (``features.input_sample_rate``), else ``data.sample_rate``. ``auto`` is resolved from the files when the model
    is built, so the number is read from the tested checkpoint's saved configuration."""
    rate = cfg.features.get("input_sample_rate")
    tested = complexity.get("checkpoint")
    if rate == "auto" and tested and Path(tested).is_file():
        from sed.run.checkpointing import read_checkpoint

        rate = read_checkpoint(tested)["hyper_parameters"]["config"]["features"].get("input_sample_rate")
    return float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else float(cfg.data.sample_rate)


def _features_name(cfg: Any) -> str:
    kind = cfg.features.kind
    return {"mel": "log-mel energies", "mfcc": "mfcc", "stft": "spectrogram"}.get(kind, kind)


def _augmentations(cfg: Any) -> Optional[str]:
    names = []
    if cfg.training.mixup.enabled:
        names.append("mixup")
    augment = cfg.training.get("augment") or {}  # absent from runs made before training.augment existed
    for key, name in (
        ("filter_augment", "FilterAugment"),
        ("frame_shift", "frame shift"),
        ("spec_augment", "SpecAugment"),
    ):
        if (augment.get(key) or {}).get("prob", 0.0) > 0:
            names.append(name)
    return ", ".join(names) or None


def _time_pooling(cfg: Any) -> int:
    product = 1
    for pool in cfg.model.pooling:
        product *= int(pool[0])
    return product


def _postprocessing(run: RunInfo) -> str:
    cfg, pp = run.cfg, run.metrics.get("postprocessing") or {}
    tag = run.threshold if isinstance(run.threshold, str) else f"{run.threshold:g}"
    if pp.get("tuned_on"):  # sed.evaluation.tuning: chosen on the validation set
        return (
            "sound event bounding boxes (SEBBs)" if pp.get("method") == "sebbs" else "class-wise median filtering"
        ) + " tuned on validation"
    frame_s = cfg.features.hop_length * _time_pooling(cfg) / cfg.data.sample_rate
    windows = ", ".join(
        f"{int(w) * frame_s * 1000:.0f}" for w in sorted({int(w) for w in cfg.evaluation.median_window})
    )
    return f"median filtering ({windows} ms); events at threshold {tag}"


def _mpauc(metrics: dict[str, Any]) -> Optional[float]:
    for key in ("mpauc", "mPAUC", "maestro_mpauc", "mpauc_maestro"):
        if isinstance(metrics.get(key), (int, float)):
            return float(metrics[key])
    return None


def _energy(
    runs: list[RunInfo], baseline: Optional[dict[str, Any]], year: int
) -> tuple[dict[str, Any], dict[str, str]]:
    fit = [(r.energy.get("fit") or {}).get("energy_kwh") for r in runs]
    test = [(r.energy.get("test") or {}).get("energy_kwh") for r in runs]
    evaluation = [r.eval_kwh for r in runs]
    values = {"training": _mean(fit), "devtest_inference": _mean(test), "evaluation_inference": _mean(evaluation)}
    comments = {
        "training": f"kWh, one training: {_spread(fit)}",
        "devtest_inference": f"kWh, student and teacher in one pass: {_spread(test)}",
        "evaluation_inference": f"kWh, measured by sed.submit: {_spread(evaluation)}",
    }
    base = baseline or {}
    if year == 2023:
        values["baseline_devtest_inference"] = base.get("devtest_inference_kwh")
        values["baseline_evaluation_inference"] = base.get("evaluation_inference_kwh")
    else:
        values["baseline_training"] = base.get("training_kwh")
        values["baseline_devtest_inference"] = base.get("devtest_inference_kwh")
    measured = (
        "the DCASE baseline recipe on the same hardware (python -m sed.dcase.baseline_energy)"
        if base.get("faithful", True)
        else "NOT the baseline recipe: " + str(base.get("not_faithful_because"))
    )
    for key in [k for k in values if k.startswith("baseline_")]:
        comments[key] = measured if values[key] is not None else "not measured: python -m sed.dcase.baseline_energy"
    return values, comments


def system_metadata(
    label: str,
    runs: list[RunInfo],
    year: int,
    baseline: Optional[dict[str, Any]] = None,
    not_submittable: Optional[str] = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The metadata values of system ``label`` from its runs and the comments that go beside them."""
    first = runs[0]
    cfg, cx = first.cfg, first.complexity
    parsed = parse_label(label)
    c: dict[str, str] = {}
    meta: dict[str, Any] = {}
    if not_submittable:
        meta["not_submittable"] = not_submittable
        c["not_submittable"] = "a package with this key is not for submission"
    meta["submission"] = {
        "label": label,
        "name": TODO,
        "abbreviation": TODO,
        "authors": [
            {
                "lastname": parsed.lastname,
                "firstname": TODO,
                "email": TODO,
                "corresponding": True,
                "affiliation": {
                    "abbreviation": parsed.institute,
                    "institute": TODO,
                    "department": None,
                    "location": TODO,
                },
            }
        ],
    }
    c.update(
        {
            "submission.name": "system name for the results tables",
            "submission.abbreviation": "at most 10 characters",
            "submission.authors": "every author, in order; exactly one corresponding: true",
            "submission.authors[0].affiliation.location": "city, country",
        }
    )

    rates = {input_rate(r.cfg, r.complexity) for r in runs}
    method = "CRNN" if str(cfg.model.get("_target_", "")).endswith("CRNN") else TODO
    description = {
        "input_channels": "mono",
        "input_sampling_rate": float(f"{min(rates) / 1000:g}"),
        "acoustic_features": _features_name(cfg),
        "data_augmentation": _augmentations(cfg),
        "embeddings": None,
        "machine_learning_method": method,
        "ensemble_method_subsystem_count": None,
        "decision_making": None,
        "machine_learning_semi_supervised": "mean teacher" if cfg.training.get("ema_factor") else None,
        "segmentation_method": None,
        "post-processing": _postprocessing(first),
        "pretrained_models": None,
    }
    c.update(
        {
            "system.description.input_sampling_rate": "kHz",
            "system.description.embeddings": "name them if you use pre-trained embeddings",
            "system.description.ensemble_method_subsystem_count": "null: no ensemble",
            "system.description.pretrained_models": "name every pre-trained model, or null",
        }
    )

    per_10s = cx.get("per_10s") or {}
    energy, energy_comments = _energy(runs, baseline, year)
    hardware = ((first.energy.get("test") or first.energy.get("fit") or {}).get("hardware")) or {}
    device = (
        f"{hardware.get('gpu_count')} x {hardware['gpu_model']}"
        if hardware.get("gpu_model")
        else hardware.get("cpu_model")
    )
    meta["system"] = {
        "description": description,
        "complexity": {
            "total_parameters": cx.get("parameters"),
            "macs": per_10s.get("macs_thop"),
            "energy_consumption": energy,
        },
        "external_datasets": [],
        "source_code": TODO,
    }
    windows = per_10s.get("windows")
    c.update(
        {
            "system.complexity.total_parameters": "one network (student and teacher have the same)",
            "system.complexity.macs": (
                f"10 s of audio ({windows} window(s)), THOP's rules on the network as DCASE counts; "
                f"full count (front-end + scaler + network, FlopCounterMode): {per_10s.get('macs')}"
                if per_10s
                else "not counted: the run has no per_10s complexity"
            ),
            "system.complexity.energy_consumption": f"kWh, codecarbon, hardware: {device or 'unknown'}",
            "system.external_datasets": "every external data set: name, url, total_audio_length",
            "system.source_code": "URL of your code, or null",
        }
    )
    c.update({f"system.complexity.energy_consumption.{k}": v for k, v in energy_comments.items()})

    def metric(key: str) -> list[Optional[float]]:
        values = []
        for r in runs:
            tag = r.threshold if isinstance(r.threshold, str) else f"{r.threshold:g}"
            values.append(r.metrics.get(key.replace("@", f"@{tag}")))
        return values

    psds1, psds2 = metric("psds1"), metric("psds2")
    where = f"{first.model}, development test set (test/{first.model}/metrics.json)"
    if year == 2023:
        dev = {
            "psds1": _mean(psds1),
            "psds2": _mean(psds2),
            "event_f1_macro": _mean(metric("event_f1_macro@")),
            "intersection_f1_macro": _mean(metric("intersection_f1_macro@")),
            "segment_f1_macro": _mean(metric("segment_f1_macro@")),
            "weak_f1": _mean(metric("weak_f1")),
        }
        meta["results"] = {"development_dataset": dev}
        c["results.development_dataset"] = where
        c.update(
            {
                f"results.development_dataset.{k}": _spread(
                    metric(k if k in ("psds1", "psds2", "weak_f1") else f"{k}@")
                )
                for k in dev
            }
        )
    else:
        desed = {
            "PSDS1": _mean(psds1),
            "PSDS2": _mean(psds2),
            "intersection_f1_macro": _mean(metric("intersection_f1_macro@")),
            "event_f1_macro": _mean(metric("event_f1_macro@")),
        }
        mpauc = _mean([_mpauc(r.metrics) for r in runs])
        meta["results"] = {"devtest": {"desed": desed, "maestro": {"mPAUC": mpauc if mpauc is not None else TODO}}}
        c["results.devtest.desed"] = where
        c["results.devtest.desed.PSDS1"] = _spread(psds1)
        c["results.devtest.maestro.mPAUC"] = "MAESTRO dev-test mean partial AUC: " + (
            _spread([_mpauc(r.metrics) for r in runs]) if mpauc is not None else "the runs have none, fill it in"
        )
    return meta, c


def _leaf_paths(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaf_paths(v, f"{path}.{k}" if path else k)] or [path]
    return [path]


def metadata_text(
    label: str,
    runs: list[RunInfo],
    year: int,
    baseline: Optional[dict[str, Any]] = None,
    info: Optional[dict[str, Any]] = None,
    not_submittable: Optional[str] = None,
) -> str:
    """The ``<label>.meta.yaml`` text: :func:`system_metadata` with ``info``'s values put in."""
    meta, comments = system_metadata(label, runs, year, baseline, not_submittable)
    if info:
        meta = merge(meta, info)
        for path in _leaf_paths(info):
            if path in comments:
                comments[path] = "given with --info"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"DCASE {year} Task 4 system metadata, written by `python -m sed.submit` on {now}\n"
        f"from {len(runs)} run(s): " + ", ".join(str(r.run_dir) for r in runs) + "\n"
        "Values TODO cannot come from a run: fill them in (or give them with --info FILE.yaml), then\n"
        "check the package: python -m sed.submit --check PACKAGE.zip\n"
    )
    return render(meta, comments, header)
