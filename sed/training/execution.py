"""Cheaper mean-teacher steps: the teacher's forward without autograd, ``torch.compile`` of the networks, and no
host-device synchronisation inside a step on a GPU.

Measured on CPU (``benchmarks/train_throughput.py``, benchmarks/README.md): both networks' train-mode forwards
are dominated by the dropout masks (``bernoulli_`` fills them serially from the CPU generator on non-Intel CPUs,
~40 % of a forward), which the teacher needs too: the DCASE baseline runs it in train mode on the same input,
so it draws its own masks and normalises with batch statistics. What the teacher can skip, it skips here:
autograd (``torch.inference_mode``, not only ``no_grad``: no version counters or view tracking either).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sed.models.crnn import CRNNOutput


def host_to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` (made on the host: random draws, row indices) on ``device`` without making the host wait.

    A plain ``.to("cuda")`` from pageable memory waits until every kernel queued before it has run, so one such
    copy per step keeps the host from queueing the next step while the GPU works (``benchmarks/gpu_training.py
    --sync-debug`` lists them). On CUDA the copy goes through pinned memory, asynchronously; elsewhere it is
    ``.to``. The values are the same: the draws still come from the CPU generator, as on a CPU run.
    """
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def subset_rows(mask: torch.Tensor) -> slice | list[int]:
    """The rows where the host-side boolean ``mask`` is true: a slice when they are contiguous (the mixed batch
    sampler puts each subset in one block), else their indices. Either indexes a device tensor with no copy of an
    index tensor and no ``nonzero`` (which waits for the device)."""
    rows = mask.nonzero().flatten().tolist()
    if rows and rows == list(range(rows[0], rows[-1] + 1)):
        return slice(rows[0], rows[-1] + 1)
    return rows


def teacher_forward(model: Callable[..., CRNNOutput], feats: torch.Tensor, **inputs: torch.Tensor) -> CRNNOutput:
    """The teacher's outputs for ``feats``, computed under ``torch.inference_mode``.

    Its train-mode side effects (BatchNorm running statistics, dropout draws from the global generator) are the
    same as under ``no_grad``. The outputs are cloned out of inference mode (a few KB), because the consistency
    loss saves them for its backward and inference tensors cannot be saved.
    """
    with torch.inference_mode():
        out = model(feats, **inputs)
    return CRNNOutput(*(t.clone() for t in out))


def compiled_models(models: dict[str, nn.Module]) -> dict[str, Callable[..., CRNNOutput]]:
    """``torch.compile`` of each model, for the training step only (``training.compile``).

    The modules themselves stay as they are, so checkpoints, evaluation, ``sed.infer`` and ``sed.export`` see
    the plain eager modules and their state-dict keys. Compilation happens at the first training step (on CPU
    it takes one to a few minutes: inductor generates and builds C++ kernels; they are cached in
    ``/tmp/torchinductor_$USER`` for later runs). Compiled dropout draws its masks from inductor's own
    generator (seeded from torch's, so runs and resumes stay reproducible) instead of eager ``bernoulli_``:
    same distribution, not the same masks as an eager run; everything else computes the same losses (to
    float rounding; ``tests/training/test_execution.py``).
    """
    return {name: torch.compile(model) for name, model in models.items()}


class FiniteCheck:
    """Whether a step's loss is finite, read without stalling a GPU.

    On CUDA the flag is copied to pinned host memory asynchronously, right after the loss, and an event marks that
    point: reading it waits for the forward pass only, not for the backward queued after it (``bool(loss)`` would
    wait for everything queued). On the CPU it is read at once.
    """

    def __init__(self, total: torch.Tensor, losses: dict[str, torch.Tensor], files: list[str], epoch: int, step: int):
        self.total, self.files, self.epoch, self.step = total.detach(), list(files), epoch, step
        self.losses = {k: losses[k].detach() for k in ("strong", "weak")}  # for the message; not the graph
        flag = torch.isfinite(self.total)
        self.event = None
        if flag.device.type == "cuda":
            self.flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            self.flag.copy_(flag, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.flag = flag

    def finite(self) -> bool:
        if self.event is not None:
            self.event.synchronize()
        return bool(self.flag)

    def message(self) -> str:
        return (
            f"training loss is {float(self.total)} at epoch {self.epoch}, step {self.step} "
            f"(strong {float(self.losses['strong']):.4g}, weak {float(self.losses['weak']):.4g}); batch files: "
            f"{', '.join(self.files)}. Stopped before the weights were updated; the checkpoints written so far are kept"
        )
