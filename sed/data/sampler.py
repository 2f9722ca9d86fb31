"""Batch sampler that mixes fixed numbers of clips from several subsets in every batch."""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class MixedBatchSampler(Sampler[list[int]]):
    """Batches holding exactly ``batch_sizes[i]`` clips of subset ``i`` (e.g. 12 strong, 12 weak,
    24 unlabeled), for a ``ConcatDataset`` of the subsets in the same order.

    Indices are global (subset ``i`` starts at ``sum(subset_sizes[:i])``), and within a batch the
    rows of subset 0 come first, then subset 1, and so on, so ``batch_slices`` tells the loss
    which rows are which (the datasets' ``has_strong``/``has_weak`` masks say the same).

    Epoch length (batches per epoch, per rank), with ``n_i`` the clips of subset ``i`` seen by
    this rank (``subset_sizes[i] // num_replicas``) and ``b_i = batch_sizes[i]``:

    * ``"min"`` (DESED rule): ``min_i(n_i // b_i)``; no clip repeats within an epoch and the
      clips of larger subsets not reached this epoch get their turn in later epochs.
    * ``"max"``: ``max_i(ceil(n_i / b_i))``; every clip is seen at least once, smaller subsets
      are reshuffled and cycled.
    * an int ``k``: exactly ``k`` batches, subsets cycled as needed.

    Subsets with batch size 0 are skipped. Each epoch draws a fresh permutation per subset from
    ``seed + epoch`` (call :meth:`set_epoch`), identical on every rank; rank ``r`` keeps
    positions ``r, r + R, ...`` of it (truncated to equal length), so ranks see disjoint clips
    and the same number of batches.

    :meth:`resume_at` makes the next pass over one epoch start after the batches a run interrupted
    mid-epoch had already trained on, so the resumed epoch sees exactly the remaining batches.

    With ``item_seeds``, every index comes as ``(index, seed)``: a seed for that item's random draws (crop,
    channel) derived from ``seed``, the epoch and the item's place in it, so the draws do not depend on which
    loader worker loads the item or on what was loaded before (a resumed run draws what the uninterrupted one
    drew). :class:`sed.data.datasets.SeededConcatDataset` takes such indices.
    """

    def __init__(
        self,
        subset_sizes: Sequence[int],
        batch_sizes: Sequence[int],
        shuffle: bool = True,
        seed: int = 0,
        epoch_length: str | int = "min",
        num_replicas: int = 1,
        rank: int = 0,
        names: Sequence[str] | None = None,
        item_seeds: bool = False,
    ) -> None:
        self.subset_sizes = [int(s) for s in subset_sizes]
        self.batch_sizes = [int(b) for b in batch_sizes]
        self.names = list(names) if names is not None else [f"subset {i}" for i in range(len(self.subset_sizes))]
        if len(self.subset_sizes) != len(self.batch_sizes) or len(self.names) != len(self.subset_sizes):
            raise ValueError(
                f"subset_sizes ({len(self.subset_sizes)}), batch_sizes ({len(self.batch_sizes)}) "
                f"and names ({len(self.names)}) must have the same length"
            )
        if any(b < 0 for b in self.batch_sizes) or sum(self.batch_sizes) == 0:
            raise ValueError(f"batch sizes must be >= 0 and not all 0, got {self.batch_sizes}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.item_seeds = bool(item_seeds)
        self.epoch = 0
        self._resume: tuple[int, int] | None = None
        self.offsets = np.concatenate([[0], np.cumsum(self.subset_sizes)[:-1]]).astype(np.int64)
        self.per_rank = [s // self.num_replicas for s in self.subset_sizes]
        for name, size, n, b in zip(self.names, self.subset_sizes, self.per_rank, self.batch_sizes):
            if b > 0 and n == 0:
                what = "is empty" if size == 0 else f"has {size} clips, fewer than {self.num_replicas} ranks"
                raise ValueError(f"{name} {what} but its batch size is {b} (empty dataset)")
        active = [i for i, b in enumerate(self.batch_sizes) if b > 0]
        if epoch_length == "min":
            self.n_batches = min(self.per_rank[i] // self.batch_sizes[i] for i in active)
        elif epoch_length == "max":
            self.n_batches = max(math.ceil(self.per_rank[i] / self.batch_sizes[i]) for i in active)
        elif isinstance(epoch_length, (int, np.integer)) and not isinstance(epoch_length, bool):
            self.n_batches = int(epoch_length)
        else:
            raise ValueError(f"epoch_length must be 'min', 'max' or an int, got {epoch_length!r}")
        if self.n_batches < 1:
            short = [
                f"{self.names[i]}: {self.per_rank[i]} clips per rank < batch size {self.batch_sizes[i]}"
                for i in active
                if self.per_rank[i] < self.batch_sizes[i]
            ]
            raise ValueError(f"epoch would have no batch ({'; '.join(short) or epoch_length})")
        self.epoch_length = epoch_length

    @property
    def batch_size(self) -> int:
        return sum(self.batch_sizes)

    @property
    def batch_slices(self) -> list[slice]:
        """Rows of each subset within every batch."""
        ends = np.cumsum(self.batch_sizes)
        return [slice(int(e - b), int(e)) for e, b in zip(ends, self.batch_sizes)]

    @property
    def sampler(self) -> MixedBatchSampler:
        """This sampler: Lightning calls ``set_epoch`` at the start of every training epoch on a loader's
        ``batch_sampler.sampler`` (as on torch's ``BatchSampler``), never on the batch sampler itself."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch`` (deterministic: seeded by ``seed + epoch``)."""
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Skip the first ``batches_done`` batches the next time ``epoch`` is iterated (once)."""
        self._resume = (int(epoch), int(batches_done)) if 0 < batches_done < self.n_batches else None

    def __len__(self) -> int:
        return self.n_batches

    def _subset_stream(self, i: int, needed: int) -> np.ndarray:
        """``needed`` local indices of subset ``i`` for this rank, cycling with reshuffles."""
        size, n = self.subset_sizes[i], self.per_rank[i]
        rng = np.random.default_rng([(self.seed + self.epoch) % 2**63, i])
        perm = rng.permutation(size) if self.shuffle else np.arange(size)
        mine = perm[self.rank : self.num_replicas * n : self.num_replicas]
        chunks, total = [mine], n
        # Cycling: extra passes reshuffle this rank's own share, so ranks stay disjoint.
        cyc = np.random.default_rng([(self.seed + self.epoch) % 2**63, i, self.rank, 1])
        while total < needed:
            chunks.append(cyc.permutation(mine) if self.shuffle else mine)
            total += n
        return np.concatenate(chunks)[:needed]

    def __iter__(self) -> Iterator[list[Any]]:
        streams = [
            self._subset_stream(i, self.n_batches * b) + self.offsets[i] if b > 0 else None
            for i, b in enumerate(self.batch_sizes)
        ]
        first = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            first, self._resume = self._resume[1], None
        for k in range(first, self.n_batches):
            batch: list[int] = []
            for s, b in zip(streams, self.batch_sizes):
                if b > 0:
                    batch.extend(int(x) for x in s[k * b : (k + 1) * b])
            if self.item_seeds:  # one seed per row of batch k of this epoch, on this rank
                seeds = np.random.SeedSequence([self.seed % 2**63, self.epoch, k, self.rank]).generate_state(len(batch))
                yield list(zip(batch, (int(x) for x in seeds)))
            else:
                yield batch
