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


# ------------------------------------------------------------------ several datasets: class masks
def test_class_mask_takes_unannotated_classes_out_of_the_strong_loss_hand_computed():
    # Logit ln 3 gives p = 0.75; BCE(0.75, y) = -(y ln 0.75 + (1 - y) ln 0.25).
    logits = torch.full((2, 2, 2), float(np.log(3.0)), requires_grad=True)
    targets = torch.tensor([[[1.0, 0.7], [1.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]])  # row 0: soft target 0.7
    mask = torch.tensor([[True, False], [True, True]])  # row 0's dataset does not annotate class 1
    rows = torch.tensor([True, True])
    got = supervised_losses(_output(logits, logits[..., 0]), targets, targets.amax(-1), rows, rows, class_mask=mask)
    a, b = -np.log(0.75), -np.log(0.25)  # BCE of a positive, of a negative
    soft = -(0.7 * np.log(0.75) + 0.3 * np.log(0.25))
    row0 = (a + soft + 0 + 0) / 4  # class 1's two frames add 0 but count in the mean (DESED_task's BCELoss)
    row1 = (b + b + a + b) / 4
    assert got["strong"].item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    got["strong"].backward()
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 0].abs().sum() > 0 and logits.grad[1].abs().sum() > 0


def test_class_mask_matches_the_2024_baseline_zeroing_outputs_and_targets():
    """The DCASE 2024 baseline sets the unannotated classes' probabilities and targets to 0 and averages BCELoss
    and MSELoss over every element: the masked losses here give the same values."""
    torch.manual_seed(1)
    s_logits, t_logits = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    s_weak, t_weak = torch.randn(4, 3), torch.randn(4, 3)
    strong_t = torch.rand(4, 3, 5)  # soft targets
    weak_t = (torch.rand(4, 3) > 0.5).float()
    mask = torch.tensor([[True, True, False], [True, True, False], [False, True, True], [True, True, True]])
    has_strong = torch.tensor([True, True, True, False])
    has_weak = torch.tensor([False, False, False, True])
    student, teacher = _output(s_logits, s_weak), _output(t_logits, t_weak)
    got = supervised_losses(student, strong_t, weak_t, has_strong, has_weak, class_mask=mask)
    got.update(consistency_losses(student, teacher, rows=torch.tensor([False, True, True, True]), class_mask=mask))
    m3 = mask[:, :, None].float()
    zeroed_p, zeroed_y = torch.sigmoid(s_logits) * m3, strong_t * m3
    torch.testing.assert_close(got["strong"], F.binary_cross_entropy(zeroed_p[:3], zeroed_y[:3]))
    weak_p, weak_y = torch.sigmoid(s_weak) * mask, weak_t * mask
    torch.testing.assert_close(got["weak"], F.binary_cross_entropy(weak_p[3:], weak_y[3:]))
    t_zeroed = torch.sigmoid(t_logits) * m3
    torch.testing.assert_close(got["consistency_strong"], F.mse_loss(zeroed_p[1:], t_zeroed[1:]))
    torch.testing.assert_close(
        got["consistency_weak"], F.mse_loss(torch.sigmoid(s_weak)[1:] * mask[1:], torch.sigmoid(t_weak)[1:] * mask[1:])
    )


def test_consistency_rows_and_mask_hand_computed():
    strong_s = torch.full((2, 2, 1), 0.5)
    strong_t = torch.tensor([[[0.1], [0.9]], [[0.3], [0.5]]])
    weak_s, weak_t = torch.tensor([[0.5, 0.5], [0.2, 0.2]]), torch.tensor([[0.1, 0.1], [0.2, 0.6]])
    s = CRNNOutput(torch.zeros(2, 2, 1), torch.zeros(2, 2), strong_s, weak_s)
    t = CRNNOutput(torch.zeros(2, 2, 1), torch.zeros(2, 2), strong_t, weak_t)
    mask = torch.tensor([[True, False], [True, True]])
    both = consistency_losses(s, t, class_mask=mask)  # row 0: (0.4^2 + 0) / 2, row 1: (0.2^2 + 0) / 2
    assert both["consistency_strong"].item() == pytest.approx((0.08 + 0.02) / 2)
    assert both["consistency_weak"].item() == pytest.approx((0.08 + 0.16 / 2) / 2)
    second = consistency_losses(s, t, rows=torch.tensor([False, True]), class_mask=mask)
    assert second["consistency_strong"].item() == pytest.approx(0.02)
    unmasked = consistency_losses(s, t)
    assert unmasked["consistency_strong"].item() == pytest.approx((0.16 + 0.16 + 0.04 + 0.0) / 4)
