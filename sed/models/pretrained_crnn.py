"""CRNN with a pretrained audio encoder: the DCASE 2024 Task 4 baseline architecture, any encoder of
:mod:`sed.models.encoders` (AST, BEATs, ATST-Frame, a user's).

The encoder's frame embeddings are brought to the CNN's output frames by adaptive average pooling over time
(averaging when the encoder has more frames, repeating them when it has fewer, so any clip length and any CNN
pooling work) and joined to the CNN's channels before the BiGRU, one of two ways (``fusion``):

* ``project_then_concat``: the embeddings projected to ``embedding_dim`` (``Linear`` then ``LayerNorm``: the
  projection keeps the GRU input small and lets it learn which of the encoder's dimensions matter; the norm puts
  the frozen embeddings, whose scale is the encoder's, on the scale of the CNN's gated outputs), then
  concatenated: the BiGRU reads ``channels + embedding_dim``;
* ``concat_then_project``: the DCASE 2024 baseline's (``aggregation_type: pool1d``): the CNN output and the pooled
  embeddings concatenated, dropout (the CNN's rate), then ``Linear(channels + D, channels)``: the BiGRU reads
  ``channels`` as in the plain CRNN.

Inputs: ``forward(features, embeddings=None, audio=None)``: the log-mel ``features`` as for :class:`CRNN`, and
either the encoder's ``embeddings`` of the same clips (what the training module passes: computed once per batch,
cached while frozen, mixed up with the features; :func:`sed.models.encoders.model_inputs`) or their raw
``audio`` ``[B, N]`` (the model runs its encoder).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sed.models.crnn import CRNN, CRNNOutput
from sed.models.dropout import Dropout
from sed.models.encoders import build_encoder

FUSIONS = ("project_then_concat", "concat_then_project")


class PretrainedCRNN(CRNN):
    """:class:`CRNN` whose BiGRU also reads the pretrained encoder's frame embeddings.

    Args:
        encoder: the ``model.encoder`` node (:func:`sed.models.encoders.build_encoder`; without ``_target_``, the
            AST keys of configurations written before the interface).
        embedding_dim: width of the projected embeddings appended to the CNN output (``project_then_concat``).
        fusion: ``project_then_concat`` or ``concat_then_project`` (the DCASE 2024 baseline's).
        **crnn: the :class:`CRNN` keys.
    """

    def __init__(
        self,
        n_classes: int,
        n_features: int = 128,
        encoder: Optional[dict[str, Any]] = None,
        embedding_dim: int = 128,
        fusion: str = "project_then_concat",
        **crnn: Any,
    ) -> None:
        super().__init__(n_classes, n_features, **crnn)
        if not encoder:
            raise ValueError("PretrainedCRNN needs model.encoder (a _target_ node of the audio encoder)")
        if embedding_dim < 1:
            raise ValueError(f"model.embedding_dim must be >= 1, got {embedding_dim}")
        if fusion not in FUSIONS:
            raise ValueError(f"model.fusion must be one of {FUSIONS}, got {fusion!r}")
        self.audio_encoder = build_encoder(encoder)
        self.embedding_dim = int(embedding_dim)
        self.fusion = fusion
        gru, channels = self.rnn, self.filters[-1]
        if fusion == "project_then_concat":
            self.embedding_projection = nn.Sequential(
                nn.Linear(self.audio_encoder.dim, self.embedding_dim), nn.LayerNorm(self.embedding_dim)
            )
            # the same GRU, reading the wider input
            self.rnn = nn.GRU(
                gru.input_size + self.embedding_dim,
                gru.hidden_size,
                gru.num_layers,
                batch_first=True,
                bidirectional=True,
                dropout=gru.dropout,
            )
        else:
            self.fusion_dropout = Dropout(float(crnn.get("dropout", 0.5)), fast=bool(crnn.get("fast_dropout", True)))
            self.fusion_projection = nn.Linear(channels + self.audio_encoder.dim, channels)

    def forward(
        self,
        features: Tensor,
        embeddings: Optional[Tensor] = None,
        audio: Optional[Tensor] = None,
        class_mask: Optional[Tensor] = None,
    ) -> CRNNOutput:
        x = self.cnn_frames(features)  # [B, T', ch]
        embeddings = self.audio_encoder.model_embeddings(embeddings, audio, "PretrainedCRNN")
        if embeddings.dim() != 3 or embeddings.shape[0] != x.shape[0] or embeddings.shape[1] != self.audio_encoder.dim:
            raise ValueError(
                f"PretrainedCRNN: embeddings must be [B={x.shape[0]}, D={self.audio_encoder.dim}, T_e], "
                f"got {tuple(embeddings.shape)}"
            )
        frames = F.adaptive_avg_pool1d(embeddings.to(x.dtype), x.shape[1]).transpose(1, 2)  # [B, T', D]
        if self.fusion == "project_then_concat":
            x = torch.cat([x, self.embedding_projection(frames).to(x.dtype)], dim=-1)
        else:
            x = self.fusion_projection(self.fusion_dropout(torch.cat([x, frames], dim=-1))).to(x.dtype)
        return self.recurrent_heads(x, class_mask)
