"""Dropout whose CPU masks are cut from random 64-bit words instead of drawn one element at a time.

On CPUs other than Intel's, PyTorch fills dropout masks with a serial per-element ``bernoulli_`` (its parallel MKL
path is taken on Intel CPUs only): on the 2-core AMD machine of benchmarks/README.md that was 34 % of a DESED
mean-teacher step, more than every convolution together. Here one draw of the global CPU generator gives 64 bits:
at ``p = 0.5`` each bit is one element's keep flag, otherwise each 16-bit slice is a uniform integer compared with
a threshold (keep probability rounded to a multiple of 2**-16; exact for 0.5, 0.25, ...). The masks have the same
Bernoulli distribution and come from the same seeded generator (runs and resumes stay reproducible), but they are
other draws than ``nn.Dropout``'s, so a run's numbers on a fixed seed differ from one with ``fast=False``.

On a GPU, under ``torch.compile`` and with ``fast=False`` this is ``nn.functional.dropout``. The CRNN's GLU blocks
apply it fused with the gate (:func:`sed.models.gating.glu_dropout`), with the same draws.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: One bit of an int8 each: ``byte & BIT != 0`` reads bit k of a random byte.
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, -128], dtype=torch.int8)
#: Keep probabilities are multiples of this (16-bit thresholds) unless they are 0.5 (one bit each).
KEEP_RESOLUTION = 2.0**-16


def _random_words(n: int, generator: torch.Generator | None) -> Tensor:
    """``n`` uniformly random int64 words from ``generator`` (torch's default CPU generator when None)."""
    return torch.randint(-(2**63), 2**63 - 1, (n,), dtype=torch.int64, generator=generator)


def keep_mask(shape: torch.Size | tuple[int, ...], keep: float, generator: torch.Generator | None = None) -> Tensor:
    """A boolean CPU tensor of ``shape`` whose elements are independently True with probability ``keep``
    (rounded to a multiple of :data:`KEEP_RESOLUTION`; exact at 0.5)."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep probability must be in [0, 1], got {keep}")
    n = 1
    for size in shape:
        n *= int(size)
    if keep == 0.5:
        words = _random_words(-(-n // 64), generator)
        bits = words.view(torch.int8).unsqueeze(1).bitwise_and(_BITS).ne_(0)  # 0/1 in int8, as bool below
        return bits.view(torch.bool).view(-1)[:n].view(shape)
    steps = round(keep * 65536)  # an int16 is below steps - 32768 with probability steps / 2**16
    if steps in (0, 65536):
        return torch.full(tuple(shape), steps > 0, dtype=torch.bool)
    words = _random_words(-(-n // 4), generator)
    return words.view(torch.int16)[:n].lt(steps - 32768).view(shape)


def dropout(x: Tensor, p: float, training: bool = True, fast: bool = True) -> Tensor:
    """``nn.functional.dropout(x, p, training)`` with word-cut masks on the CPU when ``fast`` (module docstring)."""
    if not training or p == 0.0:
        return x
    if not uses_fast_masks(x, p, training, fast):
        return F.dropout(x, p, training)
    # A float mask times x, as nn.Dropout computes it: on the CPU a product with a bool tensor first copies it to
    # float internally anyway, in the backward too.
    return x * scaled_keep_mask(x, 1.0 - p)


def uses_fast_masks(x: Tensor, p: float, training: bool, fast: bool) -> bool:
    """Whether :func:`dropout` cuts word masks for ``x`` (rather than returning ``x`` or calling ``F.dropout``)."""
    return training and fast and 0.0 < p < 1.0 and x.device.type == "cpu" and not torch.compiler.is_compiling()


def scaled_keep_mask(like: Tensor, keep: float) -> Tensor:
    """``keep_mask(like.shape, keep) / keep`` as ``like``'s dtype, in ``like``'s memory format (channels-last when
    ``like`` is): the draws follow the logical shape, so the masks do not depend on the layout, while a product with
    a mask of another layout runs several times slower than one of the same layout."""
    fmt = (
        torch.channels_last
        if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )
    return keep_mask(like.shape, keep).to(like.dtype, memory_format=fmt).mul_(1.0 / keep)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with :func:`dropout`'s fast CPU masks (``fast=True``); same ``p``, no parameters."""

    def __init__(self, p: float = 0.5, fast: bool = True) -> None:
        super().__init__(p)
        self.fast = bool(fast)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, self.fast)

    def extra_repr(self) -> str:
        return f"p={self.p}, fast={self.fast}"
