"""Cheaper mean-teacher steps: the teacher's forward without autograd, and ``torch.compile`` of the networks.

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
    float rounding; ``tests/training/test_step_speed.py``).
    """
    return {name: torch.compile(model) for name, model in models.items()}
