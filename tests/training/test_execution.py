"""The cheaper training step computes what the plain one did: the teacher without autograd, channels-last CNN
activations, and ``training.compile``."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_module

from sed.models import CRNN
from sed.training.losses import consistency_losses, supervised_losses

CLASSES = ["a", "b", "c"]


def _batch(n_strong: int = 2, n_weak: int = 2, n_unlabeled: int = 2) -> dict:
    n = n_strong + n_weak + n_unlabeled
    g = torch.Generator().manual_seed(1)
    return {
        "audio": 0.1 * torch.randn(n, 16000, generator=g),
        "strong": (torch.rand(n, len(CLASSES), 15, generator=g) > 0.5).float()
        * (torch.arange(n) < n_strong)[:, None, None],
        "weak": (torch.rand(n, len(CLASSES), generator=g) > 0.5).float(),
        "has_strong": torch.arange(n) < n_strong,
        "has_weak": (torch.arange(n) >= n_strong) & (torch.arange(n) < n_strong + n_weak),
        "filename": [f"clip{i}.wav" for i in range(n)],
    }


def _step(module, batch: dict, seed: int = 5) -> tuple[float, list[torch.Tensor]]:
    """``training_step``'s loss and the student's gradients, outside a Trainer (logging is a no-op)."""
    module.train()
    module.log = lambda *a, **k: None
    optimizer = torch.optim.Adam(module.student.parameters())
    module.optimizers = lambda *a, **k: optimizer
    torch.manual_seed(seed)
    loss = module.training_step(batch, 0)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in module.student.parameters()]


def test_training_step_equals_the_mean_teacher_loss_with_a_no_grad_train_mode_teacher():
    """The DCASE baseline's step by hand (teacher in train mode under no_grad, on the student's input), with the
    teacher's forward first, as the module runs it (a lower peak memory; the baseline runs it second): same loss,
    same gradients, same teacher BatchNorm statistics, the same random numbers consumed, bit for bit."""
    overrides = {"training.mixup.prob": 1.0}
    module, reference = tiny_module(CLASSES, **overrides), tiny_module(CLASSES, **overrides)
    batch = _batch()
    loss, grads = _step(module, batch)
    after_step = torch.rand(())

    reference.train()
    torch.manual_seed(5)
    feats, teacher_feats, strong, weak = reference.augmented_features(batch)
    with torch.no_grad():
        teacher = reference.predict(reference.teacher, teacher_feats)
    student = reference.predict(reference.student, feats)
    losses = supervised_losses(student, strong, weak, batch["has_strong"], batch["has_weak"])
    losses.update(consistency_losses(student, teacher))
    weight = reference.consistency_weight()
    total = losses["strong"] + losses["weak"] + weight * (losses["consistency_strong"] + losses["consistency_weak"])
    total.backward()

    assert weight > 0 and loss == float(total)
    assert torch.equal(after_step, torch.rand(()))
    for got, want in zip(grads, (p.grad for p in reference.student.parameters())):
        assert torch.equal(got, want)
    for got, want in zip(module.teacher.buffers(), reference.teacher.buffers()):
        assert torch.equal(got, want)


def test_channels_last_crnn_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = CRNN(n_classes=3, n_features=64, filters=(4, 8, 8), pooling=((2, 4), (2, 4), (1, 4)), rnn_hidden=8)
    fast = CRNN(
        n_classes=3,
        n_features=64,
        filters=(4, 8, 8),
        pooling=((2, 4), (2, 4), (1, 4)),
        rnn_hidden=8,
        channels_last=True,
    )
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(3, 64, 100)
    outs = []
    for model in (plain, fast):
        torch.manual_seed(2)  # train mode: the same dropout masks
        out = model.train()(x)
        (out.strong.mean() + out.weak_logits.mean()).backward()
        outs.append(out)
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-5)
    for a, b in zip(plain.parameters(), fast.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5)
    assert fast.state_dict().keys() == plain.state_dict().keys()


def test_compiled_training_step_gives_the_eager_loss_and_gradients():
    """``training.compile=true`` on a fixed batch: the eager loss and gradients (to 1e-5). Dropout is off here
    because compiled dropout draws other masks (inductor's generator); BatchNorm runs on batch statistics.
    Slow on a cold inductor cache (~1-2 min on 2 CPU cores: C++ kernels are built); it is the only compile test."""
    pytest.importorskip("torch._inductor")
    # One CNN block (the smallest graph with every layer kind of the CRNN: conv, norm, gating, pooling, GRU,
    # heads): inductor builds fewer C++ kernels on a cold cache.
    overrides = {
        "model.dropout": 0.0,
        "model.dropout_recurrent_out": 0.0,
        "training.mixup.prob": 1.0,
        "model.filters": [4],
        "model.pooling": [[4, 16]],
    }
    eager = tiny_module(CLASSES, **overrides)
    compiled = tiny_module(CLASSES, **{**overrides, "training.compile": True})
    batch = _batch()
    loss, grads = _step(compiled, batch)
    want_loss, want_grads = _step(eager, batch)
    assert loss == pytest.approx(want_loss, abs=1e-5)
    for got, want in zip(grads, want_grads):
        assert torch.allclose(got, want, atol=1e-5)
    for got, want in zip(compiled.teacher.buffers(), eager.teacher.buffers()):
        assert torch.allclose(got.float(), want.float(), atol=1e-5)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints keep their keys


def test_subset_rows_are_a_slice_when_contiguous():
    from sed.training.execution import subset_rows

    assert subset_rows(torch.tensor([True, True, False, False])) == slice(0, 2)
    assert subset_rows(torch.tensor([False, False, True, True, False])) == slice(2, 4)
    assert subset_rows(torch.tensor([True, False, True])) == [0, 2]
    assert subset_rows(torch.tensor([False, False])) == []


def test_masked_bce_equals_the_bce_of_the_selected_rows():
    """The loss weighted by the row mask (no boolean indexing, so no host-device synchronisation) is the mean BCE
    over the labelled rows, as indexing gave; with no labelled row it is 0 and the graph still reaches the logits."""
    import torch.nn.functional as F

    from sed.models.crnn import CRNNOutput

    g = torch.Generator().manual_seed(3)
    strong, weak = torch.randn(6, 3, 15, generator=g, requires_grad=True), torch.randn(6, 3, generator=g)
    out = CRNNOutput(strong, weak, strong.sigmoid(), weak.sigmoid())
    ys, yw = (torch.rand(6, 3, 15, generator=g) > 0.5).float(), (torch.rand(6, 3, generator=g) > 0.5).float()
    rows_s, rows_w = torch.tensor([1, 1, 0, 0, 1, 0]).bool(), torch.tensor([0, 0, 1, 1, 0, 0]).bool()
    got = supervised_losses(out, ys, yw, rows_s, rows_w)
    assert got["strong"].item() == pytest.approx(
        F.binary_cross_entropy_with_logits(strong[rows_s], ys[rows_s]).item(), rel=1e-6
    )
    assert got["weak"].item() == pytest.approx(
        F.binary_cross_entropy_with_logits(weak[rows_w], yw[rows_w]).item(), rel=1e-6
    )
    none = supervised_losses(out, ys, yw, torch.zeros(6, dtype=torch.bool), rows_w)["strong"]
    none.backward()
    assert none.item() == 0.0 and strong.grad is not None and not strong.grad.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_step_never_waits_for_the_device():
    """On a GPU the whole step (augmentation, mixup, both models, losses, the loss check, logging of host numbers,
    backward) queues work without one host-device synchronisation, and a NaN loss is still refused before the
    optimiser step."""
    from sed.training.module import NonFiniteLossError

    module = tiny_module(CLASSES, **{"training.mixup.prob": 1.0}).cuda()
    optimizer = torch.optim.Adam(module.student.parameters())
    module.log = lambda *a, **k: None
    module.optimizers = lambda *a, **k: optimizer
    module.train()
    batch = module.on_before_batch_transfer(_batch(), 0)
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    _step_once = lambda b: module.training_step(dict(b), 0).backward()  # noqa: E731
    _step_once(batch)  # warm-up: cuDNN/cuBLAS handles, pinned-memory pool
    module._check_finite()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _step_once(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    module.on_before_optimizer_step(optimizer)  # the finite check: passes

    bad = dict(batch, audio=batch["audio"] * float("nan"))
    module.training_step(bad, 1).backward()
    before = [p.detach().clone() for p in module.student.parameters()]
    with pytest.raises(NonFiniteLossError, match="clip0.wav"):
        module.on_before_optimizer_step(optimizer)
    assert all(torch.equal(a, b) for a, b in zip(before, module.student.parameters()))
