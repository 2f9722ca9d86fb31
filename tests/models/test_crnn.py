"""CRNN: shapes through the front-end, parameter count, weak logits, configuration errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sed.features.frontend import FrontEnd
from sed.models import CRNN, CRNNOutput
from sed.models.crnn import weighted_mean_logit

SMALL = dict(filters=(4, 8, 8), pooling=((2, 4), (2, 4), (1, 8)), rnn_hidden=8, n_features=128)


def _small(**kwargs) -> CRNN:
    torch.manual_seed(0)
    return CRNN(n_classes=3, **{**SMALL, **kwargs}).eval()


def test_desed_shapes_through_frontend_and_encoder_frames() -> None:
    torch.manual_seed(0)
    model = CRNN(n_classes=10).eval()
    wav = torch.randn(2, 10 * 16000) * 0.1
    feats = FrontEnd()(wav)
    assert feats.shape == (2, 128, 626)
    with torch.no_grad():
        out = model(feats)
    assert isinstance(out, CRNNOutput)
    assert out.strong_logits.shape == out.strong.shape == (2, 10, 156)
    assert out.weak_logits.shape == out.weak.shape == (2, 10)
    assert model.time_pooling == 4
    # Frames the label encoder produces: (10 s * 16000 // hop 256) // time_pooling 4 = 625 // 4 = 156.
    assert model.n_output_frames(626) == (10 * 16000 // 256) // 4 == 156
    encoder_mod = pytest.importorskip("sed.data.encoder")
    enc = encoder_mod.LabelEncoder([f"c{i}" for i in range(10)], time_pooling=model.time_pooling)
    assert enc.n_frames == out.strong.shape[-1]


def test_desed_parameter_count() -> None:
    assert sum(p.numel() for p in CRNN(n_classes=10).parameters()) == 1_112_420
    # Context gating has the same parameters; ReLU drops the 7 channel Linear layers.
    assert sum(p.numel() for p in CRNN(n_classes=10, activation="cg").parameters()) == 1_112_420
    assert sum(p.numel() for p in CRNN(n_classes=10, activation="relu").parameters()) == 1_112_420 - 71_536


def test_outputs_are_consistent() -> None:
    model = _small()
    out = model(torch.randn(4, 128, 37))
    assert out.strong.shape == (4, 3, 37 // 4)
    assert torch.allclose(out.strong, torch.sigmoid(out.strong_logits))
    assert ((out.weak > 0) & (out.weak < 1)).all()


@pytest.mark.parametrize("attention", [True, False])
def test_weak_logits_equal_logit_of_weak(attention: bool) -> None:
    model = _small(attention=attention).double()
    out = model(torch.randn(4, 128, 40, dtype=torch.float64))
    torch.testing.assert_close(out.weak_logits, torch.logit(out.weak), rtol=1e-9, atol=1e-9)
    if not attention:
        torch.testing.assert_close(out.weak, out.strong.mean(-1))


def test_weak_attention_pooling_semantics() -> None:
    model = _small().double()
    x = torch.randn(2, 128, 40, dtype=torch.float64)
    out = model(x)
    # Recompute the attention pooling by hand from the hidden states.
    h = model.rnn_out_dropout(model.rnn(model.cnn(x.unsqueeze(1).transpose(2, 3)).squeeze(-1).transpose(1, 2))[0])
    att = torch.softmax(model.attention_head(h), dim=-1).clamp(min=1e-7, max=1.0)
    strong = torch.sigmoid(model.strong_head(h))
    weak = (strong * att).sum(1) / att.sum(1)
    torch.testing.assert_close(out.weak, weak, rtol=1e-12, atol=1e-12)


def test_bce_with_logits_on_weak_logits_equals_bce_on_weak() -> None:
    model = _small()
    out = model(torch.randn(4, 128, 40))
    target = torch.randint(0, 2, out.weak.shape).float()
    a = F.binary_cross_entropy_with_logits(out.weak_logits, target)
    b = F.binary_cross_entropy(out.weak, target)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [20.0, -20.0, 1e4, -1e4])
def test_weak_logits_finite_for_extreme_inputs(scale: float) -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.full((2, 3, 10), scale)
    z[:, :, 0] = scale / 2  # not constant over time
    log_w = torch.randn(2, 3, 10, generator=g) * (3 if abs(scale) < 100 else 20)
    logits = weighted_mean_logit(z, log_w)
    assert torch.isfinite(logits).all()
    p = (torch.softmax(log_w.double(), -1) * torch.sigmoid(z.double())).sum(-1)
    if abs(scale) < 100:
        # float32 sigmoid saturates at +-17 (weak == 1 exactly), float64 does not: compare the
        # float32 log-space logit with the float64 direct one.
        torch.testing.assert_close(logits.double(), torch.logit(p), rtol=1e-5, atol=1e-4)
    else:
        # Saturated in any precision: the logit is still finite, large, with the right sign.
        assert (torch.sign(logits) == math.copysign(1, scale)).all() and (logits.abs() > 100).all()
    z.requires_grad_(True)
    weighted_mean_logit(z, log_w).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_model_extreme_inputs_give_finite_weak_logits() -> None:
    model = _small()
    with torch.no_grad():
        model.strong_head.bias.fill_(60.0)  # sigmoid saturates to exactly 1 in float32
        out = model(torch.randn(2, 128, 40))
    assert (out.weak == 1).all() and torch.isfinite(out.weak_logits).all()
    assert (out.weak_logits > 30).all()


def test_gradients_reach_all_parameters() -> None:
    model = _small().train()
    out = model(torch.randn(3, 128, 40))
    (out.strong_logits.mean() + out.weak_logits.mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_outputs_float32_under_autocast() -> None:
    model = _small()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 128, 16))
    assert all(t.dtype == torch.float32 for t in out)
    assert torch.isfinite(out.weak_logits).all()


@pytest.mark.parametrize("activation", ["glu", "cg", "relu"])
def test_activations(activation: str) -> None:
    out = _small(activation=activation)(torch.randn(2, 128, 16))
    assert out.strong.shape == (2, 3, 4)


def test_glu_and_context_gating_formulas() -> None:
    from sed.models.crnn import GLU, ContextGating

    x = torch.randn(2, 5, 3, 4)
    glu, cg = GLU(5), ContextGating(5)
    lin = lambda m: torch.einsum("bchw,oc->bohw", x, m.linear.weight) + m.linear.bias[None, :, None, None]  # noqa: E731
    torch.testing.assert_close(glu(x), lin(glu) * torch.sigmoid(x))
    torch.testing.assert_close(cg(x), x * torch.sigmoid(lin(cg)))


def test_multichannel_input() -> None:
    model = _small(n_in_channels=2)
    assert model(torch.randn(2, 2, 128, 16)).weak.shape == (2, 3)
    with pytest.raises(ValueError, match="n_in_channels=2"):
        model(torch.randn(2, 3, 128, 16))


def test_frequency_must_reduce_to_one() -> None:
    with pytest.raises(ValueError, match=r"n_features=64 .*pooling.* reduces the frequency axis to 0"):
        CRNN(n_classes=10, n_features=64)
    with pytest.raises(ValueError, match="n_features=256 .* to 2"):
        CRNN(n_classes=10, n_features=256)


def test_shape_errors_name_config_keys() -> None:
    model = _small()
    with pytest.raises(ValueError, match="64 feature bins .* n_features=128"):
        model(torch.randn(2, 64, 40))
    with pytest.raises(ValueError, match="time_pooling=4"):
        model(torch.randn(2, 128, 3))
    with pytest.raises(ValueError, match=r"\[B, F, T\]"):
        model(torch.randn(128, 40))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(filters=(4, 8)), "pooling"),
        (dict(activation="gelu"), "activation"),
        (dict(kernel_size=4), "kernel_size"),
    ],
)
def test_bad_config_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _small(**kwargs)


def test_class_mask_masks_the_attention_pooling_as_the_2024_baseline() -> None:
    """Unannotated classes leave the softmax over classes (their logit -1e30), so the annotated classes share the
    attention; the weak prediction is sum_t strong * att / sum_t att with att clamped at 1e-7 (DESED_task)."""
    model = _small()
    feats = torch.randn(2, 128, 32)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    with torch.no_grad():
        masked, plain = model(feats, class_mask=mask), model(feats)
        x, _ = model.rnn(model.cnn_frames(feats))
        strong = torch.sigmoid(model.strong_head(x))  # [B, T', C]
        att_logits = model.attention_head(x)
    torch.testing.assert_close(masked.strong, plain.strong)  # frame predictions untouched
    torch.testing.assert_close(masked.weak[1], plain.weak[1])  # an all-annotated row is unchanged
    att = torch.softmax(att_logits.masked_fill(~mask[:, None, :], -1e30), dim=-1).clamp(min=1e-7)
    expected = (strong * att).sum(1) / att.sum(1)
    torch.testing.assert_close(masked.weak, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(masked.weak[0], plain.weak[0])  # annotated classes renormalised without class 1
    torch.testing.assert_close(masked.weak[0, 1], strong[0, :, 1].mean())  # floor weight everywhere: the mean
    torch.testing.assert_close(torch.sigmoid(masked.weak_logits), masked.weak, rtol=1e-5, atol=1e-6)
