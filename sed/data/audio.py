"""Audio reading (soundfile), mono mixdown, resampling and fixed-length crops."""

from __future__ import annotations

import functools
import logging
import os
import threading

import numpy as np
import soundfile as sf
import torch

from sed.utils.errors import UserError

logger = logging.getLogger(__name__)

CHANNEL_MODES = ("mean", "random")
NONFINITE_POLICIES = ("error", "zero")
_logged_rates: set[tuple[int, int]] = set()
_logged_lock = threading.Lock()


class AudioError(RuntimeError, UserError):
    """An audio file is missing or cannot be decoded; the message names the file."""


def _log_resample_once(orig: int, target: int, hint: str) -> None:
    with _logged_lock:
        if (orig, target) in _logged_rates:
            return
        _logged_rates.add((orig, target))
    logger.info("resampling audio from %d Hz to %d Hz (logged once per rate pair)%s", orig, target, hint)


#: How a training run's user sets the non-finite policy to "zero" (what the error suggests); sed.infer passes its own.
NONFINITE_OPTION = "data.nonfinite_audio=zero"


def check_finite(
    data: np.ndarray, path: str | os.PathLike, nonfinite: str = "error", option: str = NONFINITE_OPTION
) -> np.ndarray:
    """Catch NaN/Inf samples where audio is read: one of them turns a network's weights or scores into NaN.

    ``nonfinite="error"`` raises :class:`AudioError` naming the file and the ``option`` that zeroes them (the
    calling command's); ``"zero"`` replaces them with 0 and logs a warning naming the file. Float WAV/FLAC can
    hold them; integer PCM cannot.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    if data.dtype.kind != "f":
        return data
    bad = ~np.isfinite(data)
    if not bad.any():
        return data
    n = int(bad.sum())
    if nonfinite == "error":
        raise AudioError(
            f"{path}: {n} non-finite sample(s) (NaN/Inf) in {data.size}; fix the file, or set "
            f"{option} to replace them with silence"
        )
    logger.warning("%s: %d non-finite sample(s) (NaN/Inf) replaced with 0", path, n)
    return np.where(bad, np.zeros((), dtype=data.dtype), data)


def read_raw(
    path: str | os.PathLike, nonfinite: str = "error", option: str = NONFINITE_OPTION
) -> tuple[np.ndarray, int]:
    """Decode a file to float32 ``[channels, samples]`` at its own rate; errors name the file.

    Non-finite samples are handled by :func:`check_finite` with policy ``nonfinite`` (``option``: see there).
    """
    try:
        data, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioError(f"{path}: audio file not found") from None
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as err:
        if not os.path.exists(path):
            raise AudioError(f"{path}: audio file not found") from None
        raise AudioError(f"{path}: cannot read audio file: {err}") from None
    return np.ascontiguousarray(check_finite(data, path, nonfinite, option).T), int(rate)


@functools.lru_cache(maxsize=16)
def _resampler(orig: int, target: int, dtype: torch.dtype) -> torch.nn.Module:
    import torchaudio.transforms as AT

    return AT.Resample(orig, target, dtype=dtype)


def resample(wav: torch.Tensor, orig: int, target: int, hint: str = "") -> torch.Tensor:
    """Resample along the last axis with torchaudio's windowed sinc (no-op when rates match).

    The sinc kernel of each rate pair is built once and reused (building it per clip cost 1.4-2.9x the
    resampling itself; benchmarks/data_loading.py); the output is that of ``torchaudio.functional.resample``.
    ``hint`` is appended to the one-time log line (e.g. how the caller could avoid resampling).
    """
    if orig == target:
        return wav
    _log_resample_once(orig, target, hint)
    with torch.no_grad():
        return _resampler(int(orig), int(target), wav.dtype)(wav)


def select_channel(wav: torch.Tensor, channel: str = "mean", generator: torch.Generator | None = None) -> torch.Tensor:
    """``[channels, samples]`` -> ``[samples]``: channel mean, or one channel drawn at random."""
    if channel not in CHANNEL_MODES:
        raise ValueError(f"channel must be one of {CHANNEL_MODES}, got {channel!r}")
    if wav.shape[0] == 1:
        return wav[0]
    if channel == "mean":
        return wav.mean(dim=0)
    idx = int(torch.randint(wav.shape[0], (1,), generator=generator))
    return wav[idx]


def read_audio(
    path: str | os.PathLike,
    sample_rate: int,
    channel: str = "mean",
    generator: torch.Generator | None = None,
    nonfinite: str = "error",
) -> torch.Tensor:
    """Read a file as 1-D float32 at ``sample_rate`` (non-finite samples: see :func:`check_finite`).

    Multi-channel audio becomes mono by channel mean (``channel="mean"``) or by picking one
    channel at random (``"random"``, using ``generator``). Mixing happens before resampling
    (both are linear, so this is equivalent and cheaper).
    """
    data, rate = read_raw(path, nonfinite)
    wav = select_channel(torch.from_numpy(data), channel, generator)
    return resample(wav, rate, sample_rate).to(torch.float32).contiguous()


def fit_length(
    wav: torch.Tensor,
    n_samples: int,
    random_crop: bool,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, int]:
    """Pad with zeros at the end, or crop, to ``n_samples``; return ``(wav, crop_start)``.

    A crop starts at 0 unless ``random_crop`` (training), in which case the start is uniform
    over all valid positions. The start (in samples) lets callers shift labels with the audio.
    """
    n = wav.shape[-1]
    if n == n_samples:
        return wav, 0
    if n < n_samples:
        pad = wav.new_zeros(wav.shape[:-1] + (n_samples - n,))
        return torch.cat([wav, pad], dim=-1), 0
    start = 0
    if random_crop:
        start = int(torch.randint(n - n_samples + 1, (1,), generator=generator))
    return wav[..., start : start + n_samples], start
