import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sed.models.crnn import CRNNOutput
from sed.training.losses import class_balance_weights, consistency_losses, supervised_losses


def _output(strong_logits: torch.Tensor, weak_logits: torch.Tensor) -> CRNNOutput:
    return CRNNOutput(strong_logits, weak_logits, torch.sigmoid(strong_logits), torch.sigmoid(weak_logits))


def test_weak_rows_get_no_strong_loss_and_strong_rows_no_weak_loss():
    torch.manual_seed(0)
    strong_logits = torch.randn(4, 3, 5, requires_grad=True)
    weak_logits = torch.randn(4, 3, requires_grad=True)
    strong_t = (torch.rand(4, 3, 5) > 0.5).float()
    weak_t = (torch.rand(4, 3) > 0.5).float()
    has_strong = torch.tensor([True, True, False, False])
    has_weak = torch.tensor([False, False, True, False])
    losses = supervised_losses(_output(strong_logits, weak_logits), strong_t, weak_t, has_strong, has_weak)
    (losses["strong"] + losses["weak"]).backward()
    assert strong_logits.grad[2:].abs().sum() == 0  # weak and unlabeled rows: no strong gradient
    assert strong_logits.grad[:2].abs().sum() > 0
    assert weak_logits.grad[[0, 1, 3]].abs().sum() == 0
    assert weak_logits.grad[2].abs().sum() > 0
    expected = F.binary_cross_entropy(torch.sigmoid(strong_logits[:2]), strong_t[:2])
    torch.testing.assert_close(losses["strong"], expected)


def test_missing_subset_gives_zero_loss_with_graph():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    none = torch.zeros(2, dtype=torch.bool)
    losses = supervised_losses(_output(logits, logits.mean(-1)), torch.zeros(2, 3, 5), torch.zeros(2, 3), none, none)
    assert losses["strong"].item() == 0.0 and losses["strong"].requires_grad


def test_consistency_is_mse_to_detached_teacher():
    s = _output(torch.randn(2, 3, 5, requires_grad=True), torch.randn(2, 3, requires_grad=True))
    t = _output(torch.randn(2, 3, 5, requires_grad=True), torch.randn(2, 3, requires_grad=True))
    losses = consistency_losses(s, t)
    torch.testing.assert_close(losses["consistency_strong"], ((s.strong - t.strong) ** 2).mean())
    (losses["consistency_strong"] + losses["consistency_weak"]).backward()
    assert t.strong_logits.grad is None and s.strong_logits.grad is not None


def test_class_balance_weights_raise_classes_rarer_than_the_median():
    frac = np.array([0.08, 0.04, 0.02, 0.005, 0.0])  # median of the present classes: 0.03
    np.testing.assert_allclose(class_balance_weights(frac, 1.0), [1.0, 1.0, 1.5, 6.0, 6.0])
    np.testing.assert_allclose(class_balance_weights(frac, 0.5), [1.0, 1.0, 1.5**0.5, 6.0**0.5, 6.0**0.5])
    np.testing.assert_array_equal(class_balance_weights(frac, 0.0), np.ones(5))


def test_strong_pos_weight_weights_each_class_positive_frames():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 6)
    targets = (torch.rand(3, 2, 6) > 0.6).float()
    rows = torch.tensor([True, False, True])
    weights = torch.tensor([1.0, 4.0])
    got = supervised_losses(_output(logits, logits.mean(-1)), targets, targets.amax(-1), rows, rows, weights)["strong"]
    p, t = torch.sigmoid(logits[rows]), targets[rows]
    w = weights[:, None]
    expected = -(w * t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    torch.testing.assert_close(got, expected)
    unweighted = supervised_losses(_output(logits, logits.mean(-1)), targets, targets.amax(-1), rows, rows)["strong"]
    assert got.item() > unweighted.item() == pytest.approx(F.binary_cross_entropy(p, t).item())
