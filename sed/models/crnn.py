"""CRNN for sound event detection: CNN blocks -> BiGRU -> strong (frame) and weak (clip) heads.

Input features ``[B, F, T]`` (``[B, n_in_channels, F, T]`` when ``n_in_channels > 1``) are seen
by the CNN as images ``[B, channels, T, F]``. Each CNN block is

    conv k x k (padding k//2) -> BatchNorm2d -> activation -> Dropout -> AvgPool2d(time, freq)

with activation ``"glu"`` (``Linear_c(x) * sigmoid(x)``, a per-position linear map over channels
gated by the input), ``"cg"`` (context gating, ``x * sigmoid(Linear_c(x))``) or ``"relu"``.
The frequency axis must pool down to exactly 1. The BiGRU runs over the pooled frames; dropout
follows it. On the CPU, dropout masks are cut from random words (``fast_dropout``, :mod:`sed.models.dropout`),
and a GLU block's gate and dropout run fused (:func:`sed.models.gating.glu_dropout`, same numbers).
The strong head is ``Linear(2*hidden, C)``; the weak prediction is attention pooling over time
(``attention=True``) or the mean over time of the strong probabilities.

Weak logits are computed in log space (see :func:`weighted_mean_logit`) so that they equal
``logit(weak)`` where that is finite and stay finite where ``weak`` saturates to 0 or 1; use them
with ``BCEWithLogitsLoss``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sed.models.dropout import Dropout
from sed.models.gating import GLU, ContextGating, glu_dropout

ACTIVATIONS = ("glu", "cg", "relu")
#: Attention weights are clamped to at least this (DESED semantics).
ATTENTION_FLOOR = 1e-7


class CRNNOutput(NamedTuple):
    """Model outputs; strong tensors are ``[B, C, T']`` with ``T' = T // time_pooling``."""

    strong_logits: Tensor
    weak_logits: Tensor
    strong: Tensor
    weak: Tensor


def _activation(name: str, channels: int) -> nn.Module:
    if name == "glu":
        return GLU(channels)
    if name == "cg":
        return ContextGating(channels)
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"CRNN activation={name!r} is not one of {ACTIVATIONS}")


def _at_least_float32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def weighted_mean_logit(strong_logits: Tensor, log_weights: Tensor, dim: int = -1) -> Tensor:
    """Exact logit of ``sum_t a_t * sigmoid(z_t)`` with ``a = softmax(log_weights)`` along ``dim``.

    ``log p = logsumexp(log a + logsigmoid(z))`` and ``log(1 - p) = logsumexp(log a + logsigmoid(-z))``
    (the ``a_t`` sum to one), so the logit ``log p - log(1 - p)`` is finite even when ``p`` rounds
    to 0 or 1 in floating point.
    """
    log_a = log_weights - torch.logsumexp(log_weights, dim=dim, keepdim=True)
    log_p = torch.logsumexp(log_a + F.logsigmoid(strong_logits), dim=dim)
    log_q = torch.logsumexp(log_a + F.logsigmoid(-strong_logits), dim=dim)
    return log_p - log_q


