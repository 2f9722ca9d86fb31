"""Export a trained detector as one ONNX or TorchScript graph, with everything inference needs stored inside.

The graph maps raw mono audio windows ``audio [batch, window_samples]`` (float32, at the model's sample rate,
the training clip length) to frame probabilities ``strong [batch, classes, window_frames]`` and clip
probabilities ``weak [batch, classes]``: front-end (:class:`sed.features.FrontEnd`), scaler
(:class:`sed.scaler.TorchScaler`) and one network (student or teacher), in evaluation mode. The batch axis is
dynamic; the window length is fixed, and ``sed.infer`` slides windows over longer audio exactly as it does
with a checkpoint. The file also carries :class:`DetectorMetadata` (classes, sample rate, window, frame hop,
median filter and thresholds of the checkpoint's ``evaluation`` config): ONNX ``metadata_props``, one JSON
value per key, or the TorchScript extra file ``sed_metadata.json``.

Command line::

    python -m sed.export CHECKPOINT -o model.onnx                       # ONNX (opset 18, dynamo exporter)
    python -m sed.export CHECKPOINT -o model.pt --format torchscript    # TorchScript (traced)
    python -m sed.export CHECKPOINT -o model.onnx --model teacher --check-audio clip1.wav clip2.wav

The network defaults to the one validation preferred (``preferred_model`` in the checkpoint: the student or
the teacher, whichever had the higher objective at that epoch). The file is checked before it is written: ONNX Runtime (or the reloaded
TorchScript module) must reproduce PyTorch's probabilities within ``1e-4`` on a few windows (noise at
several levels, silence, and the first window of each ``--check-audio`` file), at a batch size other than
the one exported with; the largest difference is printed. The file is written atomically.

Python::

    result = export_detector("best.ckpt", "model.onnx")          # ExportResult(path, metadata, max_abs_diff)
    model = ExportedModel.load("model.onnx")                      # metadata + ONNX Runtime session
    strong, weak = model(windows)                                 # [B, window_samples] -> probabilities
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from sed.scaler import _STAT_BUFFERS, TorchScaler

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
FORMATS = ("onnx", "torchscript")
MODELS = ("student", "teacher")
METADATA_FORMAT = "sed.detector"
METADATA_VERSION = 1
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
    ``frame_duration = frame_samples / sample_rate``. ``median_window`` holds one length for every class or one
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

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("no classes")
        if min(self.sample_rate, self.window_samples, self.window_frames, self.frame_samples) < 1:
            raise ValueError("sample_rate, window_samples, window_frames and frame_samples must be positive")
        if self.window_frames * self.frame_samples > self.window_samples + self.frame_samples:
            raise ValueError(
                f"{self.window_frames} frames of {self.frame_samples} samples do not fit a window of "
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
        return self.frame_samples / self.sample_rate

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    @property
    def median_filter(self) -> int | list[int]:
        """The median window as :func:`sed.evaluation.postprocess.median_filter` takes it."""
        return self.median_window[0] if len(self.median_window) == 1 else list(self.median_window)

    @classmethod
    def from_module(cls, module, model: str, source: str = "", extra: Optional[dict] = None) -> "DetectorMetadata":
        """The metadata of a :class:`sed.module.SEDModule` (its configuration and label encoder)."""
        encoder, ev = module.encoder, module.cfg.evaluation
        return cls(
            classes=tuple(module.classes),
            sample_rate=int(module.cfg.data.sample_rate),
            window_samples=int(encoder.n_samples),
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
        props = {"format": METADATA_FORMAT, "format_version": METADATA_VERSION}
        props.update(values)
        props["frame_duration"] = self.frame_duration  # informational: derived from frame_samples / sample_rate
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
        if values["format"] != METADATA_FORMAT or values.get("format_version") != METADATA_VERSION:
            raise ExportError(
                f"{path}: metadata format {values.get('format')!r} version {values.get('format_version')!r} is not "
                f"{METADATA_FORMAT!r} version {METADATA_VERSION}"
            )
        names = ("classes", "sample_rate", "window_samples", "window_frames", "frame_samples", "median_window",
                 "thresholds", "model")
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


# ---------------------------------------------------------------------- the graph
class _FittedScaler(TorchScaler):
    """A :class:`TorchScaler` whose forward does not read its ``fitted`` flag (checked once, here).

    The exporters trace with symbolic buffers and cannot branch on a buffer's value; the normalisation itself is
    :meth:`TorchScaler.forward`'s.
    """

    @classmethod
    def copy_of(cls, scaler: TorchScaler) -> TorchScaler:
        if not scaler.is_fitted:
            raise ExportError("the checkpoint's dataset scaler is not fitted: nothing to export")
        if scaler.statistic == "instance":
            return scaler
        static = cls(**scaler.config(), signature=scaler.signature)
        static.load_state_dict(scaler.state_dict())
        return static

    def _dataset_stats(self, x: Tensor):  # type: ignore[override]
        n_feat = self.mean.numel()
        shape = [1, n_feat] + [1] * (x.dim() - 2)
        return tuple(getattr(self, n).to(x.dtype).view(shape) for n in _STAT_BUFFERS)


class InferenceGraph(nn.Module):
    """Front-end, scaler and one network: ``audio [B, window_samples] -> (strong [B, C, window_frames], weak [B, C])``.

    The same computation as ``SEDModule.predict(network, SEDModule.features(audio))`` in evaluation mode: the
    network's trailing frame past the label encoder's grid is dropped from ``strong``.
    """

    def __init__(self, frontend: nn.Module, scaler: TorchScaler, network: nn.Module, window_frames: int) -> None:
        super().__init__()
        self.frontend = frontend
        self.scaler = _FittedScaler.copy_of(scaler)
        self.network = network
        self.window_frames = int(window_frames)
        self.eval()

    @classmethod
    def from_module(cls, module, model: str) -> "InferenceGraph":
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        return cls(module.frontend, module.scaler, getattr(module, model), module.encoder.n_frames)

    def forward(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        out = self.network(self.scaler(self.frontend(audio)))
        return out.strong[..., : self.window_frames], out.weak


# ---------------------------------------------------------------------- checkpoints
def load_module(path: PathLike):
    """``(module, info)``: the :class:`sed.module.SEDModule` of a checkpoint of ``train.py`` rebuilt from its saved
    configuration, in evaluation mode on the CPU, and the checkpoint's epoch and step; problems are
    :class:`sed.checkpointing.CheckpointError` naming the file."""
    from sed.checkpointing import CheckpointError, read_checkpoint
    from sed.module import SEDModule

    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    try:
        module = SEDModule(hparams["config"], hparams["classes"])
        module.load_state_dict(checkpoint["state_dict"])
    except Exception as err:  # noqa: BLE001 - a config or state dict that does not build this project's model
        reason = " ".join(str(err).split())[:500]
        raise CheckpointError(f"ckpt_path={path}: cannot rebuild the model from it ({reason})") from None
    info = {k: int(checkpoint[k]) for k in ("epoch", "global_step") if k in checkpoint}
    return module.eval(), info


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
    def load(cls, path: PathLike, fmt: Optional[str] = None, device: Optional[str] = None,
             threads: Optional[int] = None) -> "ExportedModel":
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
    def from_bytes(cls, data: bytes, fmt: str, path: PathLike, device: str = "cpu",
                   threads: Optional[int] = None) -> "ExportedModel":
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
            raise ExportError(f"{path}: not a readable TorchScript module ({' '.join(str(err).split())[:300]})") from None
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


# ---------------------------------------------------------------------- export
class ExportResult(NamedTuple):
    path: Path
    metadata: DetectorMetadata
    max_abs_diff: float  # largest |exported - PyTorch| over the check windows (NaN when not checked)
    n_check_windows: int


def _onnx_bytes(graph: InferenceGraph, example: Tensor, metadata: DetectorMetadata, opset: int) -> bytes:
    import onnx

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"audio": {0: torch.export.Dim("batch", min=1)}},
            # onnxscript's optimiser rewrites `x + c` to `x` when c is within 1e-8 of 0, which drops the scaler's
            # eps (1e-8) and turns a silent window into NaN; ONNX Runtime optimises the graph when it loads it.
            optimize=False,
            verbose=False,
        )
    proto = program.model_proto
    del proto.metadata_props[:]
    for key, value in metadata.to_properties().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        f"sed detector ({metadata.model} of {metadata.source or 'a checkpoint'}): {INPUT_NAME} [batch, "
        f"{metadata.window_samples}] at {metadata.sample_rate} Hz -> strong [batch, {len(metadata.classes)}, "
        f"{metadata.window_frames}], weak [batch, {len(metadata.classes)}]"
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def _torchscript_bytes(graph: InferenceGraph, example: Tensor, metadata: DetectorMetadata) -> bytes:
    with warnings.catch_warnings():
        # Tracing bakes the (static) window length's shape checks in as constants: that is what we want.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        traced = torch.jit.trace(graph, (example,), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_METADATA: metadata.to_json()})
    return buffer.getvalue()


def serialize(graph: InferenceGraph, metadata: DetectorMetadata, fmt: str = "onnx", opset: int = DEFAULT_OPSET) -> bytes:
    """The bytes of ``graph`` exported as ``fmt`` (``"onnx"``: dynamo exporter, dynamic batch; ``"torchscript"``:
    traced), with ``metadata`` stored in them. Traced with a batch of 2 windows (a batch of 1 would be
    specialised as a constant)."""
    example = check_windows(metadata)[:2]
    if fmt == "onnx":
        return _onnx_bytes(graph, example, metadata, opset)
    if fmt == "torchscript":
        return _torchscript_bytes(graph, example, metadata)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def check_windows(metadata: DetectorMetadata, audio: Sequence[Tensor] = (), seed: int = 0) -> Tensor:
    """Windows to compare the exported graph with PyTorch on: noise at 3 levels (with a fade, so the dB clamp
    acts at both ends), silence, and the first window of each ``audio`` (mono at the model's rate)."""
    gen = torch.Generator().manual_seed(seed)
    n = metadata.window_samples
    fade = torch.linspace(1.0, 1e-3, n) ** 2
    rows = [torch.randn(n, generator=gen) * level * fade for level in (1.0, 0.1, 0.003)]
    rows.append(torch.zeros(n))
    for clip in audio:
        clip = clip.flatten()[:n].float()
        rows.append(torch.nn.functional.pad(clip, (0, n - clip.shape[0])))
    return torch.stack(rows)


def compare(graph: InferenceGraph, exported: ExportedModel, windows: Tensor) -> float:
    """Largest absolute difference between the exported model's and PyTorch's ``strong`` and ``weak``."""
    with torch.inference_mode():
        ref_strong, ref_weak = graph(windows)
    strong, weak = exported(windows)
    if strong.shape != ref_strong.shape or weak.shape != ref_weak.shape:
        raise ExportError(
            f"{exported.path}: output shapes {tuple(strong.shape)}, {tuple(weak.shape)} differ from PyTorch's "
            f"{tuple(ref_strong.shape)}, {tuple(ref_weak.shape)}"
        )
    return float(max((strong - ref_strong).abs().max(), (weak - ref_weak).abs().max()))


def export_detector(
    checkpoint: PathLike,
    output: PathLike,
    fmt: Optional[str] = None,
    model: Optional[str] = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    check_audio: Sequence[PathLike] = (),
    tolerance: float = CHECK_TOLERANCE,
) -> ExportResult:
    """Export the ``model`` network of ``checkpoint`` with its front-end and scaler to ``output``.

    ``fmt``: ``"onnx"`` or ``"torchscript"`` (default: from the suffix, ``.pt``/``.ts``/``.torchscript`` is
    TorchScript, anything else ONNX). ``model`` defaults to the checkpoint's ``preferred_model``. With
    ``check`` the serialised model is run (ONNX Runtime / ``torch.jit.load``) on :func:`check_windows` (plus the
    first window of each ``check_audio`` file) and must match PyTorch within ``tolerance``, else nothing is
    written. The file is written atomically.
    """
    from sed.data.audio import read_raw, resample
    from sed.utils.io import atomic_open

    output = Path(output)
    if fmt is None:
        fmt = "torchscript" if output.suffix.lower() in (".pt", ".ts", ".torchscript", ".jit") else "onnx"
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if output.is_dir():
        raise ExportError(f"{output}: is a folder; give the file to write (e.g. {output / 'model.onnx'})")
    if fmt == "onnx" and opset < 17:
        raise ValueError(f"opset {opset}: the STFT of the front-end needs opset >= 17")
    module, info = load_module(checkpoint)
    model = model or module.preferred_model
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    metadata = DetectorMetadata.from_module(module, model, source=Path(checkpoint).name, extra=info)
    graph = InferenceGraph.from_module(module, model)
    clips = []
    for path in check_audio:  # read before the slow export, so a bad file fails at once
        data, rate = read_raw(path)
        clips.append(resample(torch.from_numpy(data.mean(axis=0)).float(), rate, metadata.sample_rate))
    logger.info("exporting the %s of %s to %s (%s)", model, checkpoint, output, fmt)
    data = serialize(graph, metadata, fmt, opset)
    diff, n_windows = float("nan"), 0
    if check:
        exported = ExportedModel.from_bytes(data, fmt, output)
        if exported.metadata != metadata:
            raise ExportError(f"{output}: metadata read back differs from what was written")
        windows = check_windows(metadata, clips, seed=1)
        n_windows = len(windows)
        diff = compare(graph, exported, windows)  # all windows in one batch (not the batch size exported with)
        diff = max(diff, compare(graph, exported, windows[:1]))  # and a batch of one
        if not diff <= tolerance:
            raise ExportError(
                f"{output}: the exported {fmt} model differs from PyTorch by {diff:.3g} (> {tolerance:g}) on "
                f"{n_windows} check windows; nothing written"
            )
    with atomic_open(output, "wb") as handle:
        handle.write(data)
    return ExportResult(output, metadata, diff, n_windows)


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sed.export",
        description="Export a checkpoint's front-end, scaler and network as one ONNX or TorchScript graph "
        "(raw audio windows -> frame and clip probabilities) with its metadata, and check it against PyTorch.",
    )
    parser.add_argument("checkpoint", help="checkpoint written by train.py (.ckpt)")
    parser.add_argument("-o", "--output", required=True, help="file to write (model.onnx, model.pt)")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="default: from the output suffix (.pt/.ts: torchscript, else onnx)")
    parser.add_argument("--model", choices=MODELS, default=None,
                        help="network to export (default: the one validation preferred, recorded in the checkpoint)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 17; default %(default)s)")
    parser.add_argument("--check-audio", nargs="*", default=[],
                        help="audio files whose first window is also compared with PyTorch")
    parser.add_argument("--no-check", action="store_true", help="do not compare the exported model with PyTorch")
    parser.add_argument("--tolerance", type=float, default=CHECK_TOLERANCE,
                        help="largest allowed |exported - PyTorch| probability (default %(default)g)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (0 written, 2 bad input or a failed check: nothing written)."""
    from sed.checkpointing import CheckpointError
    from sed.data.audio import AudioError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        result = export_detector(
            args.checkpoint, args.output, fmt=args.format, model=args.model, opset=args.opset,
            check=not args.no_check, check_audio=args.check_audio, tolerance=args.tolerance,
        )
    except (FileNotFoundError, CheckpointError, ExportError, AudioError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    meta = result.metadata
    check = (
        "not checked" if math.isnan(result.max_abs_diff)
        else f"max |exported - PyTorch| = {result.max_abs_diff:.3g} on {result.n_check_windows} windows"
    )
    print(
        f"{result.path}: {meta.model} of {args.checkpoint}, {len(meta.classes)} classes, windows of "
        f"{meta.window_samples} samples ({meta.window_seconds:g} s at {meta.sample_rate} Hz) -> {meta.window_frames} "
        f"frames of {meta.frame_duration:g} s; {check}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
