"""CRNN with a pretrained audio encoder: the DCASE 2024 Task 4 baseline architecture, with AST as the encoder.

The BiGRU reads, at every CNN output frame, the CNN's channels concatenated with the encoder's frame embedding
projected to ``embedding_dim`` (``Linear`` then ``LayerNorm``: the projection keeps the GRU input small and
lets it learn which of the encoder's dimensions matter; the normalisation puts the frozen embeddings, whose
scale is the encoder's, on the scale of the CNN's gated outputs). The encoder's frames (100 ms for AST) are
brought to the CNN's frames by adaptive average pooling over time, which averages when the encoder has more
frames and repeats them when it has fewer, so any clip length and any CNN pooling work.

Inputs: ``forward(features, embeddings=None, audio=None)`` — the log-mel ``features`` as for :class:`CRNN`,
and either the encoder's ``embeddings`` ``[B, D, T_e]`` of the same clips (what the training module passes:
computed once per batch, cached while frozen, mixed up with the features) or their raw ``audio`` ``[B, N]``
(the model runs its encoder). :func:`sed.models.embeddings.model_inputs` gives the keyword to pass.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sed.models.crnn import CRNN, CRNNOutput
from sed.models.embeddings import ASTEncoder


class PretrainedCRNN(CRNN):
    """:class:`CRNN` whose BiGRU input is ``cat(CNN output, projected encoder embeddings)``.

    Args:
        encoder: the keys of :class:`sed.models.embeddings.ASTEncoder` (``path`` or ``config``, ``frozen``,
            ``finetune_after_epoch``, ``sample_rate``, ``cache``, ``cache_max_gb``).
        embedding_dim: width of the projected embeddings appended to the CNN output.
        **crnn: the :class:`CRNN` keys.
    """

    def __init__(self, n_classes: int, n_features: int = 128, encoder: dict[str, Any] | None = None,
                 embedding_dim: int = 128, **crnn: Any) -> None:
        super().__init__(n_classes, n_features, **crnn)
        if not encoder:
            raise ValueError("PretrainedCRNN needs model.encoder (path or config of the audio encoder)")
        if embedding_dim < 1:
            raise ValueError(f"model.embedding_dim must be >= 1, got {embedding_dim}")
        self.audio_encoder = ASTEncoder(**encoder)
        self.embedding_dim = int(embedding_dim)
        self.embedding_projection = nn.Sequential(
            nn.Linear(self.audio_encoder.dim, self.embedding_dim), nn.LayerNorm(self.embedding_dim)
        )
        gru = self.rnn  # the same GRU, reading the wider input
        self.rnn = nn.GRU(gru.input_size + self.embedding_dim, gru.hidden_size, gru.num_layers, batch_first=True,
                          bidirectional=True, dropout=gru.dropout)

    def forward(self, features: Tensor, embeddings: Tensor | None = None,
                audio: Tensor | None = None, class_mask: Tensor | None = None) -> CRNNOutput:
        x = self.cnn_frames(features)  # [B, T', ch]
        if embeddings is None:
            if audio is None:
                raise ValueError("PretrainedCRNN needs the encoder embeddings or the audio of its features: "
                                 "model(features, **sed.models.embeddings.model_inputs(model, audio))")
            embeddings = self.audio_encoder(audio)
        if embeddings.dim() != 3 or embeddings.shape[0] != x.shape[0] or embeddings.shape[1] != self.audio_encoder.dim:
            raise ValueError(f"PretrainedCRNN: embeddings must be [B={x.shape[0]}, D={self.audio_encoder.dim}, T_e], "
                             f"got {tuple(embeddings.shape)}")
        frames = F.adaptive_avg_pool1d(embeddings.to(x.dtype), x.shape[1]).transpose(1, 2)  # [B, T', D]
        return self.recurrent_heads(torch.cat([x, self.embedding_projection(frames).to(x.dtype)], dim=-1), class_mask)
