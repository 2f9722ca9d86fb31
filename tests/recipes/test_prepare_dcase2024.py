"""recipes/dcase2024/prepare.py on tiny fake DESED and MAESTRO Real trees: layout, splits, soft labels, missing
clips reported, bad input, and the 2024 recipe reading the result."""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_prepare_desed import _text, _wav, make_desed

REPO = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("prepare_dcase2024", REPO / "recipes" / "dcase2024" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["prepare_dcase2024"] = module
    spec.loader.exec_module(module)
    return module


prep = _load()
SCENES = {"cafe_restaurant": 3, "metro_station": 3}


def make_maestro(root: Path) -> Path:
    """MAESTRO Real's development layout: 12-s recordings at 44.1 kHz, one annotation without audio."""
    for scene, n in SCENES.items():
        for i in range(n):
            name = f"{scene}_{i:02d}"
            _wav(root / "development_audio" / scene / f"{name}.wav", 12.0, seed=i)
            _text(
                root / "development_annotation" / scene / f"{name}.txt",
                f"0.5\t4.25\tpeople talking\t{0.2 * (i + 1):.1f}\n6.0\t9.5\tfootsteps\t1.0\n"
                f"7.0\t8.0\tcutlery and dishes\t0.6666\n",
            )
    _text(root / "development_annotation" / "cafe_restaurant" / "cafe_restaurant_09.txt", "1.0\t2.0\tcar\t1.0\n")
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("dcase2024")
    desed = make_desed(base / "desed")
    for i in range(2):
        _wav(desed / f"audio/train/strong_label_real/Y_s{i}_0.000_10.000.wav", 2.0, seed=50 + i)
    _text(
        desed / "metadata/train/audioset_strong.tsv",
        "filename\tonset\toffset\tevent_label\nY_s0_0.000_10.000.wav\t0.1\t1.0\tSpeech\n"
        "Y_s1_0.000_10.000.wav\t0.5\t1.5\tDog\nY_gone_0.000_10.000.wav\t0\t1\tCat\n",
    )
    maestro = make_maestro(base / "maestro_dev")
    test_list = base / "validation_split.csv"
    test_list.write_text("val\ncafe_restaurant_02.txt\nmetro_station_00.txt\n")
    out = base / "out"
    counts = prep.prepare(desed, maestro, out, test_list, sample_rate=16000, workers=1, val_fraction=0.5, seed=0)
    return out, counts


def test_layout_splits_and_soft_labels(prepared):
    from sed.data.tsv import read_durations, read_strong

    out, counts = prepared
    assert counts["desed"] == {"strong": 3, "weak": 2, "unlabeled": 3, "validation": 2, "test": 2, "strong_real": 2}
    assert counts["maestro"] == {"train": 2, "validation": 2, "test": 2}
    splits = json.loads((out / "maestro" / "splits.json").read_text())
    assert splits["test"] == ["cafe_restaurant_02", "metro_station_00"]
    for scene in SCENES:  # each scene: one of its two remaining recordings validates, the other trains
        assert sum(n.startswith(scene) for n in splits["validation"]) == 1
        assert sum(n.startswith(scene) for n in splits["train"]) == 1
    for split in ("train", "validation", "test"):
        files = sorted((out / "maestro" / "audio" / split).iterdir())
        assert [f.stem for f in files] == sorted(splits[split])
        assert all(sf.info(f).samplerate == 16000 and sf.info(f).frames == 12 * 16000 for f in files)
        assert set(read_durations(out / "maestro" / "metadata" / split / "durations.tsv").values()) == {12.0}
        events = read_strong(
            out / "maestro" / "metadata" / split / f"{split}.tsv", prep.MAESTRO_CLASSES, merge_overlaps=False
        )
        assert len(events) == 3 * len(files) and set(events["confidence"]) <= {0.2, 0.4, 0.6, 0.6666, 1.0}
    test = read_strong(out / "maestro/metadata/test/test.tsv", prep.MAESTRO_CLASSES)
    talk = test[(test["filename"] == "cafe_restaurant_02.wav") & (test["event_label"] == "people talking")]
    assert talk[["onset", "offset", "confidence"]].values.tolist() == [[0.5, 4.25, 0.6]]
    assert "cafe_restaurant_09.wav\tno audio" in (out / "maestro" / "missing_files.tsv").read_text()


def test_desed_with_the_real_strong_clips_and_missing_ones_reported(prepared):
    from sed.data.tsv import read_strong

    out, _ = prepared
    desed = out / "desed"
    assert sorted(p.name for p in (desed / "audio/train/strong_real").iterdir()) == [
        "Y_s0_0.000_10.000.wav",
        "Y_s1_0.000_10.000.wav",
    ]
    full = read_strong(desed / "metadata/train/strong_full.tsv", prep.desed.DESED_CLASSES, merge_overlaps=False)
    assert {f.split("/")[0] for f in full["filename"]} == {"strong", "strong_real"}
    assert all((desed / "audio/train" / f).is_file() for f in full["filename"])
    missing = (desed / "missing_files.tsv").read_text()
    assert "weak\tY_gone_0.000_10.000.wav\tnot found" in missing  # recipes/desed/prepare.py's report, kept
    assert "strong_real\tY_gone_0.000_10.000.wav\tnot found" in missing


def test_the_2024_recipe_reads_it(prepared):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import sed.run.config  # noqa: F401
    from sed.data.encoder import LabelEncoder

    out, _ = prepared
    batches = [
        f"data.datasets.{d}.train.{s}.batch_size=1"
        for d, s in (
            ("maestro", "real"),
            ("desed", "synth"),
            ("desed", "strong"),
            ("desed", "weak"),
            ("desed", "unlabeled"),
        )
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "exp=dcase2024_crnn",
                f"data.root={out}",
                "data.clip_duration=2.0",
                "data.weak_val_fraction=0",
                "data.num_workers=0",
                *batches,
                f"paths.exp_dir={tempfile.gettempdir()}/sed-test-compose",
            ],
        )
    dm = instantiate(cfg.data, _convert_="all")
    assert len(dm.classes) == 27
    dm.set_encoder(LabelEncoder(dm.classes, clip_duration=2.0))
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.train_sets.items()} == {
        "maestro/real": 22,
        "desed/synth": 3,
        "desed/strong": 5,
        "desed/weak": 2,
        "desed/unlabeled": 3,
    }
    batch = next(iter(dm.train_dataloader()))
    speech, talk = dm.classes.index("Speech"), dm.classes.index("people talking")
    assert batch["class_mask"][0, talk] and batch["class_mask"][0, speech] and not batch["class_mask"][1, talk]
    assert not batch["consistency"][0] and batch["consistency"][1:].all()  # MAESTRO's rows out of it


