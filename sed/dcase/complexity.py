"""Parameters and multiply-accumulate operations (MACs) of the deployed detector, as DCASE Task 4 asks.

The deployed model is what ``sed.infer`` runs on one clip: front-end + scaler + one CRNN (the teacher; the student
has the same architecture). MACs are counted for one clip of ``data.clip_duration`` seconds (10 s in DESED) with
``torch.utils.flop_counter.FlopCounterMode`` on a CPU copy of the model, ``MACs = FLOPs / 2``.

What FlopCounterMode counts (checked in ``tests/test_complexity.py`` against the layer shapes):

* convolutions (``aten.convolution``): ``C_in * C_out * k * k`` per output position;
* matrix products (``aten.mm``, ``addmm``, ``bmm``, ``matmul``): linear layers (GLU gates, heads), the mel
  filterbank and the MFCC DCT;
* the GRU on the CPU: its gate products appear as ``addmm`` (``3 * (input + hidden) * hidden`` per frame, layer and
  direction). On CUDA the GRU is one cuDNN call that FlopCounterMode does not count, which is why the count is
  taken on a CPU copy.

Not counted: the FFT of the STFT (``aten._fft_r2c`` has no formula; about ``N/2 * log2 N`` complex
multiply-adds per frame, e.g. 626 frames of 2048 points is ~7 M for DESED, under 1 % of its total), bias additions,
and element-wise operations (BatchNorm, activations, pooling, dB conversion, scaler, attention softmax).

:class:`ComplexityReport` (a Lightning callback) logs these numbers next to Lightning's model summary (and gives the
summary an example input so its FLOPs column is filled), logs TensorBoard scalars ``complexity/*``, adds a
``complexity`` block to every ``test/<model>/metrics.json`` and lines to the run summary.
``python -m sed.dcase.complexity CHECKPOINT`` prints them for a checkpoint.

DCASE's unit is **10 s of audio** whatever the training clip length, counted **as THOP counts** (the organisers'
figures, e.g. the baseline CRNN's 930.902 M MACs): the network alone by THOP's rules
(:mod:`sed.dcase.thop_macs`: BatchNorm, pooling, the GRU's biases and gate products and softmax counted, the
front-end left out). The ``per_10s`` sub-block holds, for the windows ``sed.infer`` cuts 10 s of audio into (one
window for 10-s training clips; ten half-overlapping windows for 2-s clips at DESED's frame rate), ``macs_thop``
(THOP rules, the figure for the metadata) and ``macs`` (FlopCounterMode, front-end and scaler included).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sed.dcase.thop_macs import thop_macs
from sed.models.encoders import audio_encoder

log = logging.getLogger(__name__)

NOT_COUNTED = (
    "FFT of the STFT, bias additions, element-wise operations (BatchNorm, activations, pooling, "
    "dB conversion, scaler, softmax)"
)


class MacCount(NamedTuple):
    """Multiply-accumulates of one call: the total and per layer type (``{"Conv2d": ..., "GRU": ..., "Linear": ...}``;
    operations outside any sub-module go to ``"other"``)."""

    total: int
    by_layer: dict[str, int]


def count_macs(module: nn.Module, *args: Any) -> MacCount:
    """MACs of ``module(*args)`` as FlopCounterMode counts them (FLOPs / 2; see the module docstring for what is
    counted). Runs under ``torch.no_grad``."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*args)
    counts = counter.get_flop_counts()
    total = sum(counts.get("Global", {}).values()) // 2
    root = type(module).__name__  # FlopCounterMode names sub-modules "<root class>.<name>"
    by_layer: dict[str, int] = {}
    for name, sub in module.named_modules():
        if name and not any(True for _ in sub.children()):
            macs = sum(counts.get(f"{root}.{name}", {}).values()) // 2
            if macs:
                by_layer[type(sub).__name__] = by_layer.get(type(sub).__name__, 0) + macs
    if total > sum(by_layer.values()):
        by_layer["other"] = total - sum(by_layer.values())
    return MacCount(total, dict(sorted(by_layer.items())))


