"""Run-length-adaptive schedule: warm-up as a share of the run and an EMA horizon that scales with it."""

import numpy as np
import pytest
import torch
from conftest import run_train, tiny_overrides
from torch import nn

from sed.training.schedules import ema_max_factor, lr_factor, warmup_lambda_lr, warmup_steps


def test_warmup_fraction_is_a_share_of_the_run_whatever_its_length():
    assert warmup_steps(1000, 50, warmup_epochs=3, warmup_fraction=0.15) == 150
    assert warmup_steps(10_000, 50, warmup_epochs=3, warmup_fraction=0.15) == 1500
    assert warmup_steps(1000, 50, warmup_epochs=3, warmup_fraction=None) == 150  # 3 epochs of 50 steps
    with pytest.raises(ValueError, match="warmup_fraction"):
        warmup_steps(1000, 50, warmup_epochs=3, warmup_fraction=1.5)


def test_ema_horizon_averages_a_share_of_the_run():
    # 5 % of 2,000 steps = 100 steps: factor 0.99; of 40,000 steps (the 200-epoch baseline): 0.9995
    assert ema_max_factor(2000, 0.999, 0.05) == pytest.approx(0.99)
    assert ema_max_factor(40_000, 0.999, 0.05) == pytest.approx(0.9995)
    assert ema_max_factor(20, 0.999, 0.05) == 0.9  # clamped: never a teacher that copies the student
    assert ema_max_factor(10**9, 0.999, 0.5) == 0.9999
    assert ema_max_factor(2000, 0.999, None) == 0.999  # the baseline's fixed factor
    with pytest.raises(ValueError, match="ema_horizon"):
        ema_max_factor(2000, 0.999, 0.0)


def test_scheduler_with_warmup_fraction_ramps_over_that_share():
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=1.0)
    sched = warmup_lambda_lr(opt, total_steps=200, steps_per_epoch=10, warmup_epochs=50, warmup_fraction=0.25)
    rates = []
    for _ in range(200):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[:50] == pytest.approx([lr_factor(s, 50, 200, "constant", 1e-5) for s in range(50)])
    assert rates[49] < 1.0 and rates[50:] == [1.0] * 150


def test_module_uses_the_run_length_schedule(tiny_dataset, tmp_path):
    """A run with warmup_fraction/ema_horizon logs the factor its length implies: ema_horizon 0.5 of a
    run of N steps settles at 1 - 2/N (above the clamp for N >= 20)."""
    import csv

    exp = tmp_path / "exp"
    args = tiny_overrides(tiny_dataset, exp, epochs=2) + [
        "training.warmup_fraction=0.5",
        "training.ema_horizon=0.5",
        "logger=csv",
    ]
    run_train(args)
    rows = list(csv.DictReader(open(next(exp.rglob("metrics.csv")))))
    factors = [float(r["train/ema_factor"]) for r in rows if r.get("train/ema_factor")]
    steps = max(int(r["step"]) for r in rows) + 1
    assert factors and max(factors) <= max(1 - 2 / steps, 0.9) + 1e-6


def test_quarter_cosine_from_a_later_epoch_as_the_2024_baseline():
    """Warm-up over 5 epochs, constant to epoch 10, then cos(pi/2 * progress) floored at min_lr / lr (10 steps an
    epoch, 30 epochs: DESED_task's ExponentialWarmup with start_annealing)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = warmup_lambda_lr(
        opt,
        total_steps=300,
        steps_per_epoch=10,
        warmup_epochs=5,
        schedule="quarter_cosine",
        min_lr=1e-8,
        decay_start_epoch=10,
    )
    rates = []
    for _ in range(300):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[49] < 1e-3 and rates[50] == rates[99] == pytest.approx(1e-3)
    assert rates[100 + 100] == pytest.approx(1e-3 * np.cos(np.pi / 2 * 100 / 200))
    assert rates[299] == pytest.approx(1e-3 * max(1e-5, np.cos(np.pi / 2 * 199 / 200)))
    assert lr_factor(300, 50, 300, "quarter_cosine", 1e-5, 100) == pytest.approx(1e-5)  # floored at the end


def test_a_group_that_starts_later_gets_its_own_warm_up():
    """A pretrained encoder fine-tuned from epoch 2 (its groups' start_step): its rate ramps up from then over the
    run's warm-up length, while the other groups follow the run's schedule unchanged."""
    head, encoder = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [head]}, {"params": [encoder], "lr": 1e-4, "start_step": 20}], lr=1e-3)
    sched = warmup_lambda_lr(opt, total_steps=100, steps_per_epoch=10, warmup_epochs=1, schedule="cosine", min_lr=1e-5)
    rates = []
    for _ in range(100):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    for step in (0, 5, 10, 50, 99):
        assert rates[step][0] == pytest.approx(1e-3 * lr_factor(step, 10, 100, "cosine", 1e-2))
    for step in (20, 25, 30, 60, 99):
        assert rates[step][1] == pytest.approx(1e-4 * lr_factor(step - 20, 10, 80, "cosine", 1e-2))
    assert rates[20][1] == pytest.approx(1e-4 * np.exp(-5.0)) and rates[30][1] == pytest.approx(1e-4)
