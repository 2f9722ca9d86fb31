"""Post-processing of frame-level probabilities: median filtering, score tables, event decoding.

Everything here works on whole arrays (numpy or torch); the only Python loops are over clips and
over distinct filter lengths, never over frames, so decoding a validation set stays cheap.
"""

from __future__ import annotations

import logging
import warnings
from typing import Iterable, Mapping, Sequence, Union

import numpy as np
import pandas as pd

with warnings.catch_warnings():
    # sed_scores_eval pulls in dcase_util, which warns about the deprecated pkg_resources on import.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    import sed_scores_eval  # noqa: F401

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, "torch.Tensor"]  # noqa: F821

STRONG_COLUMNS = ["filename", "onset", "offset", "event_label"]


AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aac", ".aif", ".aiff", ".au", ".mp4", ".webm")


def audio_id(filename: str) -> str:
    """Clip id used as key of score dicts: the filename without its audio extension.

    For real filenames this equals what sed_scores_eval derives from ground-truth and duration
    TSVs. Only a known audio extension is removed, so an id is its own id: DESED names such as
    ``Y00pbt6aJV8_30.000_40.000`` keep their dots.
    """
    name = str(filename)
    if name.lower().endswith(AUDIO_EXTENSIONS):
        return name.rsplit(".", maxsplit=1)[0]
    return name


# --------------------------------------------------------------------------- median filter
def _window_per_class(window: int | Sequence[int], n_classes: int) -> np.ndarray:
    if np.isscalar(window):
        windows = np.full(n_classes, int(window), dtype=np.int64)
    else:
        windows = np.asarray(list(window), dtype=np.int64)
        if windows.shape != (n_classes,):
            raise ValueError(
                f"median filter: got {len(windows)} window lengths for {n_classes} classes "
                "(give one int, or one length per class in class order)"
            )
    if (windows < 1).any():
        raise ValueError(f"median filter window lengths must be >= 1, got {windows.tolist()}")
    return windows


