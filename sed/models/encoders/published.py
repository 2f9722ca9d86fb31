"""The published encoders of the DCASE 2024 systems as :class:`~sed.models.encoders.base.AudioEncoder`\\ s, from
their released checkpoint files (``path``) or, for tests, a random configuration (``config``).

* :class:`BEATsEncoder` (:mod:`sed.models.encoders.beats`): Microsoft's ``BEATs_iter3_plus_AS2M.pt`` (the DCASE
  2024 baseline's), ``BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt`` (its classifier ignored) and PretrainedSED's
  ``BEATs_strong_1.pt``; one frame every 0.16 s (16 filterbank frames per patch column).
* :class:`ATSTFrameEncoder` (:mod:`sed.models.encoders.atst`): ATST-Frame's ``atstframe_base.ckpt``, ATST-SED's
  fine-tuned files and PretrainedSED's ``ATST-F_strong_1.pt``; one frame every 0.04 s.

docs/encoders.md tells where to download each file. A missing, truncated or other-family file is a one-line error
naming ``model.encoder.path``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

from torch import Tensor, nn

from sed.models.encoders.base import AudioEncoder

_DOCS = "docs/encoders.md lists the published checkpoints"


def _network(
    family: str,
    example: str,
    path: Optional[str],
    config: Optional[dict[str, Any]],
    load: Callable[..., nn.Module],
    build: Callable[[dict], nn.Module],
    *load_args: Any,
) -> nn.Module:
    """The network of ``path`` (``load``; its errors name ``model.encoder.path``) or of ``config`` (``build``)."""
    if path is not None:
        return load(os.path.expanduser(str(path)), *load_args)
    if config is not None:
        try:
            return build(dict(config))
        except (TypeError, ValueError) as err:
            raise ValueError(f"model.encoder.config: {err}") from None
    raise ValueError(
        f"model.encoder needs a path (a {family} checkpoint file, e.g. {example}; {_DOCS}) or a config ({family} "
        "config keys of a random model)"
    )


class BEATsEncoder(AudioEncoder):
    """BEATs from ``path`` (a published checkpoint file) or ``config`` (BEATsConfig keys of a random model);
    ``**options``: the interface's (``sample_rate``, ``layer``, ``frozen``, ``cache_dir``, ...).

    ``frames``: ``"columns"`` averages each time column's patch tokens over frequency (one frame every 0.16 s);
    ``"tokens"`` gives the patch tokens themselves in time-major order (8 per column), as the DCASE 2024 baseline
    stores them: a model that average-pools them to its own frames then computes exactly the baseline's pool1d.
    """

    FRAMES = ("columns", "tokens")

    def __init__(
        self,
        path: Optional[str] = None,
        config: Optional[dict[str, Any]] = None,
        frames: str = "columns",
        **options: Any,
    ) -> None:
        super().__init__(**options)
        from sed.models.encoders.beats import BEATs, load_beats

        if frames not in self.FRAMES:
            raise ValueError(f"model.encoder.frames must be one of {self.FRAMES}, got {frames!r}")
        self.frames = frames
        model = _network("BEATs", "BEATs_iter3_plus_AS2M.pt", path, config, load_beats, BEATs)
        per_column = 128 // model.patch if frames == "tokens" else 1  # frequency patches of one time column
        self._attach(model, {"beats": dict(model.config), "frames": frames}, frame_hop=model.frame_hop / per_column)

    def network_forward(self, audio: Tensor) -> Tensor:
        if self.frames == "tokens":
            return self.model.token_states(audio)[-1].transpose(1, 2)
        return super().network_forward(audio)

    def network_hidden_states(self, audio: Tensor) -> list[Tensor]:
        return self.model.token_states(audio) if self.frames == "tokens" else super().network_hidden_states(audio)

    def blocks(self) -> Sequence[nn.Module]:
        return list(self.model.encoder.layers) if hasattr(self, "model") else []

    def front_parameters(self) -> list[nn.Parameter]:
        # Post-norm BEATs normalises the positional convolution's output before the first layer.
        return [] if self.model.config["layer_norm_first"] else list(self.model.encoder.layer_norm.parameters())


class ATSTFrameEncoder(AudioEncoder):
    """ATST-Frame from ``path`` (a published checkpoint file; ``config`` may then set its dropout rates only) or
    ``config`` (ATST-Frame keys of a random model); ``**options``: the interface's."""

    def __init__(self, path: Optional[str] = None, config: Optional[dict[str, Any]] = None, **options: Any) -> None:
        super().__init__(**options)
        from sed.models.encoders.atst import ATSTFrame, load_atst_frame

        # with a path, config may set the dropout rates only
        model = _network("ATST-Frame", "atstframe_base.ckpt", path, config, load_atst_frame, ATSTFrame, config)
        self._attach(model, {"atst_frame": dict(model.config)})

    def blocks(self) -> Sequence[nn.Module]:
        return list(self.model.layers) if hasattr(self, "model") else []
