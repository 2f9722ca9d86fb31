"""SEDModule training-side behaviour: where and how mixup mixes."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_module

from sed.training.augment import mixup

CLASSES = ["a", "b", "c"]


def _batch(n_strong: int = 3, n_weak: int = 3, n_unlabeled: int = 2) -> dict:
    n = n_strong + n_weak + n_unlabeled
    g = torch.Generator().manual_seed(1)
    frames = 15
    return {
        "audio": 0.1 * torch.randn(n, 16000, generator=g),
        "strong": (torch.rand(n, len(CLASSES), frames, generator=g) > 0.5).float()
        * (torch.arange(n) < n_strong)[:, None, None],
        "weak": (torch.rand(n, len(CLASSES), generator=g) > 0.5).float(),
        "has_strong": torch.arange(n) < n_strong,
        "has_weak": (torch.arange(n) >= n_strong) & (torch.arange(n) < n_strong + n_weak),
    }


def _expected(module, batch, domain: str):
    """Mixup by hand, drawing from the global generator in the order the module documents: one coin for
    both subsets, then per subset a permutation and a Beta coefficient."""
    x = module.frontend.magnitude(batch["audio"]) if domain == "linear" else module.features(batch["audio"])
    strong, weak = batch["strong"].clone(), batch["weak"].clone()
    x = x.clone()
    assert float(torch.rand(())) < 1.0  # the shared coin (prob 1)
    for rows in (batch["has_strong"], batch["has_weak"]):
        idx = rows.nonzero().squeeze(1)
        x[idx], (strong[idx], weak[idx]) = mixup(x[idx], [strong[idx], weak[idx]], 0.2, "soft")
    if domain == "linear":
        x = module.scaler(module.frontend.log(x))
    return x, strong, weak


@pytest.mark.parametrize("domain", ["linear", "features"])
def test_mixup_mixes_linear_magnitudes_before_log_and_scaler_or_the_features(domain):
    module = tiny_module(
        CLASSES, **{"training.mixup.prob": 1.0, "training.mixup.domain": domain, "training.mixup.shared_draw": True}
    )
    batch = _batch()
    torch.manual_seed(5)
    feats, teacher, strong, weak = module.augmented_features(batch)
    assert teacher is feats  # no student-only augmentation configured: one input for both
    torch.manual_seed(5)
    want = _expected(module, batch, domain)
    for got, ref in zip((feats, strong, weak), want):
        assert torch.allclose(got, ref, atol=1e-6)
    unlabeled = ~(batch["has_strong"] | batch["has_weak"])
    assert torch.allclose(feats[unlabeled], module.features(batch["audio"])[unlabeled], atol=1e-6)
    assert not torch.allclose(feats[batch["has_strong"]], module.features(batch["audio"])[batch["has_strong"]])
    if domain == "linear":  # mixing magnitudes is not mixing their logs
        torch.manual_seed(5)
        assert not torch.allclose(feats, _expected(module, batch, "features")[0], atol=1e-3)


@pytest.mark.parametrize("shared", [True, False])
def test_one_coin_flip_for_both_subsets_or_one_each(shared):
    module = tiny_module(CLASSES, **{"training.mixup.prob": 0.5, "training.mixup.shared_draw": shared})
    batch = _batch(8, 8, 2)  # 8 rows: an identity permutation (mixing a row with itself) has odds 1/40320
    plain = module.features(batch["audio"])
    outcomes = set()
    for seed in range(40):
        torch.manual_seed(seed)
        feats, _, _, _ = module.augmented_features(batch)
        outcomes.add(
            tuple(not torch.allclose(feats[rows], plain[rows]) for rows in (batch["has_strong"], batch["has_weak"]))
        )
    assert outcomes == (
        {(False, False), (True, True)} if shared else {(False, False), (True, True), (True, False), (False, True)}
    )


def test_unknown_mixup_domain_is_refused():
    with pytest.raises(ValueError, match="training.mixup.domain"):
        tiny_module(CLASSES, **{"training.mixup.domain": "waveform"})


@pytest.mark.parametrize("power", [1.0, 0.0])
def test_class_balance_weights_come_from_the_strong_training_labels(tiny_dataset, tmp_path, power):
    import numpy as np
    import pytorch_lightning as pl
    from conftest import TINY_CLIP

    from sed.data.datamodule import SEDDataModule
    from sed.training.losses import class_balance_weights

    dm = SEDDataModule(str(tiny_dataset), clip_duration=TINY_CLIP, batch_sizes=[4, 2, 4], num_workers=0)
    module = tiny_module(dm.classes, clip_duration=TINY_CLIP, **{"training.class_balance": power})
    dm.set_encoder(module.encoder)
    trainer = pl.Trainer(
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    if power == 0:
        assert module.strong_pos_weight is None
        return
    fractions = dm.strong_active_fractions()
    assert fractions.shape == (len(dm.classes),) and (fractions > 0).sum() > 1
    expected = class_balance_weights(fractions, power)
    assert (expected > 1).any()
    np.testing.assert_allclose(module.strong_pos_weight.cpu().numpy(), expected, rtol=1e-6)
