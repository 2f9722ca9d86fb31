import pytest
import torch

from sed.training.augment import mask_time_frequency, mixup


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_mixup_label_arithmetic(mode):
    torch.manual_seed(1)
    n = 6
    x = torch.eye(n).view(n, n, 1)  # row i is the one-hot e_i: the mix reveals c and the permutation
    y = (torch.rand(n, 4) > 0.5).float()
    strong = (torch.rand(n, 4, 3) > 0.5).float()
    mixed, (y_mixed, strong_mixed) = mixup(x, [y, strong], alpha=1.0, mode=mode)  # uniform c: never rounds to 0 or 1
    mixed = mixed.squeeze(-1)
    for i in range(n):
        row = mixed[i].clone()  # c e_i + (1 - c) e_j, where j is the row it was mixed with
        c = float(row[i])
        row[i] = 0.0
        j = int(row.argmax()) if c < 1.0 else i
        if mode == "soft":
            torch.testing.assert_close(y_mixed[i], c * y[i] + (1 - c) * y[j])
            torch.testing.assert_close(strong_mixed[i], c * strong[i] + (1 - c) * strong[j])
        else:
            torch.testing.assert_close(y_mixed[i], torch.maximum(y[i], y[j]))
            torch.testing.assert_close(strong_mixed[i], torch.maximum(strong[i], strong[j]))


def test_mixup_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mixup.mode"):
        mixup(torch.zeros(2, 1), [], 0.2, "bogus")


def test_masking_replaces_bands_with_row_mean():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 40)
    out = mask_time_frequency(x, time_mask_param=10, freq_mask_param=4)
    assert out.shape == x.shape
    changed = out != x
    assert changed.any()
    for b in range(3):
        assert torch.allclose(out[b][changed[b]], x[b].mean().expand(int(changed[b].sum())))
    # A masked time band covers all bins at those frames, or a frequency band all frames at those bins.
    assert torch.equal(mask_time_frequency(x, 0, 0), x)
