"""The CRNN block's GLU fused with its dropout: the numbers of the two modules, in every mode the model runs in."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from sed.models.crnn import CRNN
from sed.models.dropout import Dropout
from sed.models.gating import GLU, glu_dropout


def _input(channels_last: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    x = torch.randn(3, 6, 20, 8, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _both(x: torch.Tensor, glu: GLU, p: float, training: bool, fast: bool = True, seed: int = 3):
    """(fused, unfused) outputs on the same dropout draws; the fused one gets its own copy of ``x``."""
    torch.manual_seed(seed)
    fused = glu_dropout(x.clone(), glu, p, training, fast)
    torch.manual_seed(seed)
    plain = Dropout(p, fast).train(training)(glu(x))
    return fused, plain


@pytest.mark.parametrize("p", [0.5, 0.2])
@pytest.mark.parametrize("channels_last", [True, False])
def test_training_output_and_gradients_equal_the_glu_then_dropout(p, channels_last):
    torch.manual_seed(0)
    glu = GLU(6)
    x = _input(channels_last).requires_grad_()
    weights = torch.randn(3, 6, 20, 8)
    grads = []
    for fused in (True, False):
        torch.manual_seed(3)
        out = glu_dropout(x, glu, p, True) if fused else Dropout(p)(glu(x))
        grads.append(
            (out.detach(), *torch.autograd.grad((out * weights).sum(), (x, glu.linear.weight, glu.linear.bias)))
        )
    assert torch.equal(grads[0][0], grads[1][0])  # the same masks and products
    assert (grads[0][0] == 0).float().mean().item() == pytest.approx(p, abs=0.1)
    for a, b in zip(grads[0][1:], grads[1][1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.glu = GLU(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(1)  # one mask for every evaluation gradcheck makes
        return glu_dropout(x, self.glu, 0.5, True)


def test_fused_gradients_pass_gradcheck():
    torch.manual_seed(0)
    block = _Block().double()
    x = torch.randn(2, 4, 5, 3, dtype=torch.double).contiguous(memory_format=torch.channels_last).requires_grad_()
    w, b = (t.detach().clone().requires_grad_() for t in (block.glu.linear.weight, block.glu.linear.bias))
    assert torch.autograd.gradcheck(
        lambda x, w, b: functional_call(block, {"glu.linear.weight": w, "glu.linear.bias": b}, (x,)), (x, w, b)
    )


@pytest.mark.parametrize("p", [0.5, 0.0])
def test_without_autograd_and_in_evaluation_the_output_equals_the_unfused_one(p):
    glu = GLU(6)
    x = _input()
    with torch.inference_mode():  # how the mean teacher runs: train mode, no autograd
        fused, plain = _both(x, glu, p, training=True)
    assert torch.equal(fused, plain)
    with torch.no_grad():
        fused, plain = _both(x, glu, p, training=False)
    assert torch.equal(fused, plain)
    fused, plain = _both(x, glu, p, training=False)  # evaluation with autograd on: the modules themselves
    assert torch.equal(fused, plain)


def test_torch_masks_and_autocast_take_the_unfused_path():
    glu = GLU(6)
    x = _input()
    fused, plain = _both(x, glu, 0.5, training=True, fast=False)  # nn.Dropout's own draws
    assert torch.equal(fused, plain)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, plain = _both(x, glu, 0.5, training=True)
    assert fused.dtype == plain.dtype and torch.equal(fused, plain)


def test_crnn_training_step_numbers_are_those_of_the_separate_modules(monkeypatch):
    """The whole CRNN with the fused blocks against the same CRNN running GLU and Dropout as modules."""
    import sed.models.crnn as crnn

    torch.manual_seed(0)
    model = CRNN(
        n_classes=3,
        n_features=64,
        filters=(4, 8, 8),
        pooling=((2, 4), (2, 4), (1, 4)),
        rnn_hidden=8,
        channels_last=True,
    )
    x = torch.randn(3, 64, 100)
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(
                crnn, "glu_dropout", lambda x, glu, p, training, fast: Dropout(p, fast).train(training)(glu(x))
            )
        model.zero_grad()
        torch.manual_seed(2)
        out = model.train()(x)
        (out.strong.mean() + out.weak_logits.mean()).backward()
        torch.manual_seed(2)
        with torch.inference_mode():
            teacher = model(x).strong
        results.append((out.strong.detach(), teacher, [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    scale = max(g.abs().max() for g in results[1][2])
    for a, b in zip(results[0][2], results[1][2]):
        assert (a - b).abs().max() <= 1e-5 * scale
