"""Batch augmentations on features and their targets: mixup, FilterAugment, frame shift, SpecAugment-style masks.

Every random draw comes from torch's global (CPU) generator, so a run is reproducible under a fixed seed and a
resumed run (whose generator state Lightning restores) draws what the uninterrupted run drew.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from omegaconf import OmegaConf

from sed.run.config import AugmentConfig
from sed.training.execution import host_to_device, subset_rows


def mixup(
    features: torch.Tensor,
    targets: list[torch.Tensor],
    alpha: float,
    mode: str = "soft",
    inputs: Sequence[torch.Tensor] = (),
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Mix each row with another row of the same batch slice.

    One coefficient ``c ~ Beta(alpha, alpha)`` for the slice and a random permutation ``p``:
    ``x' = c x + (1 - c) x[p]``. Targets follow: ``soft`` mixes them with the same ``c``;
    ``hard`` takes the union ``max(y, y[p])`` (an event present in either input is present in the mix).
    ``inputs`` (other inputs of the same rows, e.g. a pretrained encoder's embeddings) are mixed exactly like
    the features and returned after the targets. Draws from torch's global generator, so runs are reproducible
    under a fixed seed.
    """
    if mode not in ("soft", "hard"):
        raise ValueError(f"training.mixup.mode must be 'soft' or 'hard', got {mode!r}")
    perm = host_to_device(torch.randperm(features.shape[0]), features.device)
    concentration = torch.tensor(float(alpha))
    c = float(torch.distributions.Beta(concentration, concentration).sample())
    mixed = c * features + (1.0 - c) * features[perm]
    if mode == "soft":
        new_targets = [c * y + (1.0 - c) * y[perm] for y in targets]
    else:
        new_targets = [torch.maximum(y, y[perm]) for y in targets]
    return mixed, new_targets + [c * v + (1.0 - c) * v[perm] for v in inputs]


def mix_groups(batch: dict[str, Any]) -> list[slice | list[int]]:
    """The rows of each group mixup mixes within, from host-side tensors: with ``mix_group`` (the datamodule's
    per-item group: one per dataset and labelled kind, -1 for none) its groups in order, else the strong rows and
    the weak rows (one dataset)."""
    if "mix_group" in batch:
        groups = batch["mix_group"].cpu()
        return [subset_rows(groups == g) for g in sorted(set(groups.tolist()) - {-1})]
    return [subset_rows(batch[f"has_{k}"].cpu()) for k in ("strong", "weak")]


