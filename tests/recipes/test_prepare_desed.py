"""recipes/desed/prepare.py on a tiny fake DESED tree: layout, rates, TSVs, durations, reruns, errors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
RATE_IN = 44100


def _load_prepare():
    spec = importlib.util.spec_from_file_location("prepare_desed", REPO / "recipes" / "desed" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["prepare_desed"] = module  # worker processes find the conversion function by this name
    spec.loader.exec_module(module)
    return module


prep = _load_prepare()


def _wav(path: Path, seconds: float, channels: int = 1, rate: int = RATE_IN, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = 0.2 * np.random.default_rng(seed).standard_normal((int(seconds * rate), channels))
    sf.write(path, data.astype(np.float32), rate, subtype="PCM_16")


def _text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


SYNTH_TRAIN_TSV = (
    "filename\tonset\toffset\tevent_label\n"
    "0.wav\t0.1\t0.9\tDog\n"
    "0.wav\t0.5\t1.5\tDog\n"  # same-class overlap: kept as shipped (the reader merges at training time)
    "0.wav\t0.2\t1.0\tSpeech\n"
    "1.wav\t0.0\t2.0\tFrying\n"
    "2.wav\t1.0\t1.8\tCat\n"
)


def make_desed(root: Path, with_unlabeled_tsv: bool = True) -> Path:
    """A DESED-shaped tree: 2-second 44.1 kHz clips, one listed weak clip missing (as YouTube clips are)."""
    for i in range(3):
        _wav(root / f"audio/train/synthetic21_train/soundscapes/{i}.wav", 2.0, seed=i)
    _text(root / "metadata/train/synthetic21_train/soundscapes.tsv", SYNTH_TRAIN_TSV)
    for name in ("Y_a_0.000_10.000.wav", "Y_b_30.000_40.000.wav"):
        _wav(root / "audio/train/weak" / name, 2.0, seed=10)
    _text(
        root / "metadata/train/weak.tsv",
        "filename\tevent_labels\nY_a_0.000_10.000.wav\tDog,Speech\nY_b_30.000_40.000.wav\tBlender\n"
        "Y_gone_0.000_10.000.wav\tCat\n",
    )
    for i in range(3):
        _wav(root / f"audio/train/unlabel_in_domain/Y_u{i}_0.000_10.000.wav", 2.0, seed=20 + i)
    if with_unlabeled_tsv:
        _text(
            root / "metadata/train/unlabel_in_domain.tsv",
            "filename\n" + "".join(f"Y_u{i}_0.000_10.000.wav\n" for i in range(3)),
        )
    for i in range(2):
        _wav(root / f"audio/validation/synthetic21_validation/soundscapes/{i}.wav", 2.0, seed=30 + i)
    _text(
        root / "metadata/validation/synthetic21_validation/soundscapes.tsv",
        "filename\tonset\toffset\tevent_label\n0.wav\t0.3\t1.2\tAlarm_bell_ringing\n1.wav\t0.0\t0.6\tDishes\n",
    )
    _wav(root / "audio/validation/validation/Y_v1_0.000_10.000.wav", 2.0, channels=2, seed=40)
    _wav(root / "audio/validation/validation/Y_v2_5.000_15.000.wav", 1.5, seed=41)
    _text(
        root / "metadata/validation/validation.tsv",
        "filename\tonset\toffset\tevent_label\nY_v1_0.000_10.000.wav\t0.2\t1.1\tVacuum_cleaner\n"
        "Y_v2_5.000_15.000.wav\t0.0\t1.4\tRunning_water\n",
    )
    _text(
        root / "metadata/validation/validation_durations.tsv",
        "filename\tduration\nY_v1_0.000_10.000.wav\t2.0\nY_v2_5.000_15.000.wav\t1.5\n",
    )
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    desed = make_desed(tmp_path_factory.mktemp("desed"))
    out = tmp_path_factory.mktemp("prepared")
    counts = prep.prepare(desed, out, sample_rate=16000, workers=2)
    return desed, out, counts


def test_layout_and_rates(prepared):
    desed, out, counts = prepared
    assert counts == {"strong": 3, "weak": 2, "unlabeled": 3, "validation": 2, "test": 2}
    expected = {
        "audio/train/strong": ["0.wav", "1.wav", "2.wav"],
        "audio/train/weak": ["Y_a_0.000_10.000.wav", "Y_b_30.000_40.000.wav"],
        "audio/train/unlabeled": [f"Y_u{i}_0.000_10.000.wav" for i in range(3)],
        "audio/validation": ["0.wav", "1.wav"],
        "audio/test": ["Y_v1_0.000_10.000.wav", "Y_v2_5.000_15.000.wav"],
    }
    for folder, names in expected.items():
        assert sorted(p.name for p in (out / folder).iterdir()) == names
        for name in names:
            info = sf.info(out / folder / name)
            assert info.samplerate == 16000 and info.subtype == "PCM_16"
    assert sf.info(out / "audio/test/Y_v1_0.000_10.000.wav").channels == 2  # channels kept; mixed at load time
    assert sf.info(out / "audio/test/Y_v2_5.000_15.000.wav").frames == 24000
    for rel in (
        "metadata/train/strong.tsv",
        "metadata/train/weak.tsv",
        "metadata/train/unlabeled.tsv",
        "metadata/validation/validation.tsv",
        "metadata/validation/durations.tsv",
        "metadata/test/test.tsv",
        "metadata/test/durations.tsv",
        "classes.txt",
        ".complete",
    ):
        assert (out / rel).is_file(), rel
    assert (out / "classes.txt").read_text().split() == prep.DESED_CLASSES
    from sed.synth import dataset_layout

    assert dataset_layout(out).complete()  # data.generate=true would never overwrite it


def test_resampled_content_matches(prepared):
    desed, out, _ = prepared
    import torch
    import torchaudio.functional as AF

    src, _ = sf.read(desed / "audio/train/weak/Y_a_0.000_10.000.wav", dtype="float32")
    dst, rate = sf.read(out / "audio/train/weak/Y_a_0.000_10.000.wav", dtype="float32")
    ref = AF.resample(torch.from_numpy(src), RATE_IN, 16000).numpy()
    assert rate == 16000 and dst.shape == ref.shape
    np.testing.assert_allclose(dst, ref, atol=2.0 / 32768)


def test_annotations(prepared):
    from sed.data.tsv import read_durations, read_filenames, read_strong, read_weak

    _, out, _ = prepared
    strong = read_strong(out / "metadata/train/strong.tsv", prep.DESED_CLASSES, merge_overlaps=False)
    assert len(strong) == 5  # rows as shipped
    weak = read_weak(out / "metadata/train/weak.tsv", prep.DESED_CLASSES)
    assert list(weak["filename"]) == ["Y_a_0.000_10.000.wav", "Y_b_30.000_40.000.wav"]
    assert weak["event_labels"].iloc[0] == ("Dog", "Speech")
    assert list(read_filenames(out / "metadata/train/unlabeled.tsv")) == [f"Y_u{i}_0.000_10.000.wav" for i in range(3)]
    assert read_durations(out / "metadata/validation/durations.tsv") == pytest.approx({"0.wav": 2.0, "1.wav": 2.0})
    assert read_durations(out / "metadata/test/durations.tsv") == {
        "Y_v1_0.000_10.000.wav": 2.0,
        "Y_v2_5.000_15.000.wav": 1.5,
    }
    test = read_strong(out / "metadata/test/test.tsv", prep.DESED_CLASSES)
    assert set(test["event_label"]) == {"Vacuum_cleaner", "Running_water"}
    missing = (out / "missing_files.tsv").read_text().splitlines()
    assert missing[0] == "subset\tfilename\treason"
    assert missing[1].startswith("weak\tY_gone_0.000_10.000.wav\tnot found")


def test_datamodule_reads_it(prepared):
    from sed.data.datamodule import SEDDataModule
    from sed.data.encoder import LabelEncoder

    _, out, _ = prepared
    dm = SEDDataModule(str(out), clip_duration=2.0, batch_sizes=[1, 1, 1], eval_batch_size=2, num_workers=0)
    dm.set_encoder(LabelEncoder(dm.classes, clip_duration=2.0))
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.train_sets.items()} == {"strong": 3, "weak": 2, "unlabeled": 3}
    assert len(dm.eval_datasets["val"]) == 2
    item = dm.train_sets["strong"][0]
    assert item["audio"].shape == (32000,) and item["strong"].shape == (10, dm.encoder.n_frames)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["audio"].shape == (2, 32000)
    assert set(dm.durations["test"]) == {"Y_v1_0.000_10.000.wav", "Y_v2_5.000_15.000.wav"}


def test_rerun_skips_converted_files(prepared, caplog):
    desed, out, counts = prepared
    wav = out / "audio/train/strong/0.wav"
    before = wav.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="prepare_desed"):
        assert prep.prepare(desed, out, sample_rate=16000, workers=1) == counts
    assert wav.stat().st_mtime_ns == before
    assert "0 converted, 12 already done, 0 failed" in caplog.text


def test_unlabeled_folder_without_tsv_and_separate_synth_root(tmp_path):
    real = make_desed(tmp_path / "desed", with_unlabeled_tsv=False)
    synth = tmp_path / "dcase_synth"
    for sub in (
        "audio/train/synthetic21_train",
        "audio/validation/synthetic21_validation",
        "metadata/train/synthetic21_train",
        "metadata/validation/synthetic21_validation",
    ):
        (synth / sub).parent.mkdir(parents=True, exist_ok=True)
        (real / sub).rename(synth / sub)
    (synth / "audio/validation/synthetic21_validation/soundscapes/1.wav").write_bytes(b"not a wav file")
    out = tmp_path / "out"
    with pytest.raises(prep.PrepareError, match="synthetic21_train/soundscapes: folder not found"):
        prep.prepare(real, out, workers=1)
    assert prep.main([str(real), str(out), "--synth-root", str(synth), "--workers", "1"]) == 0
    assert (out / "metadata/train/unlabeled.tsv").read_text().splitlines()[1:] == [
        f"Y_u{i}_0.000_10.000.wav" for i in range(3)
    ]
    assert (out / "metadata/validation/validation.tsv").read_text().splitlines()[1:] == [
        "0.wav\t0.3\t1.2\tAlarm_bell_ringing"
    ]
    assert "validation\t1.wav\tunreadable" in (out / "missing_files.tsv").read_text()


def test_errors_name_the_path(tmp_path, capsys):
    desed = make_desed(tmp_path / "desed")
    (desed / "metadata/train/weak.tsv").unlink()
    for p in (desed / "audio/train/unlabel_in_domain").iterdir():
        p.unlink()
    (desed / "audio/train/unlabel_in_domain").rmdir()
    assert prep.main([str(desed), str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{desed / 'metadata/train/weak.tsv'}: file not found" in err
    assert f"{desed / 'audio/train/unlabel_in_domain'}: folder not found" in err
    assert not (tmp_path / "out").exists()

    assert prep.main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "nowhere: DESED root folder not found" in capsys.readouterr().err

    bad = make_desed(tmp_path / "bad")
    _text(
        bad / "metadata/validation/validation.tsv",
        "filename\tonset\toffset\tevent_label\nY_v1_0.000_10.000.wav\t0.2\t1.1\tVacuum\n",
    )
    assert prep.main([str(bad), str(tmp_path / "out2"), "--workers", "1"]) == 2
    assert "validation.tsv:2: unknown label 'Vacuum'" in capsys.readouterr().err
