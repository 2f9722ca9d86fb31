"""Parameters and MACs of the deployed model (sed.dcase.complexity) against counts worked out by hand from the layer shapes."""

from __future__ import annotations

import pytest
import torch

from sed.dcase.complexity import count_macs, deployed_complexity
from sed.features.frontend import FrontEnd
from sed.features.scaler import TorchScaler
from sed.models.crnn import CRNN


def _hand_counts(n_features: int, frames: int, filters, pooling, hidden: int, layers: int, n_classes: int) -> dict:
    """MACs per layer type of the CRNN, from its shapes: 3x3 'same' convolutions, GLU gates (a C x C linear map per
    position, before pooling), a bidirectional GRU (3 gates, input and hidden products), strong and attention heads."""
    conv = glu = 0
    t, f, c_in = frames, n_features, 1
    for c_out, (tp, fp) in zip(filters, pooling):
        conv += t * f * c_in * c_out * 9
        glu += t * f * c_out * c_out
        t, f, c_in = t // tp, f // fp, c_out
    gru = 0
    for layer in range(layers):
        inp = c_in if layer == 0 else 2 * hidden
        gru += 2 * t * 3 * (inp * hidden + hidden * hidden)
    heads = 2 * t * 2 * hidden * n_classes
    return {"Conv2d": conv, "Linear": glu + heads, "GRU": gru}


def test_desed_crnn_macs_match_the_layer_shapes():
    """The DESED configuration (conf/model/crnn.yaml, conf/features/mel.yaml), 10 classes, one 10-s clip at 16 kHz."""
    frontend, scaler, net = FrontEnd(), TorchScaler("instance", "minmax", [1, 2]), CRNN(10)
    block = deployed_complexity(frontend, scaler, net, 160_000, 16_000)
    frames = 1 + 160_000 // 256  # 626
    hand = _hand_counts(128, frames, net.filters, net.pooling, 128, 2, 10)
    mel = frames * (2048 // 2 + 1) * 128  # the filterbank product; the FFT itself is not counted
    assert block["macs_by_layer"] == {**hand, "MelScale": mel}
    assert block["macs_network"] == sum(hand.values())
    assert block["macs_frontend"] == mel
    assert block["macs"] == sum(hand.values()) + mel
    assert block["parameters"] == 1_112_420 == sum(p.numel() for p in net.parameters())
    assert block["clip_duration_s"] == 10.0
    # The count runs on a copy: the caller's modules keep their mode and device.
    assert net.training and frontend.training


@pytest.mark.parametrize("activation", ["glu", "relu"])
def test_small_crnn_other_shapes(activation):
    """Non-square pooling, one GRU layer, ReLU (no gate layers): still the hand count."""
    net = CRNN(
        3,
        n_features=32,
        filters=[4, 8],
        pooling=[[2, 4], [2, 8]],
        rnn_hidden=6,
        rnn_layers=1,
        activation=activation,
        attention=False,
    ).eval()
    count = count_macs(net, torch.zeros(1, 32, 100))
    hand = _hand_counts(32, 100, [4, 8], [(2, 4), (2, 8)], 6, 1, 3)
    hand["Linear"] -= 2 * (100 // 4) * 2 * 6 * 3 // 2  # no attention head
    if activation == "relu":
        hand["Linear"] = 25 * 2 * 6 * 3  # the strong head only
    assert count.by_layer == hand
    assert count.total == sum(hand.values())


def test_unfitted_dataset_scaler_is_counted_without_being_touched():
    """A dataset scaler not fitted yet (as at the start of training) does not stop the count, and stays unfitted."""
    scaler = TorchScaler("dataset", "standard", [1, 2])
    block = deployed_complexity(
        FrontEnd(n_fft=512, win_length=512, n_mels=32),
        scaler,
        CRNN(2, n_features=32, filters=[4], pooling=[[1, 32]], rnn_hidden=4, rnn_layers=1),
        16_000,
        16_000,
    )
    assert block["macs_scaler"] == 0 and block["macs"] > 0
    assert not bool(scaler.fitted)


def test_thop_count_and_10_s_of_audio_whatever_the_clip_length():
    """The DESED CRNN's THOP-rule count is the organisers' 930.902 M; a model trained on 2-s clips spends on 10 s
    of audio the MACs of the nine half-overlapping windows sed.infer cuts it into."""
    from sed.dcase.complexity import per_10s
    from sed.evaluation.windows import WindowGrid

    block = deployed_complexity(FrontEnd(), TorchScaler("instance", "minmax", [1, 2]), CRNN(10), 160_000, 16_000)
    assert block["macs_thop"] == 930_901_932
    ten = per_10s(block, WindowGrid(160_000, 156, 1024, 78), 16_000)  # a 10-s training clip: one window
    assert (ten["windows"], ten["macs_thop"], ten["macs"]) == (1, 930_901_932, block["macs"])

    short = deployed_complexity(FrontEnd(), TorchScaler("instance", "minmax", [1, 2]), CRNN(10), 32_000, 16_000)
    ten = per_10s(short, WindowGrid(32_000, 31, 1024, 15), 16_000)
    assert ten["windows"] == 1 + -(-(160_000 - 32_000) // (15 * 1024))  # 10 windows of 15-frame hops
    assert ten["macs_thop"] == ten["windows"] * short["macs_thop"]
