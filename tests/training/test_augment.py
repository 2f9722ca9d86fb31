import itertools

import pytest
import torch

from sed.training.augment import (
    filter_augment,
    filter_gains,
    frame_shift,
    mask_time_frequency,
    mixup,
)


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


# ---------------------------------------------------------------------------------------------- FilterAugment
def _segments(row: torch.Tensor) -> list[tuple[int, int]]:
    """``(start, stop)`` of the runs of equal values of a 1-D tensor."""
    cuts = [0, *(torch.nonzero(row[1:] != row[:-1]).squeeze(1) + 1).tolist(), row.numel()]
    return list(itertools.pairwise(cuts))


def test_filter_augment_step_gains_are_constant_per_band_and_within_range():
    torch.manual_seed(0)
    magnitude = torch.ones(500, 64, 3)
    gains_db = 20 * torch.log10(
        filter_augment(magnitude, db_range=(-4.0, 6.0), n_bands=(3, 6), min_bandwidth=5, kind="step")
    )
    assert torch.equal(gains_db[..., 0], gains_db[..., 2])  # one filter per clip, the same for every frame
    gains_db = gains_db[..., 0]
    assert (
        gains_db.min() >= -4.0 - 1e-4
        and gains_db.max() <= 6.0 + 1e-4
        and gains_db.min() < -3.5
        and gains_db.max() > 5.5
    )
    counts = set()
    for row in gains_db:
        bands = _segments(row)  # equal neighbours are one band: two bands never draw the same float gain
        counts.add(len(bands))
        assert all(stop - start >= 5 for start, stop in bands), bands
    assert counts == {3, 4, 5, 6}


def test_filter_augment_linear_gains_are_continuous_piecewise_linear_within_range():
    torch.manual_seed(1)
    gains = filter_gains(300, 64, db_range=(-6.0, 6.0), n_bands=(2, 4), min_bandwidth=8, kind="linear")
    assert gains.min() >= -6.0 and gains.max() <= 6.0
    slopes = torch.diff(gains, dim=1)
    for row in slopes:
        runs = _segments(torch.round(row * 1e3))  # a straight piece has a constant slope
        assert 2 <= len(runs) <= 4 and all(stop - start >= 7 for start, stop in runs[:-1]), runs
    assert slopes.abs().max() < 12.0 / 8 + 1e-4  # no jump: at most the full range over the narrowest band


def test_filter_augment_is_the_identity_at_prob_zero_and_applies_at_the_given_rate():
    torch.manual_seed(2)
    magnitude = torch.rand(400, 32, 5) + 0.1
    assert torch.equal(filter_augment(magnitude, prob=0.0), magnitude)
    changed = (filter_augment(magnitude, prob=0.25) != magnitude).flatten(1).any(dim=1).float().mean()
    assert 0.18 < float(changed) < 0.32


def test_filter_augment_with_fewer_bins_than_bands_of_min_width():
    torch.manual_seed(3)
    gains = filter_gains(50, 10, n_bands=(3, 6), min_bandwidth=6, kind="step")  # room for one band only
    assert all(len(_segments(row)) == 1 for row in gains)


def test_filter_augment_bad_keys_name_the_key():
    with pytest.raises(ValueError, match="filter_augment.kind"):
        filter_gains(2, 16, kind="notch")
    with pytest.raises(ValueError, match="db_range"):
        filter_gains(2, 16, db_range=(6.0, -6.0))


