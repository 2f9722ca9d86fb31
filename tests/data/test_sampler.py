from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

from sed.data.sampler import MixedBatchSampler

SIZES = [30, 40, 100]
BATCH = [3, 4, 8]
OFFSETS = [0, 30, 70]


def subset_of(idx: int) -> int:
    return 0 if idx < 30 else 1 if idx < 70 else 2


def test_exact_per_subset_counts_and_order():
    s = MixedBatchSampler(SIZES, BATCH, seed=1)
    batches = list(s)
    assert len(batches) == len(s)
    for b in batches:
        assert len(b) == 15
        assert [subset_of(i) for i in b] == [0] * 3 + [1] * 4 + [2] * 8
    assert s.batch_slices == [slice(0, 3), slice(3, 7), slice(7, 15)]
    assert s.batch_size == 15


def test_epoch_length_rules():
    assert len(MixedBatchSampler(SIZES, BATCH, epoch_length="min")) == min(30 // 3, 40 // 4, 100 // 8) == 10
    assert len(MixedBatchSampler(SIZES, BATCH, epoch_length="max")) == max(10, 10, math.ceil(100 / 8)) == 13
    assert len(MixedBatchSampler(SIZES, BATCH, epoch_length=25)) == 25
    with pytest.raises(ValueError, match="epoch_length"):
        MixedBatchSampler(SIZES, BATCH, epoch_length="longest")


def test_min_has_no_repeats_and_max_covers_everything():
    batches = list(MixedBatchSampler(SIZES, BATCH, epoch_length="min"))
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    assert all(0 <= i < sum(SIZES) for i in flat)
    seen = {i for b in MixedBatchSampler(SIZES, BATCH, epoch_length="max") for i in b}
    assert seen == set(range(sum(SIZES)))
    long = [i for b in MixedBatchSampler(SIZES, BATCH, epoch_length=30) for i in b]
    counts = Counter(long)
    assert set(counts) == set(range(sum(SIZES)))  # cycled: every clip of every subset appears


def test_determinism_and_set_epoch():
    a = MixedBatchSampler(SIZES, BATCH, seed=7)
    b = MixedBatchSampler(SIZES, BATCH, seed=7)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating again without set_epoch repeats the epoch
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert second != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(MixedBatchSampler(SIZES, BATCH, seed=8)) != first


def test_no_shuffle_is_sequential():
    batches = list(MixedBatchSampler([4, 6], [2, 3], shuffle=False))
    assert batches == [[0, 1, 4, 5, 6], [2, 3, 7, 8, 9]]


@pytest.mark.parametrize("epoch_length", ["min", "max", 20])
def test_ranks_disjoint_and_equal_length(epoch_length):
    world = 3
    per_rank = [
        MixedBatchSampler(SIZES, BATCH, seed=3, epoch_length=epoch_length, num_replicas=world, rank=r)
        for r in range(world)
    ]
    lengths = {len(s) for s in per_rank}
    assert len(lengths) == 1
    sets = []
    for s in per_rank:
        s.set_epoch(2)
        batches = list(s)
        assert len(batches) == len(s)
        for b in batches:
            assert [subset_of(i) for i in b] == [0] * 3 + [1] * 4 + [2] * 8
        sets.append({i for b in batches for i in b})
    for r in range(world):
        for q in range(r + 1, world):
            assert not sets[r] & sets[q]
    if epoch_length == "min":
        # Per rank: min(30//3 // 3, 40//3 // 4, 100//3 // 8) = min(3, 3, 4)
        assert lengths == {3}


def test_zero_batch_subset_skipped():
    s = MixedBatchSampler([10, 0, 20], [2, 0, 4])
    for b in s:
        assert len(b) == 6 and all(0 <= i < 30 for i in b)
        assert sum(i < 10 for i in b) == 2
        assert sum(i >= 10 for i in b) == 4


def test_empty_or_too_small_subsets_raise_clear_errors():
    with pytest.raises(ValueError, match="weak is empty"):
        MixedBatchSampler([10, 0, 20], [2, 2, 4], names=["strong", "weak", "unlabeled"])
    with pytest.raises(ValueError, match="no batch.*strong: 3 clips per rank < batch size 4"):
        MixedBatchSampler([3, 50], [4, 4], names=["strong", "unlabeled"])
    with pytest.raises(ValueError, match="fewer than 4 ranks"):
        MixedBatchSampler([3, 50], [1, 1], num_replicas=4, rank=0)
    with pytest.raises(ValueError, match="same length"):
        MixedBatchSampler([3, 50], [1])
    with pytest.raises(ValueError, match="rank"):
        MixedBatchSampler([3, 50], [1, 1], num_replicas=2, rank=2)


def test_works_as_dataloader_batch_sampler():
    subsets = [TensorDataset(torch.full((n,), float(k))) for k, n in enumerate(SIZES)]
    loader = DataLoader(ConcatDataset(subsets), batch_sampler=MixedBatchSampler(SIZES, BATCH))
    batches = list(loader)
    assert len(batches) == 10
    for (x,) in batches:
        assert x.tolist() == [0.0] * 3 + [1.0] * 4 + [2.0] * 8


def test_resume_at_skips_the_batches_already_trained_in_that_epoch_only():
    full = MixedBatchSampler([10, 6], [2, 1], seed=4)
    full.set_epoch(3)
    reference = list(full)
    resumed = MixedBatchSampler([10, 6], [2, 1], seed=4)
    resumed.resume_at(3, 2)
    resumed.set_epoch(3)
    assert list(resumed) == reference[2:]
    assert list(resumed) == reference  # once: the next pass is whole
    other = MixedBatchSampler([10, 6], [2, 1], seed=4)
    other.resume_at(3, 2)
    other.set_epoch(4)  # a different epoch is not cut
    assert len(list(other)) == len(other)


def test_item_seeds_follow_the_epoch_and_the_place_not_the_pass():
    """With item_seeds every index comes with the seed of its random crop: the same batches as without, and seeds
    that depend on the epoch and the item's place in it only (a resumed pass gets the seeds of those places)."""
    plain = MixedBatchSampler(SIZES, BATCH, seed=2)
    seeded = MixedBatchSampler(SIZES, BATCH, seed=2, item_seeds=True)
    batches = list(seeded)
    assert [[i for i, _ in b] for b in batches] == list(plain)
    seeds = [s for b in batches for _, s in b]
    assert len(set(seeds)) == len(seeds)
    seeded.resume_at(0, 3)
    assert list(seeded) == batches[3:]
    seeded.set_epoch(1)
    assert not {s for b in seeded for _, s in b} & set(seeds)
    assert seeded.sampler is seeded  # what Lightning calls set_epoch on every epoch (batch_sampler.sampler)
