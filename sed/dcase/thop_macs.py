"""Multiply-accumulates counted by THOP's rules, so the figure is comparable with the one DCASE Task 4 publishes.

The organisers count a system's MACs for 10 s of audio with THOP (pytorch-OpCounter, ``thop.profile``; DESED_task
``recipes/dcase2023_task4_baseline/local/utils.py``, ``calculate_macs``): the network alone, on the features of one
clip ``[1, n_mels, frames]``, the front-end outside. Their baseline CRNN is listed at 930.902 M MACs. This module
applies THOP's per-layer rules (thop 0.1.1.post2209072238, the version ``pip install thop`` gives) with forward
hooks, without depending on THOP:

* convolutions: ``output elements x in_channels / groups x kernel size`` (no bias);
* linear layers: ``in_features x output elements``;
* BatchNorm / LayerNorm / InstanceNorm: ``2 x input elements``, doubled when affine;
* GRU / LSTM / RNN: THOP's per-step cell counts (gate products, biases, gate element-wise products) x steps x batch;
* average pooling: one per output element (adaptive: ``kernel + 1`` per output element); max pooling, ReLU,
  dropout, padding: zero; any other layer (sigmoid, GLU gates built of the above, embeddings): zero, as THOP does;
* softmax: ``rows x (3 x n - 1)`` for ``n`` entries per row. THOP counts it for an ``nn.Softmax`` module (the
  baseline has one: 4,524 of its MACs); this project's CRNN calls ``log_softmax`` as a function, which THOP would
  miss, so softmax and log-softmax calls are counted wherever they are made.

Two deliberate departures from THOP, both to count what THOP means to count: a subclass of a counted layer is
counted by its parent's rule (THOP matches exact types), and functional softmax is counted (above).

What THOP counts that ``torch.utils.flop_counter.FlopCounterMode`` (:mod:`sed.dcase.complexity`) does not:
BatchNorm, pooling, the GRU's biases and gate element-wise products, softmax. What it leaves out: the front-end
(STFT, mel filterbank: 82 M MACs for DESED's 10 s) and the scaler, which are not part of the network it profiles.
For the DESED CRNN (10 classes, 10 s at 16 kHz, 128 mel bands) both give the conv and linear products alike:
THOP rules 930,901,932 MACs (the baseline's 930.902 M), FlopCounterMode 917,553,152 for the network and
999,684,352 with the front-end.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


class ThopCount(NamedTuple):
    """MACs by THOP's rules: the total and per layer type (``"softmax"`` for softmax calls)."""

    total: int
    by_layer: dict[str, int]


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _conv(m: nn.modules.conv._ConvNd, x: Any, y: torch.Tensor) -> int:
    return y.numel() * (_first(x).shape[1] // m.groups) * math.prod(m.weight.shape[2:])


def _norm(m: nn.Module, x: Any, y: torch.Tensor) -> int:
    affine = bool(getattr(m, "affine", False) or getattr(m, "elementwise_affine", False))
    return 2 * _first(x).numel() * (2 if affine else 1)


def _linear(m: nn.Linear, x: Any, y: torch.Tensor) -> int:
    return m.in_features * y.numel()


def _avgpool(m: nn.Module, x: Any, y: torch.Tensor) -> int:
    return y.numel()


def _adaptive_avgpool(m: nn.Module, x: Any, y: torch.Tensor) -> int:
    spatial_in, spatial_out = _first(x).shape[2:], y.shape[2:]
    kernel = math.prod(i / o for i, o in zip(spatial_in, spatial_out))
    return int((kernel + 1) * y.numel())


def _rnn_cell(kind: str, inp: int, hidden: int, bias: bool) -> int:
    """THOP's count for one step of one cell (rnn_hooks ``_count_{rnn,gru,lstm}_cell``)."""
    if kind == "RNN":
        return hidden * (inp + hidden) + hidden + (2 * hidden if bias else 0)
    if kind == "GRU":
        gate = (hidden + inp) * hidden + hidden + (2 * hidden if bias else 0)
        return 3 * gate + hidden + 3 * hidden  # r, z, n gates; r * (...); (1 - z) * n + z * h
    gate = (inp + hidden) * hidden + hidden + (2 * hidden if bias else 0)
    return 4 * gate + 3 * hidden + hidden  # i, f, o, g gates; c'; h'


def _rnn(m: nn.RNNBase, x: Any, y: Any) -> int:
    x0 = _first(x)
    if isinstance(x0, nn.utils.rnn.PackedSequence):
        batch, steps = int(x0.batch_sizes.max()), int(x0.batch_sizes.numel())
    elif x0.dim() == 2:  # unbatched
        batch, steps = 1, x0.shape[0]
    else:
        batch, steps = (x0.shape[0], x0.shape[1]) if m.batch_first else (x0.shape[1], x0.shape[0])
    kind = "GRU" if isinstance(m, nn.GRU) else "LSTM" if isinstance(m, nn.LSTM) else "RNN"
    directions = 2 if m.bidirectional else 1
    per_step = directions * _rnn_cell(kind, m.input_size, m.hidden_size, m.bias)
    per_step += (m.num_layers - 1) * directions * _rnn_cell(kind, directions * m.hidden_size, m.hidden_size, m.bias)
    return per_step * steps * batch


def _zero(m: nn.Module, x: Any, y: Any) -> int:
    return 0


# (type, rule): the first matching type decides, so subclasses come before their parents where it matters.
_RULES: tuple[tuple[type, Callable[..., int]], ...] = (
    (nn.modules.conv._ConvNd, _conv),
    (nn.modules.batchnorm._NormBase, _norm),  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    (nn.LayerNorm, _norm),
    (nn.Linear, _linear),
    (nn.RNNBase, _rnn),
    (nn.AvgPool1d, _avgpool),
    (nn.AvgPool2d, _avgpool),
    (nn.AvgPool3d, _avgpool),
    (nn.AdaptiveAvgPool1d, _adaptive_avgpool),
    (nn.AdaptiveAvgPool2d, _adaptive_avgpool),
    (nn.AdaptiveAvgPool3d, _adaptive_avgpool),
)
_SOFTMAX = {
    torch.softmax,
    torch.log_softmax,
    torch.nn.functional.softmax,
    torch.nn.functional.log_softmax,
    torch.Tensor.softmax,
    torch.Tensor.log_softmax,
}


def _softmax_macs(args: tuple, kwargs: dict) -> int:
    x = args[0]
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if dim is None:  # torch's implicit dim: 0 for 0-3 dims, else 1
        dim = 0 if x.dim() in (0, 1, 3) else 1
    n = x.shape[dim] if x.dim() else 1
    return (x.numel() // max(n, 1)) * (3 * n - 1)


class _SoftmaxCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SOFTMAX:
            self.macs += _softmax_macs(args, kwargs)
        return func(*args, **kwargs)


def _rule(module: nn.Module) -> Callable[..., int] | None:
    for kind, rule in _RULES:
        if isinstance(module, kind):
            return rule
    return None


def thop_macs(module: nn.Module, *args: Any) -> ThopCount:
    """MACs of ``module(*args)`` by THOP's rules (module docstring), in eval mode without gradients; the module's
    mode is restored afterwards."""
    counts: dict[str, int] = {}
    handles = []

    def hook_for(name: str, rule: Callable[..., int]):
        def hook(m: nn.Module, x: Any, y: Any) -> None:
            counts[name] = counts.get(name, 0) + int(rule(m, x, y))

        return hook

    counted: list[str] = []
    for name, sub in module.named_modules():
        if any(prefix == "" or name.startswith(prefix + ".") for prefix in counted):
            continue  # a counted layer's inner modules are its own (THOP does not descend into a counted layer)
        rule = _rule(sub)
        if rule is not None:
            counted.append(name)
            handles.append(sub.register_forward_hook(hook_for(type(sub).__name__, rule)))
    training = module.training
    module.eval()
    try:
        with torch.no_grad(), _SoftmaxCounter() as softmax:
            module(*args)
    finally:
        module.train(training)
        for handle in handles:
            handle.remove()
    if softmax.macs:
        counts["softmax"] = counts.get("softmax", 0) + softmax.macs
    return ThopCount(sum(counts.values()), dict(sorted(counts.items())))
