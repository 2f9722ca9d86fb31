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


def test_generates_embedded_data_once_and_again_when_its_settings_change(tmp_path):
    root = tmp_path / "embedded"
    _dm(root).prepare_data()
    marker = root / ".complete"
    assert marker.is_file()
    stamp = marker.stat().st_mtime_ns
    _dm(root).prepare_data()
    assert marker.stat().st_mtime_ns == stamp  # complete and matching: left alone
    _dm(root, clip_duration=1.5).prepare_data()
    assert marker.stat().st_mtime_ns != stamp
    import soundfile as sf

    info = sf.info(str(next((root / "audio" / "train" / "strong").glob("*.wav"))))
    assert info.frames == 24000


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


def test_clips_with_a_duration_but_no_ground_truth_row_are_a_warning(tmp_path, caplog):
    """DCASE ground truth lists a clip without events as an empty row: a clip in durations.tsv and on disk but not
    in the ground truth is not evaluated, and the user is told how many."""
    import logging

    import numpy as np
    import soundfile as sf

    (tmp_path / "audio").mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        sf.write(tmp_path / "audio" / name, np.zeros(16000, dtype=np.float32), 16000)
    (tmp_path / "test.tsv").write_text("filename\tonset\toffset\tevent_label\na.wav\t0.1\t0.5\tdog\n")
    (tmp_path / "durations.tsv").write_text("filename\tduration\na.wav\t1\nb.wav\t1\nc.wav\t1\ngone.wav\t1\n")
    dm = SEDDataModule(root=str(tmp_path), classes=["dog"], clip_duration=1.0, test_tsv="test.tsv",
                       test_audio="audio", test_durations="durations.tsv", num_workers=0)
    dm.set_encoder(LabelEncoder(["dog"], sample_rate=16000, hop_length=256, clip_duration=1.0, time_pooling=4))
    with caplog.at_level(logging.WARNING, logger="sed.datamodule"):
        dm.setup("test")
    assert dm.eval_datasets["test"].filenames == ["a.wav"]
    assert "2 clip(s) of" in caplog.text and "b.wav" in caplog.text and "not evaluated" in caplog.text, caplog.text
