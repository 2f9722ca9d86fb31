"""MACs by THOP's rules (sed.dcase.thop_macs) against the counts thop itself gives.

The numbers were measured with thop 0.1.1.post2209072238 (``thop.profile``) on the same modules and inputs, and for
the DESED_task 2023 baseline CRNN (desed_task/nnet/CRNN.py, confs/default.yaml): 930,901,932, printed by the
baseline as "930.902 M"; per layer: convolutions 701,927,424, BatchNorm 11,366,400, GLU linear maps 138,149,888,
average pooling 939,520, BiGRU 77,715,456, strong and attention heads 798,720, its nn.Softmax 4,524.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sed.dcase.thop_macs import thop_macs
from sed.models.crnn import CRNN


def test_desed_crnn_is_counted_as_the_organisers_count_the_baseline():
    net = CRNN(10)
    count = thop_macs(net, torch.zeros(1, 128, 626))  # 10 s at 16 kHz, hop 256: the baseline's input
    assert count.total == 930_901_932
    assert count.by_layer == {
        "AvgPool2d": 939_520,
        "BatchNorm2d": 11_366_400,
        "Conv2d": 701_927_424,
        "GRU": 77_715_456,
        "Linear": 138_149_888 + 798_720,
        "softmax": 4_524,
    }
    assert net.training  # the caller's mode is kept


@pytest.mark.parametrize(
    "make, shape, thop_count",
    [
        # Conv1d + BatchNorm + ReLU + adaptive pooling + Linear + an nn.Softmax module (counted once, not twice)
        (
            lambda: nn.Sequential(
                nn.Conv1d(3, 8, 5),
                nn.BatchNorm1d(8),
                nn.ReLU(),
                nn.AdaptiveAvgPool1d(7),
                nn.Flatten(),
                nn.Linear(56, 4),
                nn.Softmax(dim=-1),
            ),
            (2, 3, 50),
            15_302,
        ),
        (lambda: nn.LSTM(6, 5, num_layers=2, bidirectional=True), (9, 2, 6), 24_480),
        (lambda: nn.GRU(6, 5, bias=False, batch_first=True), (2, 9, 6), 3_600),
        # grouped convolution, InstanceNorm without affine, average pooling, LayerNorm
        (
            lambda: nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.InstanceNorm2d(8), nn.AvgPool2d(2), nn.LayerNorm(3)),
            (1, 4, 8, 8),
            6_120,
        ),
        (lambda: nn.RNN(4, 3, num_layers=3), (7, 1, 4), 588),
    ],
)
def test_layers_as_thop_counts_them(make, shape, thop_count):
    torch.manual_seed(0)
    assert thop_macs(make(), torch.randn(*shape)).total == thop_count


def test_functional_softmax_and_subclasses_are_counted():
    """The two departures from THOP: a softmax called as a function, a subclass of a counted layer."""

    class MyLinear(nn.Linear):
        pass

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = MyLinear(6, 4)

        def forward(self, x):
            return torch.log_softmax(self.proj(x), dim=-1)

    count = thop_macs(Head(), torch.zeros(3, 5, 6))
    assert count.by_layer == {"MyLinear": 6 * 3 * 5 * 4, "softmax": 15 * (3 * 4 - 1)}
