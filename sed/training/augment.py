"""Batch augmentations on features and their targets."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def mixup(
    features: torch.Tensor, targets: list[torch.Tensor], alpha: float, mode: str = "soft",
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
    perm = torch.randperm(features.shape[0]).to(features.device)
    concentration = torch.tensor(float(alpha))
    c = float(torch.distributions.Beta(concentration, concentration).sample())
    mixed = c * features + (1.0 - c) * features[perm]
    if mode == "soft":
        new_targets = [c * y + (1.0 - c) * y[perm] for y in targets]
    else:
        new_targets = [torch.maximum(y, y[perm]) for y in targets]
    return mixed, new_targets + [c * v + (1.0 - c) * v[perm] for v in inputs]


def mask_time_frequency(
    features: torch.Tensor,
    time_mask_param: int,
    freq_mask_param: int,
    n_masks: int = 1,
) -> torch.Tensor:
    """SpecAugment-style masking of ``[B, F, T]`` features: per row, ``n_masks`` time and frequency bands
    of random width (up to the given parameters) are set to the row's mean. Targets are unchanged."""
    b, f, t = features.shape
    out = features.clone()
    fill = features.mean(dim=(1, 2), keepdim=True)
    device = features.device
    frames = torch.arange(t, device=device).view(1, 1, t)
    bins = torch.arange(f, device=device).view(1, f, 1)
    for _ in range(n_masks):
        for size, param, axis in ((t, time_mask_param, frames), (f, freq_mask_param, bins)):
            if param <= 0:
                continue
            width = torch.randint(0, min(param, size) + 1, (b, 1, 1)).to(device)
            start = (torch.rand((b, 1, 1)).to(device) * (size - width + 1)).long()
            region = (axis >= start) & (axis < start + width)
            out = torch.where(region, fill.expand_as(out), out)
    return out
