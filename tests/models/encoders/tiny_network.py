"""A user's own encoder for the interface tests: strided-convolution frames (20 ms at 16 kHz), transformer
blocks, a final norm; random weights."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's encoder: strided convolution frames (20 ms at 16 kHz), transformer blocks, a final norm."""

    def __init__(self, dim: int = 8, n_layers: int = 3, hop: int = 320, dropout: float = 0.1) -> None:
        super().__init__()
        self.dim, self.sample_rate, self.frame_hop = dim, 16000, hop / 16000
        self.front = nn.Conv1d(1, dim, 2 * hop, stride=hop, padding=hop // 2)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, 2, 16, dropout=dropout, batch_first=True) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(dim)

    def hidden_states(self, audio: torch.Tensor) -> list[torch.Tensor]:
        x = self.front(audio[:, None]).transpose(1, 2)
        states = []
        for block in self.blocks:
            x = block(x)
            states.append(x)
        return states

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.norm(self.hidden_states(audio)[-1]).transpose(1, 2)
