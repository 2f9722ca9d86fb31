"""A frame-level model: a pretrained audio encoder and a light head, as ATST-SED and PretrainedSED fine-tune.

The encoder's frame embeddings ``[B, D, T_e]`` are brought to the label grid (``T // time_pooling`` frames of the
front-end's ``T``: adaptive average pooling when the encoder has more frames, linear interpolation when it has
fewer), then the head: ``linear`` (one strong and one attention Linear per frame) or ``bigru`` (a BiGRU first, as
PretrainedSED's sequence model and ATST-SED's). The clip-level prediction is the attention pooling of the CRNN
(:mod:`sed.models.crnn`): the strong probabilities weighted by a softmax over classes, or their mean over time.

The log-mel ``features`` only give the number of frames (the training module computes them for every model); the
model reads the encoder's ``embeddings`` (what the training module passes, cached while the encoder is frozen,
mixed up with the labels) or the raw ``audio`` (it runs its encoder), like
:class:`sed.models.pretrained_crnn.PretrainedCRNN`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sed.models.crnn import ATTENTION_FLOOR, CRNNOutput, weighted_mean_logit
from sed.models.dropout import Dropout

HEADS = ("linear", "bigru")


def to_frames(embeddings: Tensor, n_frames: int) -> Tensor:
    """``[B, D, T_e]`` -> ``[B, D, n_frames]``: averaged over the encoder frames each output frame spans when
    ``T_e >= n_frames``, linearly interpolated otherwise."""
    if embeddings.shape[-1] >= n_frames:
        return F.adaptive_avg_pool1d(embeddings, n_frames)
    return F.interpolate(embeddings, size=n_frames, mode="linear", align_corners=False)


class FrameLevelSED(nn.Module):
    """Encoder + head: ``forward(features, embeddings=None, audio=None) -> CRNNOutput``.

    Args:
        n_classes / n_features: set by the training code (``n_features`` is unused: the features give the time
            axis only).
        encoder: the ``model.encoder`` node (:func:`sed.models.encoders.build_encoder`).
        head: ``linear`` or ``bigru``.
        rnn_hidden / rnn_layers: the BiGRU's size (``bigru``).
        dropout: on the head's input (and the BiGRU's output).
        attention: clip predictions by attention pooling (else the mean of the frame probabilities).
        time_pooling: output frames per front-end frame, as the CRNN's product of time pooling factors.
    """

    def __init__(
        self,
        n_classes: int,
        n_features: int = 128,
        encoder: Optional[dict[str, Any]] = None,
        head: str = "bigru",
        rnn_hidden: int = 256,
        rnn_layers: int = 2,
        dropout: float = 0.0,
        attention: bool = True,
        time_pooling: int = 4,
        fast_dropout: bool = True,
    ) -> None:
        super().__init__()
        from sed.models.encoders import build_encoder

        if head not in HEADS:
            raise ValueError(f"model.head must be one of {HEADS}, got {head!r}")
        if int(time_pooling) < 1:
            raise ValueError(f"model.time_pooling must be >= 1, got {time_pooling}")
        if not encoder:
            raise ValueError("FrameLevelSED needs model.encoder (a _target_ node of the audio encoder)")
        self.n_classes, self.n_features = int(n_classes), int(n_features)
        self._time_pooling = int(time_pooling)
        self.audio_encoder = build_encoder(encoder)
        width = self.audio_encoder.dim
        self.dropout = Dropout(dropout, fast=fast_dropout)
        self.rnn = None
        if head == "bigru":
            self.rnn = nn.GRU(width, rnn_hidden, rnn_layers, batch_first=True, bidirectional=True)
            width = 2 * rnn_hidden
        self.strong_head = nn.Linear(width, self.n_classes)
        self.attention_head = nn.Linear(width, self.n_classes) if attention else None

    @property
    def time_pooling(self) -> int:
        return self._time_pooling

    def forward(
        self,
        features: Tensor,
        embeddings: Optional[Tensor] = None,
        audio: Optional[Tensor] = None,
        class_mask: Optional[Tensor] = None,
    ) -> CRNNOutput:
        """``class_mask [B, C]`` (several datasets: the classes each clip's dataset annotates) masks the attention
        pooling as the CRNN's (:meth:`sed.models.crnn.CRNN.recurrent_heads`)."""
        n_frames = features.shape[-1] // self._time_pooling
        if n_frames < 1:
            raise ValueError(
                f"FrameLevelSED: {features.shape[-1]} feature frames give no output frame at "
                f"time_pooling={self._time_pooling}"
            )
        embeddings = self.audio_encoder.model_embeddings(embeddings, audio, "FrameLevelSED")
        if (
            embeddings.dim() != 3
            or embeddings.shape[0] != features.shape[0]
            or embeddings.shape[1] != self.audio_encoder.dim
        ):
            raise ValueError(
                f"FrameLevelSED: embeddings must be [B={features.shape[0]}, D={self.audio_encoder.dim}, "
                f"T_e], got {tuple(embeddings.shape)}"
            )
        x = to_frames(embeddings, n_frames).transpose(1, 2)  # [B, T, D]
        x = self.dropout(x)
        if self.rnn is not None:
            x = self.dropout(self.rnn(x)[0])
        strong_logits = self.strong_head(x).float().transpose(1, 2)  # [B, C, T]; heads in float32 under autocast
        strong = torch.sigmoid(strong_logits)
        if self.attention_head is not None:
            att_logits = self.attention_head(x).float()
            if class_mask is not None:
                att_logits = att_logits.masked_fill(~class_mask[:, None, :].bool(), -1e30)
            log_att = F.log_softmax(att_logits, dim=-1).clamp(min=math.log(ATTENTION_FLOOR))
            log_att = log_att.transpose(1, 2)
            att = log_att.exp()
            weak = (strong * att).sum(-1) / att.sum(-1)
        else:
            log_att = torch.zeros_like(strong_logits)
            weak = strong.mean(-1)
        return CRNNOutput(strong_logits, weighted_mean_logit(strong_logits, log_att, dim=-1), strong, weak)
