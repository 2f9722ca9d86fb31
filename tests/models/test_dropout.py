"""Dropout with word-cut CPU masks: the Bernoulli distribution of nn.Dropout, reproducible from the seed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sed.models.crnn import CRNN
from sed.models.dropout import KEEP_RESOLUTION, Dropout, keep_mask, scaled_keep_mask


def _within(rate: float, keep: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(rate - keep) <= sigmas * math.sqrt(keep * (1 - keep) / n)


@pytest.mark.parametrize("keep", [0.5, 0.8, 0.1, 0.7])
def test_masks_keep_each_element_independently_with_the_given_probability(keep):
    torch.manual_seed(0)
    shape = (7, 33, 65, 31)  # not a multiple of 64 or 4 elements: the tail of the last word is cut off
    mask = keep_mask(shape, keep)
    assert mask.shape == shape and mask.dtype == torch.bool
    flat = mask.flatten().float()
    n = flat.numel()
    assert _within(flat.mean().item(), keep, n)
    # every bit position of the random words (64 at 0.5, 4 slices otherwise) is used alike
    period = 64 if keep == 0.5 else 4
    cut = flat[: n - n % period].view(-1, period).mean(0)
    assert all(_within(r, keep, n // period) for r in cut.tolist())
    # neighbours and the same element of the next mask are uncorrelated (a shared bit would correlate them)
    both = (flat[1:] * flat[:-1]).mean().item()
    assert _within(both, keep * keep, n, sigmas=6)
    again = keep_mask(shape, keep).flatten().float()
    assert _within((flat * again).mean().item(), keep * keep, n, sigmas=6)


def test_keep_probability_is_rounded_to_16_bits():
    torch.manual_seed(1)
    keep = 0.3
    want = round(keep * 65536) / 65536
    n = 4_000_000
    rate = keep_mask((n,), keep).float().mean().item()
    assert abs(want - keep) <= KEEP_RESOLUTION / 2
    assert _within(rate, want, n)
    assert keep_mask((1000,), 1.0).all() and not keep_mask((1000,), 0.0).any()
    with pytest.raises(ValueError, match="keep probability"):
        keep_mask((3,), 1.5)


def test_masks_come_from_the_seeded_generator():
    torch.manual_seed(3)
    a = keep_mask((5, 100), 0.5), keep_mask((5, 100), 0.2)
    torch.manual_seed(3)
    b = keep_mask((5, 100), 0.5), keep_mask((5, 100), 0.2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], keep_mask((5, 100), 0.5))
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(99)
    assert torch.equal(keep_mask((5, 100), 0.5, generator=g), a[0])


@pytest.mark.parametrize("keep", [0.5, 0.8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_scaled_mask_is_keep_mask_over_keep_in_the_layout_of_its_tensor(keep, dtype, channels_last):
    """The mask dropout multiplies by: keep_mask's draws (the same random words) as 0 or 1/keep, in the dtype and
    memory format of the tensor it scales."""
    like = torch.empty(3, 5, 7, 13, dtype=dtype)  # 1,365 elements: not a whole number of bytes or words
    if channels_last:
        like = like.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(7)
    mask = scaled_keep_mask(like, keep)
    torch.manual_seed(7)
    want = keep_mask(like.shape, keep).to(dtype) / keep
    assert mask.dtype == dtype and mask.shape == like.shape and torch.equal(mask, want)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert mask.is_contiguous(memory_format=fmt)
    next_draw = torch.rand(3)  # the generator moved on as far as keep_mask moves it
    torch.manual_seed(7)
    scaled_keep_mask(like, keep)
    assert torch.equal(torch.rand(3), next_draw)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_dropout_zeroes_dropped_elements_scales_kept_ones_and_backpropagates_the_mask(p):
    torch.manual_seed(0)
    x = (torch.rand(4, 8, 50, 16) + 0.5).requires_grad_()
    layer = Dropout(p).train()
    out = layer(x)
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / (1 - p))
    assert _within(kept.float().mean().item(), 1 - p, kept.numel())
    weights = torch.randn_like(x)
    (out * weights).sum().backward()
    assert torch.allclose(x.grad, weights * kept / (1 - p))


def test_dropout_is_the_identity_in_eval_mode_or_at_zero_and_torch_dropout_otherwise():
    x = torch.randn(3, 5, 7)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    torch.manual_seed(5)
    want = nn.Dropout(0.5).train()(x)
    torch.manual_seed(5)
    assert torch.equal(Dropout(0.5, fast=False).train()(x), want)  # fast=False: nn.Dropout's own draws
    assert "fast=True" in repr(Dropout(0.5))


def test_crnn_uses_fast_masks_unless_asked_not_to():
    kw = dict(n_classes=3, n_features=64, filters=(4, 8), pooling=((2, 8), (2, 8)), rnn_hidden=8)
    fast, plain = CRNN(**kw), CRNN(**kw, fast_dropout=False)
    layers = [m for m in fast.modules() if isinstance(m, nn.Dropout)]
    assert len(layers) == 3 and all(isinstance(m, Dropout) and m.fast for m in layers)
    assert not any(getattr(m, "fast", False) for m in plain.modules())
    plain.load_state_dict(fast.state_dict())  # the same parameters and checkpoint keys
    x = torch.randn(2, 64, 40)
    assert torch.equal(fast.eval()(x).strong, plain.eval()(x).strong)
    torch.manual_seed(0)
    out = fast.train()(x)
    torch.manual_seed(0)
    assert not torch.equal(out.strong, plain.train()(x).strong)  # other masks
    assert torch.isfinite(out.strong).all()