class CRNN(nn.Module):
    """Convolutional recurrent network with strong and weak heads (DESED baseline architecture)."""

    def __init__(
        self,
        n_classes: int,
        n_features: int = 128,
        n_in_channels: int = 1,
        filters: Sequence[int] = (16, 32, 64, 128, 128, 128, 128),
        pooling: Sequence[Sequence[int]] = ((2, 2), (2, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2)),
        kernel_size: int = 3,
        dropout: float = 0.5,
        activation: str = "glu",
        rnn_hidden: int = 128,
        rnn_layers: int = 2,
        rnn_dropout: float = 0.0,
        dropout_recurrent_out: float = 0.5,
        attention: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
        channels_last: bool = False,
        fast_dropout: bool = True,
    ) -> None:
        super().__init__()
        filters = [int(f) for f in filters]
        pooling = [tuple(int(v) for v in p) for p in pooling]
        if n_classes < 1:
            raise ValueError(f"CRNN n_classes must be >= 1, got {n_classes}")
        if len(filters) == 0:
            raise ValueError("CRNN filters must list at least one CNN block")
        if len(filters) != len(pooling):
            raise ValueError(f"CRNN filters has {len(filters)} blocks but pooling has {len(pooling)}; they must match")
        if any(len(p) != 2 or p[0] < 1 or p[1] < 1 for p in pooling):
            raise ValueError(f"CRNN pooling entries must be (time, freq) pairs of positive ints, got {pooling}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"CRNN kernel_size must be a positive odd number (same padding), got {kernel_size}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"CRNN activation={activation!r} is not one of {ACTIVATIONS}")

        freq = int(n_features)
        for _tp, fp in pooling:
            freq //= fp
        if freq != 1:
            raise ValueError(
                f"CRNN: n_features={n_features} with pooling frequency factors {[p[1] for p in pooling]} "
                f"(product {math.prod(p[1] for p in pooling)}) reduces the frequency axis to {freq}, not 1; "
                "change n_features or the pooling frequency factors"
            )

        self.n_classes = int(n_classes)
        self.n_features = int(n_features)
        self.n_in_channels = int(n_in_channels)
        self.filters = filters
        self.pooling = pooling
        self.attention = bool(attention)
        #: CNN activations in channels-last memory: the GLU/context-gating Linear over channels then reads
        #: contiguous rows instead of copying a strided view (measured faster on CPU; benchmarks/README.md).
        self.channels_last = bool(channels_last)

        blocks = []
        in_ch = self.n_in_channels
        for out_ch, (tp, fp) in zip(filters, pooling):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
                    nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum),
                    _activation(activation, out_ch),
                    Dropout(dropout, fast=fast_dropout),
                    nn.AvgPool2d((tp, fp)),
                )
            )
            in_ch = out_ch
        self.cnn = nn.Sequential(*blocks)
        self.rnn = nn.GRU(
            input_size=filters[-1],
            hidden_size=rnn_hidden,
            num_layers=rnn_layers,
            batch_first=True,
            bidirectional=True,
            dropout=rnn_dropout if rnn_layers > 1 else 0.0,
        )
        self.rnn_out_dropout = Dropout(dropout_recurrent_out, fast=fast_dropout)
        self.strong_head = nn.Linear(2 * rnn_hidden, self.n_classes)
        self.attention_head = nn.Linear(2 * rnn_hidden, self.n_classes) if self.attention else None

    @property
    def time_pooling(self) -> int:
        """Product of the time pooling factors: output frames are ``T // time_pooling``."""
        return math.prod(p[0] for p in self.pooling)

    def n_output_frames(self, n_input_frames: int) -> int:
        """Number of strong output frames for ``n_input_frames`` feature frames."""
        return int(n_input_frames) // self.time_pooling

    def _check_input(self, x: Tensor) -> Tensor:
        """Validate features and return them as CNN images ``[B, channels, T, F]``."""
        if self.n_in_channels == 1 and x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4:
            expected = "[B, F, T]" if self.n_in_channels == 1 else f"[B, n_in_channels={self.n_in_channels}, F, T]"
            raise ValueError(f"CRNN expects features {expected}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.n_in_channels:
            raise ValueError(
                f"CRNN: input has {x.shape[1]} channels (dim 1 of [B, C, F, T]) but n_in_channels={self.n_in_channels}"
            )
        if x.shape[2] != self.n_features:
            raise ValueError(
                f"CRNN: input has {x.shape[2]} feature bins (F of [B, F, T]) but n_features={self.n_features}"
            )
        if x.shape[3] < self.time_pooling:
            raise ValueError(
                f"CRNN: input has {x.shape[3]} frames (T of [B, F, T]), fewer than time_pooling={self.time_pooling} "
                f"(product of the pooling time factors {[p[0] for p in self.pooling]})"
            )
        return x.transpose(2, 3)

    def cnn_frames(self, features: Tensor) -> Tensor:
        """The CNN's output ``[B, T', channels]``: what the BiGRU reads (a subclass may append to it)."""
        x = self._check_input(features)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for i, block in enumerate(self.cnn):
            x = self._cnn_block(block, x, first=i == 0)  # [B, ch, T', 1] after the last
        return x.squeeze(-1).transpose(1, 2)

    def _cnn_block(self, block: nn.Sequential, x: Tensor, first: bool) -> Tensor:
        conv, norm, activation, drop, pool = block
        x = conv(x)
        if first and (x.is_cuda or self.channels_last):
            # cuDNN keeps the first convolution's output channels-first (a 1-channel input's layout is ambiguous),
            # and BatchNorm over a channels-first [B, 16, T, F] runs on one block per channel: on an H100 that one
            # layer took a third of the training step (benchmarks/gpu_training.py --profile). Same numbers.
            x = x.contiguous(memory_format=torch.channels_last)
        x = norm(x)
        if isinstance(activation, GLU):
            x = glu_dropout(x, activation, drop.p, drop.training, drop.fast)  # fewer temporaries on the CPU
        else:
            x = drop(activation(x))
        return pool(x)

    def recurrent_heads(self, x: Tensor, class_mask: Tensor | None = None) -> CRNNOutput:
        """BiGRU over ``x`` ``[B, T', rnn input]``, then the strong and weak heads.

        ``class_mask`` ``[B, C]`` (bool: the classes each clip's dataset annotates; training on several datasets)
        masks the attention pooling as the DCASE 2024 baseline's CRNN does (DESED_task ``desed_task/nnet/CRNN.py``,
        ``classes_mask``): an unannotated class's attention logit is pushed to -1e30 before the softmax over
        classes, so the annotated classes share the attention among themselves, and the unannotated ones get the
        floor weight at every frame. The baseline then zeroes their outputs; here the losses leave them out instead
        (:mod:`sed.training.losses`: the same values and gradients)."""
        x, _ = self.rnn(x)
        x = self.rnn_out_dropout(x)  # [B, T', 2*hidden]
        # Heads' outputs in float32 even under autocast: the sigmoid/attention pooling and the
        # log-space weak logit lose too much in half precision.
        strong_logits = _at_least_float32(self.strong_head(x)).transpose(1, 2)  # [B, C, T']
        strong = torch.sigmoid(strong_logits)
        if self.attention_head is not None:
            # Softmax over classes, clamped below (DESED); weak = sum_t strong*att / sum_t att.
            att_logits = _at_least_float32(self.attention_head(x))
            if class_mask is not None:
                att_logits = att_logits.masked_fill(~class_mask[:, None, :].bool(), -1e30)
            log_att = F.log_softmax(att_logits, dim=-1).clamp(min=math.log(ATTENTION_FLOOR))
            log_att = log_att.transpose(1, 2)  # [B, C, T']
            att = log_att.exp()
            weak = (strong * att).sum(-1) / att.sum(-1)
        else:
            log_att = torch.zeros_like(strong_logits)
            weak = strong.mean(-1)
        weak_logits = weighted_mean_logit(strong_logits, log_att, dim=-1)
        return CRNNOutput(strong_logits=strong_logits, weak_logits=weak_logits, strong=strong, weak=weak)

    def forward(self, features: Tensor, class_mask: Tensor | None = None) -> CRNNOutput:
        return self.recurrent_heads(self.cnn_frames(features), class_mask)