def n_parameters(module: nn.Module) -> int:
    """Number of parameters (learnable weights; buffers such as the mel filterbank are not parameters)."""
    return sum(p.numel() for p in module.parameters())


def deployed_complexity(
    frontend: nn.Module, scaler: nn.Module, network: nn.Module, n_samples: int, sample_rate: int
) -> dict[str, Any]:
    """Parameters and MACs per clip of ``n_samples`` samples of front-end + scaler + ``network``.

    The modules are copied to the CPU in eval mode, so the caller's modules, their device and their statistics are
    left as they were. Returns the ``complexity`` block written to ``metrics.json``.
    """
    frontend, scaler, network = (copy.deepcopy(m).cpu().eval() for m in (frontend, scaler, network))
    audio = torch.zeros(1, int(n_samples))
    front = count_macs(frontend, audio)
    with torch.no_grad():
        feats = frontend(audio)
    if getattr(scaler, "statistic", None) == "dataset" and not bool(getattr(scaler, "fitted", True)):
        # Not fitted yet (start of training): it cannot run, and it is element-wise (no MACs), shape-preserving.
        scale = MacCount(0, {})
    else:
        scale = count_macs(scaler, feats)
        with torch.no_grad():
            feats = scaler(feats)
    # A network with a pretrained audio encoder takes the audio too (its encoder's MACs count as the network's).
    extra = (None, audio) if audio_encoder(network) is not None else ()
    net = count_macs(network, feats, *extra)
    thop = thop_macs(network, feats, *extra)
    by_layer: dict[str, int] = {}
    for count in (front, scale, net):
        for layer, macs in count.by_layer.items():
            by_layer[layer] = by_layer.get(layer, 0) + macs
    return {
        "clip_duration_s": n_samples / sample_rate,
        "parameters": n_parameters(network) + n_parameters(frontend) + n_parameters(scaler),
        "parameters_network": n_parameters(network),
        "macs": front.total + scale.total + net.total,
        "macs_frontend": front.total,
        "macs_scaler": scale.total,
        "macs_network": net.total,
        "macs_by_layer": dict(sorted(by_layer.items())),
        "counted_with": "torch.utils.flop_counter.FlopCounterMode on CPU, MACs = FLOPs / 2",
        "not_counted": NOT_COUNTED,
        "macs_thop": thop.total,
        "macs_thop_by_layer": thop.by_layer,
    }


DCASE_AUDIO_S = 10.0  # DCASE Task 4 counts MACs "for 10 seconds of audio prediction" (DESED_task READMEs)


def per_10s(block: dict[str, Any], grid: Any, input_rate: int) -> dict[str, Any]:
    """The MACs of :func:`deployed_complexity`'s ``block`` (one window) for 10 s of audio: times the number of
    windows ``grid`` (a :class:`sed.evaluation.windows.WindowGrid`) cuts 10 s at ``input_rate`` into."""
    windows = len(grid.starts(round(DCASE_AUDIO_S * input_rate)))
    return {
        "audio_s": DCASE_AUDIO_S,
        "windows": windows,
        "macs_thop": windows * block["macs_thop"],
        "macs": windows * block["macs"],
        "note": "macs_thop: THOP's rules on the network (the organisers' count); macs: FlopCounterMode, front-end "
        "and scaler included",
    }


def _clip_input(pl_module: Any) -> tuple[int, int]:
    """``(samples, rate)`` of one training clip as the front-end takes it (at its input rate when it resamples)."""
    grid = getattr(pl_module, "window_grid", None)
    if grid is None:
        return int(pl_module.encoder.n_samples), int(pl_module.encoder.sample_rate)
    return int(grid.window_samples), int(getattr(pl_module.frontend, "input_rate", pl_module.encoder.sample_rate))


