"""Feature normalisation with instance (per clip) or dataset (fitted once) statistics.

``TorchScaler(statistic, normtype)`` normalises features ``[B, F, T]``:

* ``statistic="instance"``: statistics of each clip over ``dims`` (default ``(1, 2)``: all
  frequency bins and frames of that clip). Nothing to fit.
* ``statistic="dataset"``: one statistic per feature bin (index 1), reduced over batch and time,
  computed once by :meth:`TorchScaler.fit` streaming over the training features. ``dims`` is not
  used. The statistics are registered buffers (``mean``, ``std``, ``min``, ``max``, ``count``,
  ``fitted``), so they travel with ``state_dict``/Lightning checkpoints; a fresh unfitted scaler
  accepts a fitted state dict (buffers are resized on load).

Norm types (``std`` is the population standard deviation, ``ddof=0``, for both statistics):

* ``"standard"``: ``(x - mean) / (std + eps)``
* ``"mean"``: ``x - mean``
* ``"minmax"``: ``lo + (hi - lo) * (x - min) / (max - min + eps)`` with ``(lo, hi) = minmax_range``.
  The default range is **(0, 1)** and is part of the scaler's saved configuration, so a checkpoint
  always reproduces the range it was trained with (DESED once changed its implicit range, which
  silently broke older checkpoints).

The front-end signature (``FrontEnd.signature()``) is stored with the scaler (file and state dict);
loading with a different expected signature raises :class:`ScalerMismatchError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sed.utils.errors import UserError
from sed.utils.io import atomic_torch_save

logger = logging.getLogger(__name__)

STATISTICS = ("instance", "dataset")
NORMTYPES = ("standard", "mean", "minmax")
_FILE_FORMAT = "sed.TorchScaler"
_FILE_VERSION = 1
_STAT_BUFFERS = ("mean", "std", "min", "max")


class ScalerMismatchError(ValueError, UserError):
    """A saved scaler does not match the current front-end or configuration."""


class ScalerNotFittedError(RuntimeError):
    """A dataset scaler was used before its statistics were fitted or loaded."""


def _plain(value: Any) -> Any:
    """Normalise a signature value for comparison/serialisation (tuples -> lists, recursively)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def signature_diff(found: dict[str, Any] | None, expected: dict[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two signatures: ``{key: (found, expected)}``.

    A key present on one side only shows ``"<missing>"`` on the other.
    """
    found, expected = _plain(found or {}), _plain(expected or {})
    missing = "<missing>"
    diff = {}
    for key in sorted(set(found) | set(expected)):
        a, b = found.get(key, missing), expected.get(key, missing)
        if a != b:
            diff[key] = (a, b)
    return diff


def _format_diff(diff: dict[str, tuple[Any, Any]], left: str, right: str) -> str:
    return "; ".join(f"{k}: {left}={a!r}, {right}={b!r}" for k, (a, b) in diff.items())


class TorchScaler(nn.Module):
    """Normalise features ``[B, F, T]``; see the module docstring for the formulas."""

    def __init__(
        self,
        statistic: str = "instance",
        normtype: str = "standard",
        dims: Sequence[int] = (1, 2),
        eps: float = 1e-8,
        minmax_range: tuple[float, float] = (0.0, 1.0),
        n_features: int | None = None,
        signature: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if statistic not in STATISTICS:
            raise ValueError(f"TorchScaler statistic={statistic!r} is not one of {STATISTICS}")
        if normtype not in NORMTYPES:
            raise ValueError(f"TorchScaler normtype={normtype!r} is not one of {NORMTYPES}")
        lo, hi = (float(v) for v in minmax_range)
        if not lo < hi:
            raise ValueError(f"TorchScaler minmax_range must be (low, high) with low < high, got {minmax_range}")
        if eps < 0:
            raise ValueError(f"TorchScaler eps must be >= 0, got {eps}")
        self.statistic = statistic
        self.normtype = normtype
        self.dims = tuple(int(d) for d in dims)
        self.eps = float(eps)
        self.minmax_range = (lo, hi)
        #: Front-end signature the statistics belong to (set by the caller; saved with the scaler).
        self.signature: dict[str, Any] | None = dict(signature) if signature is not None else None

        n = 0 if n_features is None else int(n_features)
        for name in _STAT_BUFFERS:
            self.register_buffer(name, torch.zeros(n))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ configuration
    def config(self) -> dict[str, Any]:
        """Constructor arguments (plain values) that define the transform."""
        return {
            "statistic": self.statistic,
            "normtype": self.normtype,
            "dims": list(self.dims),
            "eps": self.eps,
            "minmax_range": list(self.minmax_range),
        }

    @property
    def is_fitted(self) -> bool:
        """True when forward can run (always for instance statistics)."""
        return self.statistic == "instance" or bool(self.fitted)

    @property
    def n_features(self) -> int | None:
        """Number of feature bins of the fitted dataset statistics (None when unfitted)."""
        return int(self.mean.numel()) if bool(self.fitted) else None

    # ------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit(
        self,
        batches: Iterable[Tensor],
        progress: bool = True,
        total: int | None = None,
        desc: str = "Fitting scaler",
    ) -> TorchScaler:
        """Fit dataset statistics by streaming once over ``batches`` of features ``[B, F, T]``.

        Exact: float64 sums of ``x`` and squared deviations are merged per batch (Chan et al.),
        weighted by element counts, so uneven batch sizes do not bias the result. Any previous
        statistics are replaced. For ``statistic="instance"`` there is nothing to fit (no-op).
        """
        if self.statistic == "instance":
            logger.info("TorchScaler(statistic='instance') needs no fitting; fit() ignored")
            return self
        if total is None and hasattr(batches, "__len__"):
            total = len(batches)  # type: ignore[arg-type]
        count = 0
        mean = m2 = vmin = vmax = None
        n_feat = None
        for batch in tqdm(batches, total=total, desc=desc, disable=not progress, unit="batch"):
            if not isinstance(batch, Tensor):
                raise TypeError(f"TorchScaler.fit expects tensors [B, F, T], got {type(batch).__name__}")
            if batch.dim() < 2:
                raise ValueError(f"TorchScaler.fit expects features [B, F, ...], got shape {tuple(batch.shape)}")
            if n_feat is None:
                n_feat = batch.shape[1]
            elif batch.shape[1] != n_feat:
                raise ValueError(
                    f"TorchScaler.fit: batch has {batch.shape[1]} feature bins (dim 1), earlier batches had {n_feat}"
                )
            acc_device = batch.device if batch.device.type not in ("mps",) else torch.device("cpu")
            x = batch.detach().to(acc_device, torch.float64).transpose(0, 1).reshape(n_feat, -1)  # [F, n]
            n_b = x.shape[1]
            if n_b == 0:
                continue
            if not torch.isfinite(x).all():
                raise ValueError("TorchScaler.fit: features contain NaN or inf")
            b_mean = x.mean(dim=1)
            b_m2 = ((x - b_mean[:, None]) ** 2).sum(dim=1)
            b_min, b_max = x.amin(dim=1), x.amax(dim=1)
            if mean is None:
                count, mean, m2, vmin, vmax = n_b, b_mean, b_m2, b_min, b_max
            else:
                new_count = count + n_b
                delta = b_mean - mean
                mean = mean + delta * (n_b / new_count)
                m2 = m2 + b_m2 + delta**2 * (count * n_b / new_count)
                vmin, vmax = torch.minimum(vmin, b_min), torch.maximum(vmax, b_max)
                count = new_count
        if mean is None:
            raise ValueError("TorchScaler.fit: no data (the batch iterable was empty)")
        std = (m2 / count).clamp_min(0.0).sqrt()
        device = self.mean.device
        dtype = self.mean.dtype if self.mean.dtype.is_floating_point else torch.float32
        for name, value in zip(_STAT_BUFFERS, (mean, std, vmin, vmax)):
            setattr(self, name, value.to(device=device, dtype=dtype))
        self.count = torch.tensor(count, dtype=torch.int64, device=device)
        self.fitted = torch.ones((), dtype=torch.bool, device=device)
        logger.info("TorchScaler fitted on %d values per feature bin (%d bins)", count, n_feat)
        return self

    # ------------------------------------------------------------------ forward
    def _instance_stats(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dims = tuple(d % x.dim() for d in self.dims)
        if any(d == 0 for d in dims):
            raise ValueError(f"TorchScaler dims={self.dims} must not include the batch dimension 0")
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True, correction=0) if self.normtype == "standard" else mean
        if self.normtype == "minmax":
            vmin, vmax = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        else:
            vmin = vmax = mean
        return mean, std, vmin, vmax

    def _dataset_stats(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if not bool(self.fitted):
            raise ScalerNotFittedError(
                "TorchScaler(statistic='dataset') used before it was fitted: call fit(...) on the training "
                "features, load a saved scaler (TorchScaler.load) or a checkpoint that contains it"
            )
        n_feat = self.mean.numel()
        if x.dim() < 2 or x.shape[1] != n_feat:
            raise ValueError(
                f"TorchScaler: input has shape {tuple(x.shape)} but the dataset statistics have n_features={n_feat} "
                "(dim 1); the front-end changed since the scaler was fitted"
            )
        shape = [1, n_feat] + [1] * (x.dim() - 2)
        return tuple(getattr(self, n).to(x.dtype).view(shape) for n in _STAT_BUFFERS)  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        orig_dtype = x.dtype
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # statistics in half precision are too coarse
        if self.statistic == "instance":
            mean, std, vmin, vmax = self._instance_stats(x)
        else:
            mean, std, vmin, vmax = self._dataset_stats(x)
        if self.normtype == "standard":
            out = (x - mean) / (std + self.eps)
        elif self.normtype == "mean":
            out = x - mean
        else:
            lo, hi = self.minmax_range
            out = (x - vmin) / (vmax - vmin + self.eps)
            if (lo, hi) != (0.0, 1.0):
                out = out * (hi - lo) + lo
        return out.to(orig_dtype)

    # ------------------------------------------------------------------ state dict
    def get_extra_state(self) -> dict[str, Any]:
        return {"config": self.config(), "signature": _plain(self.signature)}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict):
            return
        config = state.get("config")
        if config is not None:
            diff = signature_diff(config, self.config())
            if diff:
                raise ScalerMismatchError(
                    "TorchScaler state was saved with a different configuration: "
                    + _format_diff(diff, "saved", "this scaler")
                )
        saved_sig = state.get("signature")
        if self.signature is None:
            self.signature = saved_sig
        elif saved_sig is not None:
            diff = signature_diff(saved_sig, self.signature)
            if diff:
                raise ScalerMismatchError(
                    "TorchScaler state was fitted with a different front-end: " + _format_diff(diff, "saved", "current")
                )

    def _load_from_state_dict(  # type: ignore[override]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Dataset statistics have a size known only after fitting: resize our (possibly empty)
        # buffers to the incoming ones so a fresh, unfitted scaler can load a fitted state.
        for name in _STAT_BUFFERS:
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                current = getattr(self, name)
                setattr(self, name, torch.empty_like(state_dict[key], device=current.device, dtype=current.dtype))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write configuration, front-end signature and statistics to ``path`` (atomically)."""
        if self.statistic == "dataset" and not bool(self.fitted):
            raise ScalerNotFittedError(f"TorchScaler.save({os.fspath(path)!r}): dataset statistics are not fitted")
        payload = {
            "format": _FILE_FORMAT,
            "version": _FILE_VERSION,
            "config": self.config(),
            "signature": _plain(self.signature),
            "state_dict": {k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in self.state_dict().items()},
        }
        atomic_torch_save(payload, path)
        logger.info("Saved scaler to %s", os.fspath(path))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        expected_signature: dict[str, Any] | None = None,
        map_location: str | torch.device = "cpu",
    ) -> TorchScaler:
        """Load a scaler saved by :meth:`save`.

        With ``expected_signature`` (the current ``FrontEnd.signature()``), a scaler fitted with a
        different front-end raises :class:`ScalerMismatchError` naming each differing key.
        """
        path_s = os.fspath(path)
        try:
            payload = torch.load(path_s, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:  # corrupt or foreign file
            raise ValueError(f"{path_s}: not a readable scaler file ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != _FILE_FORMAT:
            raise ValueError(f"{path_s}: not a scaler file written by TorchScaler.save")
        if payload.get("version") != _FILE_VERSION:
            raise ValueError(
                f"{path_s}: scaler file version {payload.get('version')} is not supported (expected {_FILE_VERSION})"
            )
        saved_sig = payload.get("signature")
        if expected_signature is not None:
            if saved_sig is None:
                raise ScalerMismatchError(
                    f"{path_s}: scaler has no front-end signature, cannot check it against the current front-end"
                )
            diff = signature_diff(saved_sig, expected_signature)
            if diff:
                raise ScalerMismatchError(
                    f"{path_s}: scaler was fitted with a different front-end: " + _format_diff(diff, "file", "expected")
                )
        config = payload["config"]
        scaler = cls(
            statistic=config["statistic"],
            normtype=config["normtype"],
            dims=tuple(config["dims"]),
            eps=config["eps"],
            minmax_range=tuple(config["minmax_range"]),
            signature=saved_sig,
        )
        scaler.load_state_dict(payload["state_dict"])
        logger.info("Loaded scaler from %s", path_s)
        return scaler

    def extra_repr(self) -> str:
        return (
            f"statistic={self.statistic!r}, normtype={self.normtype!r}, dims={self.dims}, eps={self.eps}, "
            f"minmax_range={self.minmax_range}, fitted={self.is_fitted}"
        )
