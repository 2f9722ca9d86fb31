"""Channel gates of the CRNN's CNN blocks, and the GLU fused with the dropout that follows it on the CPU.

``GLU``: ``Linear_c(x) * sigmoid(x)``, a per-position linear map over channels gated by the input (DESED's
activation); ``ContextGating``: ``x * sigmoid(Linear_c(x))``. Both take ``[B, C, H, W]``.

:func:`glu_dropout` computes a block's GLU and dropout with the same numbers as the two modules, writing into its
own temporaries instead of allocating one per op: on the CPU every full-size temporary is a fresh ``mmap`` whose
pages the kernel zeroes, and the first block's are 245 MB each at DESED's batch of 48 (benchmarks/README.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sed.models.dropout import dropout, scaled_keep_mask, uses_fast_masks


class GLU(nn.Module):
    """Gated linear unit over channels of ``[B, C, H, W]``: ``Linear_c(x) * sigmoid(x)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        lin = self.linear(x.movedim(1, -1)).movedim(-1, 1)
        return lin * torch.sigmoid(x)


class ContextGating(nn.Module):
    """Context gating over channels of ``[B, C, H, W]``: ``x * sigmoid(Linear_c(x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.linear(x.movedim(1, -1)).movedim(-1, 1)
        return x * torch.sigmoid(gate)


class _GLUDropout(torch.autograd.Function):
    """``(x W^T + b) * sigmoid(x) * mask`` on rows ``x`` ``[N, C]`` (``mask``: the kept elements' scale, else 0).

    The backward needs the input, the sigmoid, the mask and the output (``d/d lin = g * mask * s``,
    ``d/d gate = g * out * (1 - s)``) and accumulates the Linear's input gradient into the gate's in place: three
    full-size temporaries in the forward and two in the backward, where the Linear, the GLU and the dropout as
    separate ops allocate five and six.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor) -> Tensor:  # type: ignore[override]
        lin = F.linear(x, weight, bias)
        s = torch.sigmoid(x)
        out = lin.mul_(s).mul_(mask)
        ctx.save_for_backward(x, weight, s, mask, out)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, weight, s, mask, out = ctx.saved_tensors
        grad_lin = (grad * mask).mul_(s)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * out
            grad_x.addcmul_(grad_x, s, value=-1.0)  # through the gate: (g * out) * (1 - s), no (1 - s) temporary
            grad_x.addmm_(grad_lin, weight)  # plus through the Linear, accumulated in place
        if ctx.needs_input_grad[1]:
            grad_weight = grad_lin.t() @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_lin.sum(0)
        return grad_x, grad_weight, grad_bias, None


def _tracing() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.compiler.is_compiling() or exporting() or torch.jit.is_tracing() or torch.jit.is_scripting()


def glu_dropout(x: Tensor, glu: GLU, p: float, training: bool = True, fast: bool = True) -> Tensor:
    """``dropout(glu(x), p, training, fast)`` for ``x`` ``[B, C, H, W]``, in fewer passes on the CPU.

    The masks are drawn for the GLU's output as :func:`sed.models.dropout.dropout` draws them, so the draws and the
    forward numbers are those of the two modules (gradients equal up to rounding). Without autograd ``x`` is
    overwritten (with its sigmoid): call it on a tensor nothing else reads, the block's BatchNorm output. The
    fused path needs ``x`` channels-last in memory (``model.channels_last``, the default) and the word masks
    (``fast``); on a GPU, under ``torch.compile``/export, with ``fast=False`` or mixed dtypes it is the two modules.
    """
    rows = x.movedim(1, -1)  # [B, H, W, C]: a view of the same memory when x is channels-last
    weight, bias = glu.linear.weight, glu.linear.bias
    usable = (
        fast
        and x.device.type == "cpu"
        and x.dim() == 4
        and rows.is_contiguous()
        and weight.dtype == x.dtype
        and (bias is None or bias.dtype == x.dtype)
        and not torch.is_autocast_enabled("cpu")
        and not _tracing()
    )
    masked = uses_fast_masks(x, p, training, fast)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if not usable or (not masked and (grad or (training and p > 0.0))):
        return dropout(glu(x), p, training, fast)
    flat = rows.reshape(-1, rows.shape[-1])
    if not masked:  # evaluation without autograd: the GLU in place
        return glu.linear(flat).mul_(flat.sigmoid_()).view(rows.shape).movedim(-1, 1)
    mask = scaled_keep_mask(x, 1.0 - p).movedim(1, -1).reshape(flat.shape)  # drawn in [B, C, H, W] order
    if grad:
        out = _GLUDropout.apply(flat, weight, bias, mask)
    else:
        out = glu.linear(flat).mul_(flat.sigmoid_()).mul_(mask)
    return out.view(rows.shape).movedim(-1, 1)