def module_complexity(pl_module: Any, model: str = "teacher") -> dict[str, Any]:
    """:func:`deployed_complexity` of a :class:`sed.training.module.SEDModule`'s front-end, scaler and ``model`` for one
    training clip."""
    from sed.evaluation.windows import WindowGrid

    n_samples, rate = _clip_input(pl_module)
    block = deployed_complexity(pl_module.frontend, pl_module.scaler, getattr(pl_module, model), n_samples, rate)
    grid = getattr(pl_module, "window_grid", None) or WindowGrid.from_encoder(pl_module.encoder)
    block["per_10s"] = per_10s(block, grid, rate)
    return block


def human(n: float) -> str:
    """``1234567 -> '1.23 M'``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n:g}"


def describe(block: dict[str, Any]) -> str:
    """One line: parameters and MACs per clip, and per 10 s as DCASE counts them."""
    line = (
        f"{block['parameters']:,} parameters, {human(block['macs'])}MACs per {block['clip_duration_s']:g}-s clip "
        f"(front-end {human(block['macs_frontend'])}MACs, CRNN {human(block['macs_network'])}MACs)"
    )
    ten = block.get("per_10s")
    if ten:
        line += f"; DCASE (THOP rules, 10 s of audio): {human(ten['macs_thop'])}MACs"
    return line


class ComplexityReport(pl.Callback):
    """Report the deployed model's parameters and MACs (see the module docstring) at fit and test start, and in
    every ``test/<model>/metrics.json`` with the checkpoint that was tested.

    Args:
        evaluated_checkpoint: the checkpoint a test-only run (``train=false``) evaluates, recorded with the results
            (a training run records the checkpoint Lightning tested, e.g. the best one).
    """

    def __init__(self, evaluated_checkpoint: Optional[str] = None) -> None:
        self.evaluated_checkpoint = evaluated_checkpoint
        self.block: Optional[dict[str, Any]] = None
        self._logged = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "frontend") or not hasattr(pl_module, "encoder"):
            return
        scaler = pl_module.scaler
        usable = scaler.statistic == "instance" or bool(scaler.fitted)
        if pl_module.example_input_array is None and usable:
            # Lightning's model summary then counts FLOPs (forward: front-end, scaler, teacher) instead of "0".
            pl_module.example_input_array = torch.zeros(1, _clip_input(pl_module)[0])
        if self.block is None:
            try:
                self.block = module_complexity(pl_module)
            except Exception as err:  # a report, never a reason for a run to fail
                log.warning("Parameters and MACs not counted: %s: %s", type(err).__name__, err)
                return
            if trainer.is_global_zero:
                log.info("Deployed model (front-end + scaler + one CRNN): %s", describe(self.block))

    def _log_scalars(self, trainer: pl.Trainer) -> None:
        if self._logged or self.block is None:
            return
        self._logged = True
        scalars = {
            "complexity/parameters": float(self.block["parameters"]),
            "complexity/macs": float(self.block["macs"]),
            "complexity/macs_frontend": float(self.block["macs_frontend"]),
        }
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_scalars(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log_scalars(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or self.block is None:
            return
        from sed.evaluation.outputs import update_metrics_json

        checkpoint = trainer.ckpt_path or self.evaluated_checkpoint  # Lightning's resolved "best", or train=false's
        block = {**self.block, "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None}
        for path in sorted((Path(trainer.default_root_dir) / "test").glob("*/metrics.json")):
            update_metrics_json(path, {"complexity": block})

    def summary_lines(self) -> list[str]:
        return [f"Model: {describe(self.block)}"] if self.block else []


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m sed.dcase.complexity CHECKPOINT [--model teacher|student]``: print the complexity block as JSON."""
    parser = argparse.ArgumentParser(prog="python -m sed.dcase.complexity", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="checkpoint written by train.py")
    parser.add_argument("--model", choices=("teacher", "student"), default="teacher")
    args = parser.parse_args(argv)
    from sed.run.checkpointing import read_checkpoint
    from sed.training.module import SEDModule

    read_checkpoint(args.checkpoint)
    module = SEDModule.load_from_checkpoint(args.checkpoint, map_location="cpu", weights_only=False)
    print(json.dumps(module_complexity(module, args.model), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
