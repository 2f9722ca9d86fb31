"""Files a test run leaves behind: score tables, event lists, metrics JSON and PSD-ROC plots.

Layout of ``write_test_outputs(out_dir, name, ...)`` under ``out_dir/name/``::

    scores_raw/<audio_id>.tsv            sed_scores_eval format: onset offset <class...>
    scores_postprocessed/<audio_id>.tsv
    events_th<t>.tsv                     filename onset offset event_label (one per threshold)
    events_tuned.tsv                     the same at the class-wise thresholds tuned on validation (when tuned)
    metrics.json                         every number of sed.evaluation.metrics.evaluate (NaN -> null)
    psd_roc.png                          PSD-ROC of each PSDS scenario
    psd_roc_<scenario>.tsv               the plotted curve (efpr, etpr) for re-plotting

Score folders are written beside the target and swapped in by rename (:class:`ScoresDirWriter`), other
files through ``sed.utils.io.atomic_open``: an interrupted run never leaves half-written results in place,
and a score folder never mixes the clips of two runs.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from sed.utils.io import atomic_open, atomic_write_text, swap_in_dir

logger = logging.getLogger(__name__)

SCORE_FORMAT = "%.9g"  # float32 scores and frame times survive the round trip in order and value


def _check_id(key: str) -> None:
    if not key or "/" in key or "\\" in key or key in (".", ".."):
        raise ValueError(f"cannot use {key!r} as a score file name")


def _write_score_table(df: pd.DataFrame, path: Path) -> None:
    from sed_scores_eval.base_modules.scores import validate_score_dataframe

    validate_score_dataframe(df)
    buf = io.StringIO()
    np.savetxt(
        buf,
        df.to_numpy(dtype=np.float64),
        fmt=SCORE_FORMAT,
        delimiter="\t",
        header="\t".join(map(str, df.columns)),
        comments="",
    )
    path.write_text(buf.getvalue(), encoding="utf-8")


def _marker(directory: Path) -> Path:
    """Where the record of a score folder we wrote lives: beside it, since sed_scores_eval reads every file in it."""
    return directory.with_name(f".{directory.name}.sed-scores.json")


def _check_ours(directory: Path) -> None:
    """Refuse to replace ``directory`` unless it is absent, empty, or holds only files our marker lists."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ValueError(f"{directory}: exists and is not a folder")
    entries = sorted(p.name for p in directory.iterdir())
    if not entries:
        return
    try:
        written = set(json.loads(_marker(directory).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        written = set()
    foreign = [e for e in entries if e not in written]
    if foreign:
        raise ValueError(
            f"{directory}: folder holds {len(foreign)} file(s) not written by sed (e.g. {foreign[:3]}); "
            "refusing to replace it: give a new or empty folder, or remove this one yourself"
        )


class ScoresDirWriter:
    """Write per-clip score TSVs into a temporary folder beside ``directory``; :meth:`commit` swaps it in.

    The folder then holds the clips of this run only, never a mix with an earlier run's. An existing
    ``directory`` is replaced only when it is empty or holds nothing but files an earlier writer recorded
    in its marker (``.<name>.sed-scores.json`` beside it); anything else is refused at construction,
    before any work. ``owned=True`` is for folders inside a directory this program created (a run's
    ``test/<model>/``): they are replaced without a marker and none is written.
    """

    def __init__(self, directory: str | os.PathLike, owned: bool = False) -> None:
        self.directory = Path(directory)
        self.owned = owned
        if not owned:
            _check_ours(self.directory)
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.", suffix=".tmp", dir=self.directory.parent))
        self._names: list[str] = []

    def write(self, key: str, df: pd.DataFrame) -> None:
        """Write the score table of clip ``key`` (its audio id) as ``<key>.tsv``."""
        _check_id(key)
        _write_score_table(df, self._tmp / f"{key}.tsv")
        self._names.append(f"{key}.tsv")

    def commit(self) -> Path:
        """Replace ``directory`` with the files written so far (checked again: it may have changed meanwhile)."""
        directory = self.directory
        try:
            if not self.owned:
                _check_ours(directory)
            swap_in_dir(self._tmp, directory)
        except BaseException:
            self.abort()
            raise
        if not self.owned:
            atomic_write_text(_marker(directory), json.dumps({"files": sorted(self._names)}, indent=1) + "\n")
        return directory

    def abort(self) -> None:
        """Drop what was written; ``directory`` stays as it was."""
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "ScoresDirWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_scores_dir(scores: Mapping[str, pd.DataFrame], directory: str | os.PathLike, owned: bool = False) -> Path:
    """Write ``{audio_id: score DataFrame}`` as one TSV per clip, replacing ``directory`` at once.

    Readable by ``sed_scores_eval.io.read_sed_scores`` and :func:`read_scores_dir`. Which existing
    folders are replaced, and ``owned``: see :class:`ScoresDirWriter`.
    """
    with ScoresDirWriter(directory, owned=owned) as writer:
        for key, df in scores.items():
            writer.write(key, df)
    return Path(directory)


def read_scores_dir(directory: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read a folder of per-clip score TSVs (``onset offset <class...>``) into ``{audio_id: DataFrame}``.

    Errors name the offending file: unreadable table, wrong columns, frames that do not chain,
    or a class list that differs from the other files. Non-TSV and hidden files are skipped.
    """
    from sed_scores_eval.base_modules.scores import validate_score_dataframe

    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: no such score folder")
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory}: expected a folder of per-clip score TSVs")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix == ".tsv" and not p.name.startswith("."))
    skipped = [p.name for p in directory.iterdir() if not p.name.startswith(".") and p.suffix != ".tsv"]
    if skipped:
        logger.warning("%s: ignoring %d non-TSV entries, e.g. %s", directory, len(skipped), skipped[:3])
    if not files:
        raise ValueError(f"{directory}: no .tsv score files in folder")
    scores: dict[str, pd.DataFrame] = {}
    classes = None
    for path in files:
        try:
            df = pd.read_csv(path, sep="\t")
        except Exception as err:  # pandas raises several types for malformed text
            raise ValueError(f"{path}: cannot read score table: {err}") from None
        try:
            if len(df) == 0:
                raise ValueError("no frames")
            non_numeric = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
            if non_numeric:
                raise ValueError(f"non-numeric column(s) {non_numeric}")
            _, file_classes = validate_score_dataframe(df, event_classes=classes)
        except (ValueError, AssertionError) as err:
            raise ValueError(f"{path}: not a sed_scores_eval score table (onset, offset, <class...>): {err}") from None
        classes = file_classes
        scores[path.name[: -len(".tsv")]] = df
    return scores


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_metrics_json(metrics: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write metrics as indented JSON (NaN/inf -> null so any JSON reader accepts it), atomically."""
    atomic_write_text(path, json.dumps(_json_safe(metrics), indent=2) + "\n")


def update_metrics_json(path: str | os.PathLike, additions: Mapping[str, Any]) -> None:
    """Add (or replace) top-level entries of an existing metrics JSON, atomically: reports that are known only
    after the metrics were written (energy of the test, model complexity) join them there."""
    path = Path(path)
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    metrics.update(additions)
    write_metrics_json(metrics, path)


def threshold_tag(threshold: float | str) -> str:
    """``0.5 -> '0.5'``: how thresholds appear in file names and metric keys (a tag such as ``"tuned"`` as is)."""
    return threshold if isinstance(threshold, str) else f"{float(threshold):g}"


def events_file_name(threshold: float | str) -> str:
    """``events_th0.5.tsv`` for a threshold, ``events_tuned.tsv`` for the class-wise thresholds tuned on validation."""
    return f"events_{threshold}.tsv" if isinstance(threshold, str) else f"events_th{threshold_tag(threshold)}.tsv"


def write_events(detections: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write an event list ``filename onset offset event_label`` (DCASE TSV), atomically."""
    from sed.data.tsv import write_strong

    write_strong(detections, path)


def plot_psd_rocs(rocs: Mapping[str, Any], path: str | os.PathLike) -> None:
    """:func:`psd_roc_figure` saved as a PNG (nothing written when there is no curve)."""
    fig = psd_roc_figure(rocs)
    if fig is None:
        return
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)


def psd_roc_figure(rocs: Mapping[str, Any]) -> Any:
    """One panel per PSDS scenario: effective TPR over eFPR (per hour) in black, per-class curves thin.
    A matplotlib ``Figure`` (not registered with pyplot), or None when there is no curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rocs = {k: r for k, r in rocs.items() if r is not None}
    if not rocs:
        return None
    fig = Figure(figsize=(6 * len(rocs), 5), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (name, roc) in zip(fig.subplots(1, len(rocs), squeeze=False)[0], rocs.items()):
        sc = roc.scenario
        for cls, (tpr, efpr) in roc.per_class.items():
            ax.step(efpr, tpr, where="post", lw=0.8, alpha=0.5, label=str(cls))
        ax.step(roc.efpr, roc.etpr, where="post", color="black", lw=2, label="PSD-ROC")
        ax.fill_between(roc.efpr, roc.etpr, step="post", alpha=0.15, color="gray")
        ax.axvline(sc.max_efpr, ls="--", color="gray")
        ax.set_xlim(0, sc.max_efpr * 1.02)
        ax.set_ylim(0, 1.0)
        ax.set_xlabel("eFPR per hour")
        ax.set_ylabel("eTPR")
        cttc = "na" if sc.cttc is None else f"{sc.cttc:g}"
        value = "nan" if not math.isfinite(roc.value) else f"{roc.value:.4f}"
        ax.set_title(
            f"{name}: {value}\ndtc {sc.dtc:g}, gtc {sc.gtc:g}, cttc {cttc}, "
            f"α_ct {sc.alpha_ct:g}, α_st {sc.alpha_st:g}, max eFPR {sc.max_efpr:g}",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7, ncol=2)
    return fig


def write_test_outputs(
    out_dir: str | os.PathLike,
    name: str,
    scores_raw: Mapping[str, pd.DataFrame] | None,
    scores_post: Mapping[str, pd.DataFrame] | None,
    detections_by_threshold: Mapping[float, pd.DataFrame],
    metrics: Mapping[str, Any],
    psds_roc: Mapping[str, Any] | None = None,
) -> Path:
    """Write everything a test run of one model (``name``: "student"/"teacher") produced.

    Args:
        out_dir: parent folder; files go to ``out_dir/name/`` (layout in the module docstring).
        scores_raw, scores_post: ``{audio_id: score DataFrame}``; None skips that folder.
        detections_by_threshold: ``{threshold: strong DataFrame}`` (``EvaluationResult.detections``).
        metrics: flat metrics dict (``sed.evaluation.metrics.evaluate``).
        psds_roc: ``{scenario key: PSDROC}`` (``EvaluationResult.rocs``); None or empty: no plot.

    Returns:
        The folder written, ``out_dir/name``.
    """
    target = Path(out_dir) / name
    target.mkdir(parents=True, exist_ok=True)
    if scores_raw is not None:
        write_scores_dir(scores_raw, target / "scores_raw", owned=True)
    if scores_post is not None:
        write_scores_dir(scores_post, target / "scores_postprocessed", owned=True)
    for t, det in detections_by_threshold.items():
        write_events(det, target / events_file_name(t))
    write_metrics_json(metrics, target / "metrics.json")
    if psds_roc:
        plot_psd_rocs(psds_roc, target / "psd_roc.png")
        for key, roc in psds_roc.items():
            table = pd.DataFrame({"efpr": roc.efpr, "etpr": roc.etpr})
            with atomic_open(target / f"psd_roc_{key}.tsv", "w", encoding="utf-8") as handle:
                table.to_csv(handle, sep="\t", index=False)
    logger.info("%s test outputs written to %s", name, target)
    return target
