"""A detector exported by ``python -m sed.export``: its metadata (classes, sample rate, window, frame hop, median
filter, thresholds) and the loaded file (ONNX Runtime session or TorchScript module), which ``sed.infer`` runs
with nothing else from the training run."""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
FORMATS = ("onnx", "torchscript")
MODELS = ("student", "teacher")
METADATA_FORMAT = "sed.detector"
METADATA_VERSION = 1
#: Written by a model that resamples its input (``model_sample_rate`` set); version 1 readers refuse it rather than
#: misread the frame grid.
METADATA_VERSION_RESAMPLING = 2
TORCHSCRIPT_METADATA = "sed_metadata.json"
INPUT_NAME = "audio"
OUTPUT_NAMES = ("strong", "weak")
DEFAULT_OPSET = 18  # the STFT needs >= 17
CHECK_TOLERANCE = 1e-4


class ExportError(ValueError):
    """An export cannot be made or verified, or an exported file cannot be used: the message names the file."""


# ---------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class DetectorMetadata:
    """What inference needs besides the graph: the window geometry, the classes and the post-processing.

    Output frame ``f`` of a window spans ``[f, f + 1) * frame_duration`` seconds from the window start;
    ``frame_duration = frame_samples / model_sample_rate``. ``sample_rate`` and ``window_samples`` are those of the
    graph's input; a model that resamples its input (``features.input_sample_rate``) has ``model_sample_rate``, the
    rate its frames are counted at (``frame_samples`` samples per frame at that rate); otherwise it is None (the
    same rate). ``median_window`` holds one length for every class or one
    per class; ``thresholds`` are the checkpoint's evaluation thresholds, the first one being the default.
    """

    classes: tuple[str, ...]
    sample_rate: int
    window_samples: int
    window_frames: int
    frame_samples: int
    median_window: tuple[int, ...]
    thresholds: tuple[float, ...]
    model: str
    source: str = ""  # the checkpoint exported (file name), for provenance
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # epoch, step, …
    model_sample_rate: int | None = None  # the rate inside the model when it resamples its input; None: sample_rate

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("no classes")
        if min(self.sample_rate, self.window_samples, self.window_frames, self.frame_samples) < 1:
            raise ValueError("sample_rate, window_samples, window_frames and frame_samples must be positive")
        if self.model_sample_rate is not None and self.model_sample_rate < 1:
            raise ValueError("model_sample_rate must be positive")
        frame = self.input_frame_samples
        if self.window_frames * frame > self.window_samples + frame:
            raise ValueError(
                f"{self.window_frames} frames of {float(frame):g} samples do not fit a window of "
                f"{self.window_samples} samples"
            )
        if len(self.median_window) not in (1, len(self.classes)) or min(self.median_window) < 1:
            raise ValueError(f"median_window must be one length >= 1 or one per class, got {list(self.median_window)}")
        if not self.thresholds:
            raise ValueError("no thresholds")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")

    @property
    def frame_duration(self) -> float:
        """Seconds per output frame (exactly what the label encoder uses)."""
        return self.frame_samples / (self.model_sample_rate or self.sample_rate)

    @property
    def input_frame_samples(self) -> int | Fraction:
        """Input samples per output frame: ``frame_samples``, or a ``Fraction`` of them when the model resamples."""
        if self.model_sample_rate is None or self.model_sample_rate == self.sample_rate:
            return self.frame_samples
        return Fraction(self.frame_samples * self.sample_rate, self.model_sample_rate)

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    @property
    def median_filter(self) -> int | list[int]:
        """The median window as :func:`sed.evaluation.postprocess.median_filter` takes it."""
        return self.median_window[0] if len(self.median_window) == 1 else list(self.median_window)

    @classmethod
    def from_module(cls, module, model: str, source: str = "", extra: Optional[dict] = None) -> "DetectorMetadata":
        """The metadata of a :class:`sed.training.module.SEDModule` (its configuration and label encoder)."""
        from sed.features.frontend import input_clip_samples

        encoder, ev = module.encoder, module.cfg.evaluation
        rate = int(module.frontend.input_rate)  # the rate the graph takes (features.input_sample_rate when set)
        return cls(
            classes=tuple(module.classes),
            sample_rate=rate,
            model_sample_rate=int(encoder.sample_rate) if rate != int(encoder.sample_rate) else None,
            window_samples=input_clip_samples(encoder.clip_duration, rate, int(encoder.sample_rate)),
            window_frames=int(encoder.n_frames),
            frame_samples=int(encoder.frame_hop_samples),
            median_window=tuple(int(w) for w in ev.median_window),
            thresholds=tuple(float(t) for t in ev.thresholds),
            model=model,
            source=source,
            extra=dict(extra or {}),
        )

    def to_properties(self) -> dict[str, str]:
        """``{key: JSON value}``: ONNX ``metadata_props`` (string values), readable by any ONNX tool."""
        values = asdict(self)
        values["classes"] = list(self.classes)
        values["median_window"] = list(self.median_window)
        values["thresholds"] = list(self.thresholds)
        if self.model_sample_rate is None:  # files of models without a resampler stay what version 1 wrote
            values.pop("model_sample_rate")
        version = METADATA_VERSION if self.model_sample_rate is None else METADATA_VERSION_RESAMPLING
        props = {"format": METADATA_FORMAT, "format_version": version}
        props.update(values)
        props["frame_duration"] = (
            self.frame_duration
        )  # informational: frame_samples / (model_sample_rate or sample_rate)
        props["inputs"] = {INPUT_NAME: f"float32 [batch, {self.window_samples}] mono audio at {self.sample_rate} Hz"}
        props["outputs"] = {
            "strong": f"float32 [batch, {len(self.classes)}, {self.window_frames}] frame probabilities, "
            f"frame f spans [f, f + 1) * {self.frame_duration:g} s",
            "weak": f"float32 [batch, {len(self.classes)}] clip probabilities",
        }
        return {key: json.dumps(value) for key, value in props.items()}

    @classmethod
    def from_properties(cls, props: Mapping[str, str], path: PathLike) -> "DetectorMetadata":
        """Parse :meth:`to_properties`; a missing or malformed key is an :class:`ExportError` naming ``path``."""
        if "format" not in props:
            raise ExportError(f"{path}: no sed metadata in this file (not written by python -m sed.export)")
        try:
            values = {key: json.loads(value) for key, value in props.items()}
        except (TypeError, ValueError) as err:
            raise ExportError(f"{path}: malformed sed metadata ({err})") from None
        versions = (METADATA_VERSION, METADATA_VERSION_RESAMPLING)
        if values["format"] != METADATA_FORMAT or values.get("format_version") not in versions:
            raise ExportError(
                f"{path}: metadata format {values.get('format')!r} version {values.get('format_version')!r} is not "
                f"{METADATA_FORMAT!r} version {' or '.join(map(str, versions))}"
            )
        names = (
            "classes",
            "sample_rate",
            "window_samples",
            "window_frames",
            "frame_samples",
            "median_window",
            "thresholds",
            "model",
        )
        missing = [n for n in names if n not in values]
        if missing:
            raise ExportError(f"{path}: metadata lacks key(s) {missing}")
        try:
            return cls(
                classes=tuple(str(c) for c in values["classes"]),
                sample_rate=int(values["sample_rate"]),
                window_samples=int(values["window_samples"]),
                window_frames=int(values["window_frames"]),
                frame_samples=int(values["frame_samples"]),
                median_window=tuple(int(w) for w in values["median_window"]),
                thresholds=tuple(float(t) for t in values["thresholds"]),
                model=str(values["model"]),
                source=str(values.get("source", "")),
                model_sample_rate=None if values.get("model_sample_rate") is None else int(values["model_sample_rate"]),
                extra=dict(values.get("extra") or {}),
            )
        except (TypeError, ValueError) as err:
            raise ExportError(f"{path}: invalid sed metadata: {err}") from None

    def to_json(self) -> str:
        """One JSON object (the TorchScript extra file)."""
        return json.dumps({k: json.loads(v) for k, v in self.to_properties().items()}, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, path: PathLike) -> "DetectorMetadata":
        try:
            values = json.loads(text)
        except ValueError as err:
            raise ExportError(f"{path}: malformed {TORCHSCRIPT_METADATA} ({err})") from None
        if not isinstance(values, dict):
            raise ExportError(f"{path}: {TORCHSCRIPT_METADATA} is not a JSON object")
        return cls.from_properties({k: json.dumps(v) for k, v in values.items()}, path)