# ------------------------------------------------------------------------------------------------ frame shift
def test_frame_shift_moves_an_event_and_its_labels_by_the_same_time():
    torch.manual_seed(0)
    pool, n, extra = 4, 15, 3  # 63 feature frames, 15 label frames: 3 trailing frames past the labels
    rows = 200
    features = torch.zeros(rows, 8, n * pool + extra)
    strong = torch.zeros(rows, 2, n)
    features[:, 2:5, 5 * pool : 9 * pool] = 1.0  # an event on label frames 5..8 of class 1
    strong[:, 1, 5:9] = 1.0
    features[:, :, n * pool :] = 7.0  # the tail keeps its place
    shifted, labels = frame_shift(features, strong, std_frames=12.0, time_pooling=pool)
    assert torch.equal(shifted[..., n * pool :], features[..., n * pool :])
    moves = []
    for i in range(rows):
        event_frames = torch.nonzero(shifted[i, 3, : n * pool] == 1.0).squeeze(1)
        label_frames = torch.nonzero(labels[i, 1]).squeeze(1)
        assert event_frames.numel() == 4 * pool and label_frames.numel() == 4
        assert set((event_frames // pool).tolist()) == set(label_frames.tolist())  # frame i is label frame i // pool
        s = (
            (int(label_frames[0]) - 5) % n
            if 0 not in label_frames.tolist() or 14 not in label_frames.tolist()
            else None
        )
        if s is not None:
            assert torch.equal(shifted[i, :, : n * pool], torch.roll(features[i, :, : n * pool], s * pool, dims=-1))
            moves.append(s if s <= n // 2 else s - n)
        assert torch.equal(labels[i, 0], strong[i, 0])
    assert len(set(moves)) > 5 and 0 in moves


def test_frame_shift_draws_gaussian_shifts_in_whole_output_frames():
    torch.manual_seed(1)
    pool, n = 4, 400
    strong = torch.zeros(4000, 1, n)
    strong[:, 0, 0] = 1.0  # the shift is where the one-frame event went
    _, labels = frame_shift(torch.zeros(4000, 1, n * pool), strong, std_frames=40.0, time_pooling=pool)
    shifts = labels[:, 0].argmax(dim=1)
    shifts = torch.where(shifts > n // 2, shifts - n, shifts).float() * pool  # in feature frames
    assert abs(float(shifts.std()) - 40.0) < 2.5 and abs(float(shifts.mean())) < 2.5
    assert torch.equal(frame_shift(torch.ones(3, 1, 8), torch.ones(3, 1, 2), 40.0, 4, prob=0.0)[1], torch.ones(3, 1, 2))


def test_frame_shift_refuses_features_shorter_than_the_labels():
    with pytest.raises(ValueError, match="time_pooling"):
        frame_shift(torch.zeros(1, 4, 30), torch.zeros(1, 2, 8), 10.0, 4)


# -------------------------------------------------------------------------------------------- SpecAugment masks
@pytest.mark.parametrize("axis", ["time", "freq"])
def test_masks_are_bands_up_to_the_requested_width(axis):
    torch.manual_seed(4)
    x = torch.randn(400, 16, 40)
    width = 6
    out = mask_time_frequency(x, width if axis == "time" else 0, width if axis == "freq" else 0, n_masks=1)
    changed = out != x
    seen = set()
    for row in changed:
        lines = row.all(dim=0) if axis == "time" else row.all(dim=1)  # whole frames (time) or whole bins (freq)
        assert torch.equal(row, lines[None, :].expand_as(row) if axis == "time" else lines[:, None].expand_as(row))
        idx = torch.nonzero(lines).squeeze(1)
        if idx.numel():
            assert int(idx[-1] - idx[0]) + 1 == idx.numel()  # one contiguous band
        seen.add(idx.numel())
    assert seen == set(range(width + 1))  # widths uniform in [0, width]


def test_masks_at_prob_zero_change_nothing_and_n_masks_add_bands():
    torch.manual_seed(5)
    x = torch.randn(300, 16, 200)
    assert torch.equal(mask_time_frequency(x, 10, 4, n_masks=2, prob=0.0), x)
    one = (mask_time_frequency(x, 10, 0, n_masks=1) != x).all(dim=1).sum(dim=1).float().mean()
    three = (mask_time_frequency(x, 10, 0, n_masks=3) != x).all(dim=1).sum(dim=1).float().mean()
    assert 4.0 < float(one) < 6.0 and float(three) > 2.5 * float(one)  # mean width 5 per mask, rarely overlapping
    half = (mask_time_frequency(x, 10, 4, prob=0.5) != x).flatten(1).any(dim=1).float().mean()
    assert 0.35 < float(half) < 0.55  # half the clips chosen, a few of them drawing two empty masks


# ------------------------------------------------------------------------------------ in the training step
def test_training_step_inputs_teacher_clean_and_shifted_with_the_labels_student_perturbed():
    from conftest import tiny_module

    module = tiny_module(
        ["a", "b"],
        **{
            "training.mixup.enabled": False,
            "training.augment.filter_augment.prob": 1.0,
            "training.augment.frame_shift.prob": 1.0,
            "training.augment.frame_shift.std_frames": 20.0,
            "training.augment.spec_augment.prob": 1.0,
        },
    )
    pool, n = module.student.time_pooling, module.encoder.n_frames
    g = torch.Generator().manual_seed(0)
    rows = 6
    batch = {
        "audio": 0.1 * torch.randn(rows, 16000, generator=g),
        "weak": torch.ones(rows, 2),
        "strong": (torch.rand(rows, 2, n, generator=g) > 0.5).float(),
        "has_strong": torch.ones(rows, dtype=torch.bool),
        "has_weak": torch.zeros(rows, dtype=torch.bool),
    }
    clean = module.features(batch["audio"])
    torch.manual_seed(3)
    student, teacher, strong, weak = module.augmented_features(batch)
    assert torch.equal(weak, batch["weak"]) and student.shape == teacher.shape == clean.shape
    shifts = []
    for i in range(rows):
        # The per-clip min-max scaler does not see a circular shift: the teacher's input is the clean one, rolled.
        (s,) = [
            s
            for s in range(n)
            if torch.allclose(teacher[i, :, : n * pool], torch.roll(clean[i, :, : n * pool], s * pool, -1), atol=1e-5)
        ]
        assert torch.equal(strong[i], torch.roll(batch["strong"][i], s, -1))
        shifts.append(s)
        assert not torch.allclose(student[i], teacher[i], atol=1e-3)  # the student's input is filtered and masked
    assert any(shifts)
    torch.manual_seed(3)
    again = module.augmented_features(batch)
    assert all(torch.equal(a, b) for a, b in zip(again, (student, teacher, strong, weak)))  # a seed fixes the draws


def test_a_bad_augment_key_fails_at_construction_naming_it():
    from conftest import tiny_module

    with pytest.raises(ValueError, match="training.augment.frame_shift.prob"):
        tiny_module(["a"], **{"training.augment.frame_shift.prob": 1.5})


def test_train_runs_end_to_end_with_every_augmentation(long_augmented_run):
    """train.py with filter augment (kind=step), frame shift and SpecAugment (2 masks) all on: conftest's
    long_augmented_run (also the reliability tests' resume reference)."""
    import json

    run_dir = long_augmented_run
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    from omegaconf import OmegaConf

    augment = OmegaConf.load(run_dir / ".hydra" / "config.yaml").training.augment  # the run had them all on
    assert augment.filter_augment.prob == augment.frame_shift.prob == augment.spec_augment.prob == 0.5
    assert augment.filter_augment.kind == "step" and augment.spec_augment.n_masks == 2
    for model in ("student", "teacher"):
        assert "psds1" in json.loads((run_dir / "test" / model / "metrics.json").read_text())
