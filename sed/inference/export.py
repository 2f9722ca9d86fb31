"""Export a trained detector as one ONNX or TorchScript graph, with everything inference needs stored inside
(``python -m sed.export`` is its command line, :mod:`sed.export`).

The graph maps raw mono audio windows ``audio [batch, window_samples]`` (float32, at the rate the model takes:
``features.input_sample_rate`` when it resamples inside the model, whose windowed-sinc resampler is then part of
the graph, else the model's rate; the training clip length) to frame probabilities ``strong [batch, classes, window_frames]`` and clip
probabilities ``weak [batch, classes]``: front-end (:class:`sed.features.frontend.FrontEnd`), scaler
(:class:`sed.features.scaler.TorchScaler`) and one network (student or teacher), in evaluation mode. The batch axis is
dynamic; the window length is fixed, and ``sed.infer`` slides windows over longer audio exactly as it does
with a checkpoint. The file also carries :class:`DetectorMetadata` (classes, sample rate, window, frame hop,
median filter and thresholds of the checkpoint's ``evaluation`` config): ONNX ``metadata_props``, one JSON
value per key, or the TorchScript extra file ``sed_metadata.json``.

Python::

    result = export_detector("best.ckpt", "model.onnx")          # ExportResult(path, metadata, max_abs_diff)
    model = ExportedModel.load("model.onnx")                      # metadata + ONNX Runtime session
    strong, weak = model(windows)                                 # [B, window_samples] -> probabilities
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from sed.features.scaler import _STAT_BUFFERS, TorchScaler
from sed.inference.exported_model import (
    CHECK_TOLERANCE,
    DEFAULT_OPSET,
    FORMATS,
    INPUT_NAME,
    MODELS,
    OUTPUT_NAMES,
    TORCHSCRIPT_METADATA,
    DetectorMetadata,
    ExportedModel,
    ExportError,
    PathLike,
)
from sed.models.encoders import model_inputs

logger = logging.getLogger(__name__)


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
        out = self.network(self.scaler(self.frontend(audio)), **model_inputs(self.network, audio))
        return out.strong[..., : self.window_frames], out.weak


# ---------------------------------------------------------------------- checkpoints
def load_module(path: PathLike):
    """``(module, info)``: the :class:`sed.training.module.SEDModule` of a checkpoint of ``train.py`` rebuilt from its saved
    configuration, in evaluation mode on the CPU, and the checkpoint's epoch and step; problems are
    :class:`sed.run.checkpointing.CheckpointError` naming the file."""
    from sed.run.checkpointing import CheckpointError, read_checkpoint
    from sed.training.module import SEDModule

    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    try:
        module = SEDModule(hparams["config"], hparams["classes"])
        module.load_state_dict(checkpoint["state_dict"])
    except Exception as err:  # noqa: BLE001 - a config or state dict that does not build this project's model
        reason = " ".join(str(err).split())[:500]
        raise CheckpointError(f"ckpt_path={path}: cannot rebuild the model from it ({reason})") from None
    # What SEDModule.on_load_checkpoint restores (without its random states): the network validation preferred.
    module.preferred_model = checkpoint.get("preferred_model", module.preferred_model)
    info = {k: int(checkpoint[k]) for k in ("epoch", "global_step") if k in checkpoint}
    return module.eval(), info


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


def serialize(
    graph: InferenceGraph, metadata: DetectorMetadata, fmt: str = "onnx", opset: int = DEFAULT_OPSET
) -> bytes:
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
    acts at both ends), silence, and the first window of each ``audio`` (mono at the rate the model takes)."""
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
    from sed.evaluation.tuning import load_settings, settings_path_for
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
    tuned = settings_path_for(checkpoint)  # post-processing tuned on validation, saved beside it by train.py
    if tuned.is_file():
        info = {**info, "postprocessing": load_settings(tuned, model, classes=module.classes).to_json()}
        logger.info("embedding the post-processing tuned on validation from %s", tuned)
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