def test_bad_input_names_the_file(tmp_path, capsys):
    desed = make_desed(tmp_path / "desed")
    maestro = make_maestro(tmp_path / "maestro")
    listed = tmp_path / "list.csv"
    listed.write_text("val\ncafe_restaurant_02\n")
    _text(maestro / "development_annotation/metro_station/metro_station_01.txt", "0.5\t4.0\tpeople talking\tsure\n")
    assert (
        prep.main(
            [str(desed), str(maestro), str(tmp_path / "out"), "--maestro-test-list", str(listed), "--workers", "1"]
        )
        == 2
    )
    assert "metro_station_01.txt:1: onset, offset and confidence must be numbers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
    _text(maestro / "development_annotation/metro_station/metro_station_01.txt", "0.5\t4.0\tpeople talking\t1.5\n")
    assert prep.main([str(desed), str(maestro), str(tmp_path / "out"), "--maestro-test-list", str(listed)]) == 2
    assert "metro_station_01.txt:1: confidence 1.5 is outside [0, 1]" in capsys.readouterr().err
    assert (
        prep.main([str(desed), str(tmp_path / "nowhere"), str(tmp_path / "out"), "--maestro-test-list", str(listed)])
        == 2
    )
    assert "nowhere: MAESTRO Real development folder not found" in capsys.readouterr().err
    assert (
        prep.main([str(desed), str(maestro), str(tmp_path / "out"), "--maestro-test-list", str(tmp_path / "none.csv")])
        == 2
    )
    assert "none.csv: MAESTRO test list not found" in capsys.readouterr().err
    np.testing.assert_array_equal(prep.split_maestro(["a_1", "a_2"], {"a_2"}, 0.5, 0)["train"], ["a_1"])
