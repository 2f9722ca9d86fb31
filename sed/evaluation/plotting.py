"""Figures for TensorBoard: a clip's features with reference and predicted event activity under them."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def activity_figure(
    features: np.ndarray,
    reference: np.ndarray,
    predicted: np.ndarray,
    classes: Sequence[str],
    clip_duration: float,
    title: str = "",
) -> plt.Figure:
    """Features ``[F, T]`` on top, reference ``[C, T']`` and predicted probabilities ``[C, T']`` below,
    all on one time axis in seconds."""
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True, gridspec_kw={"height_ratios": [2, 1, 1]})
    extent_feat = [0, clip_duration, 0, features.shape[0]]
    axes[0].imshow(features, origin="lower", aspect="auto", extent=extent_feat, cmap="magma")
    axes[0].set_ylabel("feature bin")
    axes[0].set_title(title)
    extent = [0, clip_duration, -0.5, len(classes) - 0.5]
    for ax, activity, label in ((axes[1], reference, "reference"), (axes[2], predicted, "predicted")):
        ax.imshow(
            activity,
            origin="lower",
            aspect="auto",
            extent=extent,
            vmin=0,
            vmax=1,
            cmap="Greens",
            interpolation="nearest",
        )
        ax.set_yticks(range(len(classes)))
        ax.set_yticklabels(classes, fontsize=7)
        ax.set_ylabel(label)
    axes[2].set_xlabel("time (s)")
    fig.tight_layout()
    return fig
