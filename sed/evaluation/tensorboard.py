"""What a run shows in TensorBoard beyond scalars: validation clip figures, test PSD-ROC figures and per-class
metrics, the configuration as text, and hyper-parameters beside the final test metrics.

Functions of the run's Lightning loggers; :class:`sed.training.module.SEDModule` calls them on the global-zero process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, TensorBoardLogger

from sed.evaluation.scoring import ModelScores


def tensorboard_writers(loggers: Sequence[Logger]) -> list[Any]:
    """The ``SummaryWriter`` of every TensorBoard logger: figures, text and hparams go only there."""
    return [lg.experiment for lg in loggers if isinstance(lg, TensorBoardLogger)]


def log_validation_figures(
    writers: Sequence[Any],
    plot_batch: Mapping[str, Any],
    probabilities: Mapping[str, np.ndarray],
    classes: list[str],
    clip_duration: float,
    model: str,
    epoch: int,
    step: int,
) -> None:
    """One activity figure per plotted validation clip (features, reference, ``model``'s frame probabilities of
    the clip's first ``clip_duration`` seconds) as ``val_clips/<i>``."""
    import matplotlib.pyplot as plt

    from sed.evaluation.plotting import activity_figure

    for i, filename in enumerate(plot_batch["filename"]):
        fig = activity_figure(
            plot_batch["features"][i],
            plot_batch["reference"][i],
            probabilities[filename][:, : plot_batch["reference"].shape[-1]],
            classes,
            clip_duration,
            title=f"{filename} ({model}, epoch {epoch})",
        )
        for writer in writers:
            writer.add_figure(f"val_clips/{i}", fig, global_step=step, close=False)
        plt.close(fig)


def log_test_details(
    loggers: Sequence[Logger], results: Mapping[str, ModelScores], step: int, set_name: str = "test"
) -> None:
    """Per-class test metrics to every logger, as ``<set>/<model>/per_class/<metric>/<class>`` (``test/student/
    per_class/psds1/Dog``; ``test/<dataset>/...`` with several datasets; not ``test/<model>/psds1/<class>``: a name
    that is also the folder of other names breaks MLflow's file store), out of the console table; the PSD-ROC
    figure of each model to TensorBoard."""
    for name, result in results.items():
        per_class = {
            f"{set_name}/{name}/per_class/{key}": float(value)
            for key, value in result.metrics.items()
            if "/" in key and np.isfinite(value)
        }  # NaN: a class without ground-truth events
        for logger in loggers:
            logger.log_metrics(per_class, step=step)
    writers = tensorboard_writers(loggers)
    if not writers:
        return
    from sed.evaluation.outputs import psd_roc_figure

    for name, result in results.items():
        fig = psd_roc_figure({k: v for k, v in result.psd_rocs.items() if not k.endswith("_raw")})
        if fig is not None:
            for writer in writers:
                writer.add_figure(f"{set_name}/{name}/psd_roc", fig, global_step=step, close=False)


def log_config_text(writers: Sequence[Any], cfg: DictConfig, step: int) -> None:
    """The resolved configuration as text (TensorBoard's TEXT tab)."""
    text = OmegaConf.to_yaml(cfg)
    for writer in writers:
        # Indented by four spaces: a Markdown code block, so TensorBoard keeps the YAML's layout.
        writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), step)


def log_hparams(loggers: Sequence[Logger], cfg: DictConfig, test_results: Mapping[str, Mapping[str, float]]) -> None:
    """The HPARAMS tab: every configuration value next to the final headline test metrics of each model."""
    tensorboards = [lg for lg in loggers if isinstance(lg, TensorBoardLogger)]
    if not tensorboards:
        return
    metrics = {
        f"hp/{name}/{key}": value
        for name, values in test_results.items()
        for key, value in values.items()
        if key in ("psds1", "psds2", "weak_f1", "mpauc") or key.startswith(("event_f1_macro", "intersection_f1_macro"))
    }
    params = _flatten(OmegaConf.to_container(cfg, resolve=True))
    for logger in tensorboards:
        logger.log_hyperparams(params, metrics)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config → ``{"a/b": value}``; non-scalars as strings (TensorBoard's hparams take scalars)."""
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}/"))
        return flat
    return {prefix[:-1]: tree if isinstance(tree, (int, float, str, bool)) else str(tree)}