def _median_numpy(x: np.ndarray, n: int) -> np.ndarray:
    """Median over a sliding window of ``n`` frames along the last axis, 'nearest' edges.

    Window for frame i covers i - n//2 … i + (n-1)//2 and the value of rank n//2 is taken,
    exactly like ``scipy.ndimage.median_filter(size=n, mode='nearest')`` along that axis.
    """
    left, right = n // 2, (n - 1) // 2
    pad = [(0, 0)] * (x.ndim - 1) + [(left, right)]
    padded = np.pad(x, pad, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, n, axis=-1)
    return np.partition(windows, n // 2, axis=-1)[..., n // 2]


def _median_torch(x, n: int):
    import torch.nn.functional as F

    left, right = n // 2, (n - 1) // 2
    shape = x.shape
    flat = x.reshape(1, -1, shape[-1])  # replicate padding wants [N, C, T]
    padded = F.pad(flat, (left, right), mode="replicate")
    windows = padded.unfold(-1, n, 1)
    return windows.sort(dim=-1).values[..., n // 2].reshape(shape)


def median_filter(probs: ArrayLike, window: int | Sequence[int]) -> ArrayLike:
    """Median-filter probabilities along time, per class.

    Args:
        probs: ``[C, T]`` or ``[B, C, T]`` numpy array or torch tensor (any device).
        window: one filter length in frames for all classes, or one per class (class order).
            Length 1 leaves a class unchanged.

    Returns:
        Same type, dtype, device and shape as ``probs``.
    """
    is_torch = not isinstance(probs, np.ndarray)
    if probs.ndim not in (2, 3):
        raise ValueError(f"median_filter expects [C, T] or [B, C, T], got shape {tuple(probs.shape)}")
    windows = _window_per_class(window, probs.shape[-2])
    if (windows == 1).all():
        return probs.clone() if is_torch else probs.copy()
    out = probs.clone() if is_torch else probs.copy()
    for n in np.unique(windows):
        if n == 1:
            continue
        idx = np.nonzero(windows == n)[0]
        if is_torch:
            import torch

            sel = torch.as_tensor(idx, device=probs.device)
            out[..., sel, :] = _median_torch(probs[..., sel, :], int(n))
        else:
            out[..., idx, :] = _median_numpy(probs[..., idx, :], int(n))
    return out


# --------------------------------------------------------------------------- score tables
def scores_dataframe(probs: np.ndarray, timestamps: Sequence[float], classes: Sequence[str]) -> pd.DataFrame:
    """``[C, T]`` probabilities as a sed_scores_eval score DataFrame (``onset, offset, *classes``).

    ``timestamps`` holds the T+1 frame boundaries in seconds.
    """
    from sed_scores_eval.base_modules.scores import create_score_dataframe

    probs = _to_numpy(probs)
    if probs.ndim != 2 or probs.shape[0] != len(classes):
        raise ValueError(f"scores_dataframe expects [C={len(classes)}, T] probabilities, got {probs.shape}")
    return create_score_dataframe(probs.T, np.asarray(timestamps, dtype=np.float64), list(classes))


def batch_to_scores(
    probs: ArrayLike | Sequence[ArrayLike],
    filenames: Sequence[str],
    timestamps: Sequence[float] | Sequence[np.ndarray],
    classes: Sequence[str],
    durations: Mapping[str, float] | None = None,
) -> dict[str, pd.DataFrame]:
    """A batch of probabilities as ``{audio_id: score DataFrame}``.

    ``probs`` is ``[B, C, T]`` with ``timestamps`` the ``T + 1`` frame boundaries of every clip, or, for
    clips of different lengths, a sequence of ``[C, T_i]`` arrays with one ``T_i + 1`` boundary array each.
    When ``durations`` (keyed by filename or audio id) knows a clip, frames starting at or after
    its end are dropped and the last frame is cut at the end, so a padded short clip gets no
    scores (hence no detections) past its real length.
    """
    if isinstance(probs, (list, tuple)):
        per_clip = [_to_numpy(p) for p in probs]
        if len(per_clip) != len(filenames) or any(p.ndim != 2 for p in per_clip):
            raise ValueError(f"batch_to_scores expects {len(filenames)} [C, T] arrays")
    else:
        probs = _to_numpy(probs)
        if probs.ndim != 3 or probs.shape[0] != len(filenames):
            raise ValueError(f"batch_to_scores expects [B={len(filenames)}, C, T], got {probs.shape}")
        per_clip = list(probs)
    if len(timestamps) and np.ndim(timestamps[0]) == 1:  # one boundary array per clip
        if len(timestamps) != len(filenames):
            raise ValueError(f"got {len(timestamps)} timestamp arrays for {len(filenames)} clips")
        per_ts = [np.asarray(t, dtype=np.float64) for t in timestamps]
    else:
        per_ts = [np.asarray(timestamps, dtype=np.float64)] * len(filenames)
    out = {}
    for i, filename in enumerate(filenames):
        key = audio_id(filename)
        p, ts = per_clip[i], per_ts[i]
        if ts.shape != (p.shape[-1] + 1,):
            raise ValueError(
                f"{filename}: need {p.shape[-1] + 1} frame boundaries for {p.shape[-1]} frames, got {ts.shape}"
            )
        dur = None
        if durations is not None:
            dur = durations.get(filename, durations.get(key))
        if dur is not None and dur < ts[-1]:
            if dur <= ts[0]:
                raise ValueError(f"duration {dur} of {filename} is not after the first frame start {ts[0]}")
            n = int(np.searchsorted(ts, dur, side="left"))  # frames whose onset is before the end
            ts = ts[: n + 1].copy()
            ts[-1] = float(dur)
            p = p[:, :n]
        out[key] = scores_dataframe(p, ts, classes)
    return out


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    return x.detach().float().cpu().numpy()


def _score_arrays(scores: Mapping[str, pd.DataFrame]):
    """(keys, classes, [(onsets, offsets, [T, C] array)]) from a dict of score DataFrames."""
    keys = sorted(scores.keys())
    if not keys:
        return keys, [], []
    classes = list(scores[keys[0]].columns[2:])
    arrays = []
    for key in keys:
        df = scores[key]
        if list(df.columns[2:]) != classes or list(df.columns[:2]) != ["onset", "offset"]:
            raise ValueError(
                f"scores for {key!r} have columns {list(df.columns)}; expected ['onset', 'offset', *{classes}]"
            )
        values = df.to_numpy(dtype=np.float64)
        arrays.append((values[:, 0], values[:, 1], values[:, 2:]))
    return keys, classes, arrays


def _runs(active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of True in ``active [T, C]``: (class index, first frame, end frame exclusive), sorted by class then time."""
    t, c = active.shape
    padded = np.zeros((c, t + 2), dtype=np.int8)
    padded[:, 1:-1] = active.T
    change = np.diff(padded, axis=1)
    cls_on, start = np.nonzero(change == 1)
    _, stop = np.nonzero(change == -1)
    return cls_on, start, stop


def _thresholds_array(threshold: float | Mapping[str, float], classes: Sequence[str]) -> np.ndarray:
    if isinstance(threshold, Mapping):
        missing = [c for c in classes if c not in threshold]
        if missing:
            raise ValueError(f"threshold dict lacks classes {missing}")
        return np.array([float(threshold[c]) for c in classes])
    return np.full(len(classes), float(threshold))


def _detections(keys, classes, arrays, threshold, filenames, default_extension) -> pd.DataFrame:
    thr = _thresholds_array(threshold, classes)
    names, onsets, offsets, labels = [], [], [], []
    classes_arr = np.asarray(classes, dtype=object)
    for key, (on_t, off_t, values) in zip(keys, arrays):
        cls, start, stop = _runs(values > thr)
        if len(cls) == 0:
            continue
        name = filenames[key] if filenames is not None and key in filenames else key + default_extension
        names.append(np.full(len(cls), name, dtype=object))
        onsets.append(on_t[start])
        offsets.append(off_t[stop - 1])
        labels.append(classes_arr[cls])
    if not names:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(STRONG_COLUMNS, [object, float, float, object])})
    df = pd.DataFrame(
        {
            "filename": np.concatenate(names),
            "onset": np.concatenate(onsets),
            "offset": np.concatenate(offsets),
            "event_label": np.concatenate(labels),
        }
    )
    return df.sort_values(["filename", "onset", "event_label"], kind="stable").reset_index(drop=True)


def detections_from_scores(
    scores: Mapping[str, pd.DataFrame],
    threshold: float | Mapping[str, float],
    filenames: Mapping[str, str] | None = None,
    default_extension: str = ".wav",
) -> pd.DataFrame:
    """Events where the score is strictly above ``threshold`` (one value, or one per class).

    Adjacent active frames are merged into one event (onset of its first frame, offset of its
    last), as sed_scores_eval does, so the result matches its threshold-based metrics.

    Args:
        scores: ``{audio_id: score DataFrame}`` (sed_scores_eval format).
        threshold: decision threshold, or ``{class: threshold}``.
        filenames: ``{audio_id: filename}`` to write the filename column as in the ground truth;
            ids not in it get ``audio_id + default_extension``.

    Returns:
        Strong-label DataFrame ``filename, onset, offset, event_label`` sorted by file and onset.
    """
    keys, classes, arrays = _score_arrays(scores)
    return _detections(keys, classes, arrays, threshold, filenames, default_extension)


def detections_at_thresholds(
    scores: Mapping[str, pd.DataFrame],
    thresholds: Iterable[float],
    filenames: Mapping[str, str] | None = None,
    default_extension: str = ".wav",
) -> dict[float, pd.DataFrame]:
    """``detections_from_scores`` at several thresholds, reading the score tables only once."""
    keys, classes, arrays = _score_arrays(scores)
    return {float(t): _detections(keys, classes, arrays, float(t), filenames, default_extension) for t in thresholds}