# ---------------------------------------------------------------------- exported files
def _ort_providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ExportError(f"device {device!r}: this onnxruntime has no CUDAExecutionProvider ({available})")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def sniff_format(path: PathLike) -> str:
    """``"torchscript"`` for a zip archive (what ``torch.jit.save`` writes), else ``"onnx"``."""
    with open(path, "rb") as handle:
        return "torchscript" if handle.read(4) == b"PK\x03\x04" else "onnx"


class ExportedModel:
    """An exported detector loaded for inference: :attr:`metadata` and ``__call__(windows) -> (strong, weak)``.

    ``windows`` is ``[B, window_samples]`` (numpy or torch); outputs are float32 CPU tensors.
    """

    def __init__(self, path: PathLike, fmt: str, metadata: DetectorMetadata, runner: Any, device: str) -> None:
        self.path = Path(path)
        self.format = fmt
        self.metadata = metadata
        self.device = device
        self._runner = runner

    @classmethod
    def load(
        cls, path: PathLike, fmt: Optional[str] = None, device: Optional[str] = None, threads: Optional[int] = None
    ) -> "ExportedModel":
        """Open an ONNX (ONNX Runtime session) or TorchScript file written by :func:`export_detector`.

        ``fmt`` defaults to what the file is (a zip archive is TorchScript). ``device``: ``cpu`` (default) or
        ``cuda[:N]``. ``threads``: ONNX Runtime intra-op threads (default: its own choice).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: exported model not found")
        fmt = fmt or sniff_format(path)
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
        device = device or "cpu"
        data = path.read_bytes()
        return cls.from_bytes(data, fmt, path, device, threads)

    @classmethod
    def from_bytes(
        cls, data: bytes, fmt: str, path: PathLike, device: str = "cpu", threads: Optional[int] = None
    ) -> "ExportedModel":
        """:meth:`load` from the file's bytes (``path`` only names it in messages)."""
        if fmt == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only: its graph optimiser's notes are not the user's concern
            if threads:
                options.intra_op_num_threads = int(threads)
            try:
                session = ort.InferenceSession(data, sess_options=options, providers=_ort_providers(device))
            except ExportError:
                raise
            except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
                raise ExportError(f"{path}: not a readable ONNX model ({' '.join(str(err).split())[:300]})") from None
            props = session.get_modelmeta().custom_metadata_map
            metadata = DetectorMetadata.from_properties(props, path)
            names = [i.name for i in session.get_inputs()]
            if names != [INPUT_NAME]:
                raise ExportError(f"{path}: graph inputs are {names}, expected [{INPUT_NAME!r}]")
            return cls(path, fmt, metadata, session, device)
        extra = {TORCHSCRIPT_METADATA: ""}
        try:
            module = torch.jit.load(io.BytesIO(data), map_location=device, _extra_files=extra)
        except Exception as err:  # noqa: BLE001
            raise ExportError(
                f"{path}: not a readable TorchScript module ({' '.join(str(err).split())[:300]})"
            ) from None
        if not extra[TORCHSCRIPT_METADATA]:
            raise ExportError(f"{path}: no {TORCHSCRIPT_METADATA} in this TorchScript file (not written by sed.export)")
        text = extra[TORCHSCRIPT_METADATA]
        metadata = DetectorMetadata.from_json(text.decode() if isinstance(text, bytes) else text, path)
        return cls(path, fmt, metadata, module.eval(), device)

    def __call__(self, windows) -> tuple[Tensor, Tensor]:
        x = torch.as_tensor(np.asarray(windows) if not isinstance(windows, Tensor) else windows).float()
        if x.ndim != 2 or x.shape[1] != self.metadata.window_samples:
            raise ValueError(
                f"{self.path}: expects windows [batch, {self.metadata.window_samples}], got shape {tuple(x.shape)}"
            )
        if self.format == "onnx":
            strong, weak = self._runner.run(list(OUTPUT_NAMES), {INPUT_NAME: x.cpu().contiguous().numpy()})
            return torch.from_numpy(strong), torch.from_numpy(weak)
        with torch.inference_mode():
            strong, weak = self._runner(x.to(self.device))
        return strong.float().cpu(), weak.float().cpu()
