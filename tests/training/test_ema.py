import copy

import pytest
import torch
from torch import nn

from sed.training.ema import ema_factor, update_teacher


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_update_averages_parameters_and_batchnorm_buffers():
    student = _net()
    teacher = copy.deepcopy(student)
    student.train()
    student(torch.randn(16, 3) * 5 + 2)  # moves BatchNorm running statistics
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    update_teacher(teacher, student, factor=0.9)
    after, stud = teacher.state_dict(), student.state_dict()
    for key, value in after.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(value, 0.9 * before[key] + 0.1 * stud[key])
        else:
            assert torch.equal(value, stud[key]), key  # num_batches_tracked copied
    assert not torch.equal(after["1.running_mean"], before["1.running_mean"])


def test_factor_warm_start_then_constant():
    assert ema_factor(0, 0.999) == 0.0  # first update copies the student
    assert ema_factor(1, 0.999) == pytest.approx(0.5)
    assert ema_factor(9, 0.999) == pytest.approx(0.9)
    assert ema_factor(10_000, 0.999) == 0.999


def test_first_update_copies_student():
    student, teacher = _net(), _net()
    with torch.no_grad():
        for p in teacher.parameters():
            p.zero_()
    update_teacher(teacher, student, ema_factor(0, 0.999))
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s)


def test_parameters_only_as_the_dcase_baseline():
    student = _net()
    teacher = copy.deepcopy(student)
    student.train()
    student(torch.randn(16, 3) * 5 + 2)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    update_teacher(teacher, student, factor=0.9, buffers=False)
    after, stud = teacher.state_dict(), student.state_dict()
    for name, _ in teacher.named_parameters():
        torch.testing.assert_close(after[name], 0.9 * before[name] + 0.1 * stud[name])
    for name, _ in teacher.named_buffers():
        assert torch.equal(after[name], before[name]), name  # the teacher's own statistics