def mixup_within_subsets(
    x: torch.Tensor, batch: dict[str, Any], mix: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup of a mixed batch within each labelled subset (:func:`mix_groups`: strong rows with strong rows, weak
    with weak, and with several datasets only rows of one dataset together, as the DCASE 2024 baseline: their
    classes and masks agree): ``x`` (features or linear magnitudes, ``training.mixup.domain``) and the batch's
    targets, with one coin flip per group, or one for all (``mix.shared_draw``, as the DCASE baseline). A
    pretrained encoder's embeddings (``batch["inputs"]``) are mixed like the features, in place in the batch. The
    groups' rows come from ``batch["subset_rows"]`` when the module found them on the host before the transfer (no
    device sync), else from the batch. Returns ``(x, strong, weak)``."""
    strong, weak = batch["strong"], batch["weak"]
    x, strong, weak = x.clone(), strong.clone(), weak.clone()
    inputs = batch.setdefault("inputs", {})
    inputs.update({k: v.clone() for k, v in inputs.items()})
    shared = float(torch.rand(())) < mix.prob if mix.shared_draw else None
    rows = batch.get("subset_rows") or mix_groups(batch)
    for idx in rows:
        if len(range(x.shape[0])[idx] if isinstance(idx, slice) else idx) < 2:
            continue
        if isinstance(idx, list):
            idx = host_to_device(torch.tensor(idx), x.device)
        if shared if shared is not None else float(torch.rand(())) < mix.prob:
            x[idx], (strong[idx], weak[idx], *mixed) = mixup(
                x[idx], [strong[idx], weak[idx]], mix.alpha, mix.mode, [v[idx] for v in inputs.values()]
            )
            for v, m in zip(inputs.values(), mixed):
                v[idx] = m
    return x, strong, weak


def mask_time_frequency(
    features: torch.Tensor,
    time_mask_param: int,
    freq_mask_param: int,
    n_masks: int = 1,
    prob: float = 1.0,
) -> torch.Tensor:
    """SpecAugment-style masking of ``[B, F, T]`` features: each row, with probability ``prob``, gets ``n_masks``
    time bands and ``n_masks`` frequency bands, each of a width drawn uniformly from ``[0, param]`` frames (bins)
    at a uniform position, set to the row's mean. Targets are unchanged (the masks are short against events)."""
    b, f, t = features.shape
    out = features.clone()
    fill = features.mean(dim=(1, 2), keepdim=True)
    device = features.device
    chosen = host_to_device(torch.rand((b, 1, 1)) < prob, device)
    frames = torch.arange(t, device=device).view(1, 1, t)
    bins = torch.arange(f, device=device).view(1, f, 1)
    for _ in range(n_masks):
        for size, param, axis in ((t, time_mask_param, frames), (f, freq_mask_param, bins)):
            if param <= 0:
                continue
            width = host_to_device(torch.randint(0, min(param, size) + 1, (b, 1, 1)), device)
            start = (host_to_device(torch.rand((b, 1, 1)), device) * (size - width + 1)).long()
            region = (axis >= start) & (axis < start + width) & chosen
            out = torch.where(region, fill.expand_as(out), out)
    return out


FILTER_KINDS = ("step", "linear")


def _check_filter(db_range: Sequence[float], n_bands: Sequence[int], min_bandwidth: int, kind: str) -> None:
    if kind not in FILTER_KINDS:
        raise ValueError(f"training.augment.filter_augment.kind must be one of {FILTER_KINDS}, got {kind!r}")
    if (
        len(db_range) != 2
        or len(n_bands) != 2
        or not db_range[0] <= db_range[1]
        or not 1 <= n_bands[0] <= n_bands[1]
        or min_bandwidth < 1
    ):
        raise ValueError(
            "training.augment.filter_augment needs db_range [low, high] with low <= high, n_bands [min, max] with "
            f"1 <= min <= max and min_bandwidth >= 1; got db_range={list(db_range)}, n_bands={list(n_bands)}, "
            f"min_bandwidth={min_bandwidth}"
        )


