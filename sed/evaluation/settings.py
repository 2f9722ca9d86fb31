"""Post-processing settings a user gives on a command line: median-filter lengths and decision thresholds
(one for every class or one per class), checked against the model's classes with errors naming the option,
file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

Threshold = Union[float, Mapping[str, float]]


def check_median_window(window: int | Sequence[int], classes: Sequence[str]) -> int | list[int]:
    """A median filter length for every class (one int) or one per class, each >= 1."""
    values = [int(window)] if isinstance(window, (int, np.integer)) else [int(w) for w in window]
    if len(values) not in (1, len(classes)):
        raise ValueError(
            f"median window: {len(values)} lengths for {len(classes)} classes; give one length or one per class "
            f"in class order ({', '.join(classes)})"
        )
    if min(values) < 1:
        raise ValueError(f"median window lengths must be >= 1 frame, got {values}")
    return values[0] if len(values) == 1 else values


def parse_median_window(spec: str, classes: Sequence[str]) -> int | list[int]:
    """``"7"`` or ``"5,7,9"`` (one length per class, class order) as :func:`check_median_window` returns it."""
    try:
        values = [int(v) for v in spec.split(",")]
    except ValueError:
        raise ValueError(f"--median-window {spec!r}: expected an int or comma-separated ints (one per class)") from None
    try:
        return check_median_window(values, classes)
    except ValueError as err:
        raise ValueError(f"--median-window {spec!r}: {err}") from None


def _threshold_value(value, where: str) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: threshold {value!r} is not a number") from None
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"{where}: threshold {t:g} is not a probability in [0, 1]")
    return t


def _read_threshold_file(path: Path) -> dict[str, tuple[float, str]]:
    """``{class: (threshold, where)}`` of a JSON object or a TSV with ``event_label`` (or ``class``) and ``threshold``."""
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"{path}: cannot read thresholds: {err}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object {{class: threshold}}")
        return {str(k): (_threshold_value(v, f"{path}: {k}"), str(path)) for k, v in data.items()}
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: cannot read thresholds: {err}") from None
    name = next((c for c in ("event_label", "class") if c in df.columns), None)
    if name is None or "threshold" not in df.columns:
        raise ValueError(f"{path}: expected columns 'event_label' (or 'class') and 'threshold', got {list(df.columns)}")
    out: dict[str, tuple[float, str]] = {}
    for line, (label, value) in enumerate(zip(df[name], df["threshold"]), start=2):
        where = f"{path}:{line}"
        if label.strip() in out:
            raise ValueError(f"{where}: class {label.strip()!r} listed twice")
        out[label.strip()] = (_threshold_value(value, where), where)
    return out


def parse_thresholds(
    threshold: Optional[float], thresholds: Optional[str], classes: Sequence[str], default: Threshold
) -> Threshold:
    """The decision threshold(s) of the command line.

    ``threshold`` is one value for every class (default ``default``, the model's: one value or, when tuned,
    ``{class: threshold}``); ``thresholds`` overrides some or all classes: ``"dog=0.4,speech=0.6"``, or a ``.json``
    file ``{"dog": 0.4}`` or a TSV file with columns ``event_label`` (or ``class``) and ``threshold``. Returns one
    float, or ``{class: threshold}`` for every class when ``thresholds`` (or a class-wise ``default``) applies.
    Unknown classes are an error naming them.
    """
    base = default if threshold is None else _threshold_value(threshold, "--threshold")
    if not thresholds:
        return dict(base) if isinstance(base, Mapping) else base
    if "=" in thresholds:
        given: dict[str, tuple[float, str]] = {}
        for item in thresholds.split(","):
            label, sep, value = item.partition("=")
            where = f"--thresholds {item.strip()!r}"
            if not sep or not label.strip():
                raise ValueError(f"{where}: expected CLASS=VALUE pairs separated by commas")
            if label.strip() in given:
                raise ValueError(f"{where}: class {label.strip()!r} given twice")
            given[label.strip()] = (_threshold_value(value, where), where)
    else:
        path = Path(thresholds)
        if not path.is_file():
            raise FileNotFoundError(f"--thresholds {thresholds}: no such file (or give CLASS=VALUE pairs)")
        given = _read_threshold_file(path)
    unknown = [(label, where) for label, (_, where) in given.items() if label not in classes]
    if unknown:
        raise ValueError(
            f"{unknown[0][1]}: unknown class(es) {[u for u, _ in unknown]}; the model's classes are {list(classes)}"
        )
    return {c: given[c][0] if c in given else base[c] if isinstance(base, Mapping) else base for c in classes}


def describe_thresholds(threshold: Threshold) -> str:
    if isinstance(threshold, Mapping):
        return "thresholds " + ", ".join(f"{c}={t:g}" for c, t in threshold.items())
    return f"threshold {threshold:g}"
