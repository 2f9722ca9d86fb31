import pytest
import torch

from sed.data.encoder import LabelEncoder
from sed.datamodule import SEDDataModule

SIZES = {"strong": 6, "weak": 4, "unlabeled": 6, "validation": 3, "test": 3}


def _dm(root, **kwargs) -> SEDDataModule:
    args = dict(root=str(root), generate=True, generate_sizes=SIZES, clip_duration=1.0, batch_sizes=[2, 2, 2],
                eval_batch_size=4, num_workers=0)
    args.update(kwargs)
    return SEDDataModule(**args)


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generates_embedded_data_once_and_refuses_other_settings(tmp_path):
    root = tmp_path / "embedded"
    _dm(root).prepare_data()
    assert (root / ".complete").is_file()
    before = _snapshot(root)
    _dm(root).prepare_data()
    assert _snapshot(root) == before  # complete and matching: left alone
    with pytest.raises(ValueError, match=r"data.root=.*embedded holds the synthetic dataset generated with other "
                                         r"settings \(data.clip_duration: 1.0 there, 1.5 in this run\)"):
        _dm(root, clip_duration=1.5).prepare_data()
    with pytest.raises(ValueError, match=r"data.generate_sizes: .* there"):
        _dm(root, generate_sizes={**SIZES, "strong": 7}).prepare_data()
    assert _snapshot(root) == before


def test_generation_never_touches_a_users_dataset(tmp_path, tiny_dataset):
    """`python train.py data.root=/my/data` with the embedded default's data.generate=true: refused, untouched."""
    import shutil

    user = tmp_path / "my_data"
    shutil.copytree(tiny_dataset, user)
    for marker in (".complete", ".generating"):
        (user / marker).unlink(missing_ok=True)
    (user / "README.txt").write_text("my own dataset")
    before = _snapshot(user)
    with pytest.raises(ValueError, match=r"data.root=.*my_data.*files the generator did not write.*data.generate=false"):
        _dm(user).prepare_data()
    assert _snapshot(user) == before


def test_mixed_batches_and_eval_sets(tmp_path):
    dm = _dm(tmp_path / "d")
    dm.prepare_data()
    encoder = LabelEncoder(dm.classes, sample_rate=16000, hop_length=256, clip_duration=1.0, time_pooling=4)
    dm.set_encoder(encoder)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (6, 16000)
    assert batch["has_strong"].tolist() == [True, True, False, False, False, False]
    assert batch["has_weak"].tolist() == [False, False, True, True, False, False]
    assert batch["strong"].shape == (6, len(dm.classes), encoder.n_frames)
    assert torch.all(batch["strong"][2:] == 0)
    val = next(iter(dm.val_dataloader()))
    assert len(val["filename"]) == 3 and set(dm.durations["val"]) >= set(val["filename"])
    assert len(dm.scaler_fit_dataloader().dataset) == 16


def test_missing_classes_file_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        _ = SEDDataModule(root=str(tmp_path)).classes
    with pytest.raises(FileNotFoundError, match=r"data.root=.*nowhere does not exist"):
        _ = SEDDataModule(root=str(tmp_path / "nowhere")).classes