def filter_gains(
    n_rows: int,
    n_bins: int,
    db_range: Sequence[float] = (-6.0, 6.0),
    n_bands: Sequence[int] = (3, 6),
    min_bandwidth: int = 6,
    kind: str = "linear",
    prob: float = 1.0,
) -> torch.Tensor:
    """Random FilterAugment filters (Nam et al., ICASSP 2022) as gains in dB, ``[n_rows, n_bins]``.

    Per row, with probability ``prob`` (else all gains 0): a number of bands uniform in ``[n_bands[0], n_bands[1]]``
    (fewer when ``n_bins`` cannot hold that many bands of ``min_bandwidth`` bins), band edges at uniformly random
    bins with every band at least ``min_bandwidth`` bins wide, and gains uniform in ``db_range``. ``step``: one
    gain per band, constant over the band. ``linear``: one gain per band edge (the lowest and highest bins
    included), linearly interpolated between edges: a continuous piecewise-linear response.
    """
    _check_filter(db_range, n_bands, min_bandwidth, kind)
    lo_db, hi_db = (float(v) for v in db_range)
    lo_n, hi_n = (int(v) for v in n_bands)
    chosen = torch.rand(n_rows) < prob
    bands = torch.randint(lo_n, hi_n + 1, (n_rows,)).clamp(max=max(n_bins // min_bandwidth, 1))
    width = torch.clamp(n_bins // bands, max=min_bandwidth)  # the narrowest band a row allows
    slack = n_bins - bands * width  # bins shared out at random on top of the minimum widths
    # Inner edges j = 1 .. hi_n - 1: j minimum widths plus the j-th smallest of (bands - 1) uniform offsets in
    # [0, slack]; the offsets of absent bands are the slack itself, which pushes their edges to n_bins (empty bands).
    offsets = (torch.rand(n_rows, hi_n - 1) * (slack + 1)[:, None]).floor().clamp(max=slack[:, None])
    absent = torch.arange(1, hi_n)[None, :] >= bands[:, None]
    offsets = torch.where(absent, slack[:, None].float(), offsets).sort(dim=1).values
    inner = torch.clamp(torch.arange(1, hi_n)[None, :] * width[:, None] + offsets, max=n_bins)
    edges = torch.cat([torch.zeros(n_rows, 1), inner, torch.full((n_rows, 1), float(n_bins))], dim=1)
    bins = torch.arange(n_bins, dtype=torch.float32)
    band = (bins[None, :, None] >= inner[:, None, :]).sum(dim=2)  # [n_rows, n_bins]: the band of each bin
    if kind == "step":
        gains = torch.gather(lo_db + (hi_db - lo_db) * torch.rand(n_rows, hi_n), 1, band)
    else:
        at_edges = lo_db + (hi_db - lo_db) * torch.rand(n_rows, hi_n + 1)
        start, stop = torch.gather(edges, 1, band), torch.gather(edges, 1, band + 1)
        t = (bins[None, :] - start) / (stop - start)
        g0, g1 = torch.gather(at_edges, 1, band), torch.gather(at_edges, 1, band + 1)
        gains = g0 + t * (g1 - g0)
    return gains * chosen[:, None]


def filter_augment(magnitude: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """FilterAugment of magnitude (amplitude) spectrograms ``[B, F, T]``: each row times a random filter of
    :func:`filter_gains` (``kwargs``), a gain of ``g`` dB scaling a bin by ``10 ** (g / 20)``."""
    b, f, _ = magnitude.shape
    gains = host_to_device(filter_gains(b, f, **kwargs), magnitude.device)
    return magnitude * torch.pow(10.0, gains / 20.0).to(magnitude.dtype)[:, :, None]


def frame_shift(
    features: torch.Tensor, strong: torch.Tensor, std_frames: float, time_pooling: int, prob: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll features ``[B, F, T]`` and strong targets ``[B, C, T']`` in time by the same random amount.

    Per row, with probability ``prob``: a shift drawn from ``N(0, std_frames)`` feature frames and rounded to a
    whole number ``s`` of output frames; the first ``T' * time_pooling`` feature frames (those the targets cover)
    roll circularly by ``s * time_pooling`` and the targets by ``s``, so an event stays on its labels exactly
    (feature frame ``i`` belongs to output frame ``i // time_pooling``). Feature frames past the targets stay put.
    A shift by any number of feature frames with the label shift rounded (as DESED_task's ``frame_shift``) would
    leave events up to ``time_pooling - 1`` frames off their labels.
    """
    n = strong.shape[-1]
    span = n * time_pooling
    if features.shape[-1] < span:
        raise ValueError(
            f"frame shift: {features.shape[-1]} feature frames cannot hold {n} target frames of time_pooling "
            f"{time_pooling}"
        )
    b = features.shape[0]
    chosen = torch.rand(b) < prob
    shift = torch.round(torch.randn(b) * float(std_frames) / time_pooling).long() * chosen  # in output frames
    device = features.device
    src = host_to_device(
        torch.remainder(torch.arange(n)[None, :] - shift[:, None], n), device
    )  # rolled[j] = x[(j - s) mod n]
    strong = torch.gather(strong, 2, src[:, None, :].expand(-1, strong.shape[1], -1))
    src = host_to_device(torch.remainder(torch.arange(span)[None, :] - time_pooling * shift[:, None], span), device)
    rolled = torch.gather(features[..., :span], 2, src[:, None, :].expand(-1, features.shape[1], -1))
    return torch.cat([rolled, features[..., span:]], dim=-1), strong


class Augmentations:
    """The augmentations of ``training.augment`` for one training step (each off at ``prob: 0``).

    Frame shift moves the input of both models and the strong targets (the teacher's predictions must stay on
    the student's time axis for the consistency loss). FilterAugment and the SpecAugment masks perturb the
    student's input only; the teacher predicts from the unperturbed input (mean-teacher consistency between a
    perturbed and a clean view).

    FilterAugment multiplies the magnitude spectrogram before the log, the clamp and the scaler: a gain in dB on
    a band of the magnitudes is exactly what a filter applied to the audio does to them, whatever the scaler;
    after a per-clip min-max scaler the same gain would no longer be in dB. Masks go on the normalised features
    (after mixup), where the row mean is a neutral fill.

    The DCASE 2024 baseline (DESED_task ``recipes/dcase2024_task4_baseline``) differs: its trainer gives the
    student and the teacher the same (mixed) features; its only other augmentation is the CRNN's in-model time
    and frequency masking, off in its configuration (``specaugm_*_p: 0``), which would mask the teacher too (it
    forwards in training mode); its ``frame_shift`` (``desed_task/data_augm.py``) is not called by that trainer,
    and FilterAugment is not in it.
    """

    def __init__(self, config: Any, time_pooling: int) -> None:
        node = OmegaConf.create(config if config is not None else {})  # absent in configurations saved before it
        self.cfg = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(AugmentConfig), node), resolve=True)
        self.time_pooling = int(time_pooling)
        for name, part in self.cfg.items():
            if not 0.0 <= part["prob"] <= 1.0:
                raise ValueError(f"training.augment.{name}.prob must be in [0, 1], got {part['prob']}")
        if self.cfg["frame_shift"]["std_frames"] < 0:
            raise ValueError(
                f"training.augment.frame_shift.std_frames must be >= 0, got {self.cfg['frame_shift']['std_frames']}"
            )
        spec = self.cfg["spec_augment"]
        if min(spec["time_mask"], spec["freq_mask"], spec["n_masks"]) < 0:
            raise ValueError(
                f"training.augment.spec_augment: time_mask, freq_mask and n_masks must be >= 0, got {spec}"
            )
        filt = self.cfg["filter_augment"]
        _check_filter(filt["db_range"], filt["n_bands"], filt["min_bandwidth"], filt["kind"])  # now, not at step 1

    def __call__(
        self, magnitude: torch.Tensor, strong: torch.Tensor, features: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(student, teacher, strong)``: frame shift of ``magnitude`` ``[B, F, T]`` and ``strong``, then
        ``features`` (log and scaler) of the student's FilterAugmented and the teacher's clean magnitudes. The
        two are one tensor when FilterAugment is off."""
        shift, filt = self.cfg["frame_shift"], self.cfg["filter_augment"]
        if shift["prob"] > 0:
            magnitude, strong = frame_shift(magnitude, strong, shift["std_frames"], self.time_pooling, shift["prob"])
        teacher = features(magnitude)
        if filt["prob"] <= 0:
            return teacher, teacher, strong
        return features(filter_augment(magnitude, **filt)), teacher, strong

    def mask(self, student: torch.Tensor) -> torch.Tensor:
        """The student's normalised features with SpecAugment-style masks (:func:`mask_time_frequency`)."""
        spec = self.cfg["spec_augment"]
        if spec["prob"] <= 0:
            return student
        return mask_time_frequency(student, spec["time_mask"], spec["freq_mask"], spec["n_masks"], spec["prob"])
