"""Tests of the synthetic dataset generator (sed.synth): tiny sizes, 2 s clips."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sed.data.tsv import read_durations, read_filenames, read_strong, read_weak
from sed.synth import (
    DEFAULT_CLASSES,
    FolderSoundBank,
    GenerationRefused,
    ProceduralSoundBank,
    SceneConfig,
    SoundbankError,
    dataset_layout,
    generate_dataset,
    make_scene,
)
from sed.synth.__main__ import main as cli_main

SR = 16000
CLIP = 2.0
TINY = {"strong": 8, "weak": 3, "unlabeled": 3, "validation": 10, "test": 3}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    return generate_dataset(out, seed=0, clip_duration=CLIP, sample_rate=SR, sizes=TINY, workers=1)


def test_layout_tsvs_and_audio_agree(dataset):
    layout = dataset
    assert layout.complete()
    assert layout.classes() == DEFAULT_CLASSES and len(DEFAULT_CLASSES) >= 8
    assert layout.params()["seed"] == 0
    strong = read_strong(layout.strong_tsv, classes=DEFAULT_CLASSES, merge_overlaps=False)
    weak = read_weak(layout.weak_tsv, classes=DEFAULT_CLASSES)
    unlabeled = read_filenames(layout.unlabeled_tsv)
    val = read_strong(layout.validation_tsv, classes=DEFAULT_CLASSES, merge_overlaps=False)
    test = read_strong(layout.test_tsv, classes=DEFAULT_CLASSES, merge_overlaps=False)
    assert strong.filename.nunique() == TINY["strong"] and len(weak) == TINY["weak"]
    assert len(unlabeled) == TINY["unlabeled"]
    assert val.filename.nunique() == TINY["validation"] and test.filename.nunique() == TINY["test"]
    # every listed file exists, is mono 16 kHz, and nothing else lies in the audio folders
    for names, folder in (
        (set(strong.filename), layout.strong_audio),
        (set(weak.filename), layout.weak_audio),
        (set(unlabeled), layout.unlabeled_audio),
        (set(val.filename), layout.validation_audio),
        (set(test.filename), layout.test_audio),
    ):
        assert {p.name for p in folder.iterdir()} == names
        for name in names:
            info = sf.info(str(folder / name))
            assert info.samplerate == SR and info.channels == 1 and info.subtype == "PCM_16"
    # no-event clips: a row with NaN onset/offset and empty label, also listed in durations
    assert strong.onset.isna().any() and (strong[strong.onset.isna()].event_label == "").all()
    assert val.onset.isna().any()
    durations = read_durations(layout.validation_durations)
    assert set(durations) == set(val.filename)
    assert set(read_durations(layout.test_durations)) == set(test.filename)
    for name, d in durations.items():
        assert sf.info(str(layout.validation_audio / name)).frames == round(d * SR)
    assert min(durations.values()) < CLIP  # some validation clips are shorter, as in DESED
    # events lie inside their clip; weak clips all carry labels
    for df, dur in ((strong, {n: CLIP for n in strong.filename}), (val, durations)):
        ev = df.dropna()
        assert (ev.onset >= 0).all() and (ev.offset > ev.onset).all()
        assert all(off <= dur[n] + 1e-9 for n, off in zip(ev.filename, ev.offset))
    assert all(len(labels) > 0 for labels in weak.event_labels)
    readme = layout.readme.read_text()
    assert "seed: 0" in readme and "SNR" in readme


def test_same_seed_gives_identical_files_regardless_of_workers(tmp_path, dataset):
    again = generate_dataset(tmp_path / "again", seed=0, clip_duration=CLIP, sample_rate=SR, sizes=TINY, workers=2)
    files = _tree(dataset.root)
    assert files == _tree(again.root)
    match, mismatch, errors = filecmp.cmpfiles(dataset.root, again.root, files, shallow=False)
    assert not mismatch and not errors and len(match) == len(files)
    other = generate_dataset(tmp_path / "other", seed=1, clip_duration=CLIP, sample_rate=SR, sizes=TINY, workers=1)
    assert other.strong_tsv.read_bytes() != dataset.strong_tsv.read_bytes()


def _spans(events, n, sr):
    active = np.zeros(n, dtype=bool)
    for on, off, _ in events:
        active[int(on * sr) : int(off * sr)] = True
    return active


def test_annotations_match_audio():
    """Each annotated span is clearly louder than the background-only part of its clip."""
    bank = ProceduralSoundBank()
    config = SceneConfig(clip_duration=3.0, sample_rate=SR)
    checked: set[str] = set()
    ratios = []
    clipped = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        scene = make_scene(bank, rng, config, n_events=1 + seed % 2)
        x = scene.audio.astype(np.float64)
        active = _spans(scene.events, x.size, SR)
        assert scene.events and all(0 <= on < off <= 3.0 for on, off, _ in scene.events)
        clipped += any(off == 3.0 for _, off, _ in scene.events)
        if (~active).sum() < 0.3 * SR:
            continue
        bg_rms = np.sqrt(np.mean(x[~active] ** 2))
        for on, off, label in scene.events:
            seg = x[int(on * SR) : int(off * SR)]
            ratios.append(np.sqrt(np.mean(seg**2)) / bg_rms)
            checked.add(label)
            # the event starts where annotated: the first 20 ms after the onset are louder than background
            head = x[int(on * SR) : int(on * SR) + int(0.02 * SR)]
            assert np.sqrt(np.mean(head**2)) > bg_rms, (seed, label, on)
    assert len(checked) >= 6, checked
    assert min(ratios) > 10 ** (3 / 20), min(ratios)  # SNR >= 6 dB -> span at least ~3 dB above background
    assert clipped >= 1  # some events run into the clip end, annotated up to it


def test_snr_definition_is_exact():
    """Event power over its span / background power over the clip equals the drawn SNR (before quantisation)."""

    class Recorder(ProceduralSoundBank):
        def background(self, rng, n_samples, sample_rate):
            self.bg = super().background(rng, n_samples, sample_rate)
            return self.bg

    bank = Recorder(["bell_ring"])
    config = SceneConfig(clip_duration=3.0, sample_rate=SR, snr_range=(12.0, 12.0), p_inside=1.0, peak=1e9)
    scene = make_scene(bank, np.random.default_rng(3), config, n_events=1)
    ((on, off, _),) = scene.events
    a, b = round(on * SR), round(off * SR)
    x, bg = scene.audio.astype(np.float64), bank.bg.astype(np.float64)
    outside = ~_spans(scene.events, x.size, SR)
    assert outside.sum() > 0.2 * SR
    level = np.sum(x[outside] * bg[outside]) / np.sum(bg[outside] ** 2)  # background gain
    event = x[a:b] - level * bg[a:b]
    snr = 10 * np.log10(np.mean(event**2) / np.mean((level * bg) ** 2))
    assert snr == pytest.approx(12.0, abs=0.05)


def test_classes_are_distinguishable():
    """Nearest class-mean on coarse band energies + temporal spread tells most instances apart."""
    bank = ProceduralSoundBank()
    rng = np.random.default_rng(1)
    edges = np.geomspace(50, 8000, 11)

    def features(x):
        spec = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(x.size, 1 / SR)
        band = np.array([spec[(f >= lo) & (f < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
        frames = x[: x.size // 256 * 256].reshape(-1, 256)
        level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-10)
        return np.concatenate([np.log10(band / band.sum() + 1e-10), [np.std(level) / 10]]), (
            spec * f
        ).sum() / spec.sum()

    feats, centroids, labels = [], {}, []
    for c in bank.classes:
        for _ in range(5):
            v, centroid = features(bank.event(c, rng, SR).astype(np.float64))
            feats.append(v)
            labels.append(c)
            centroids.setdefault(c, []).append(centroid)
    feats, labels = np.array(feats), np.array(labels)
    correct = 0
    for i in range(len(feats)):
        others = np.arange(len(feats)) != i
        means = {c: feats[others & (labels == c)].mean(axis=0) for c in bank.classes}
        correct += min(means, key=lambda c: np.sum((feats[i] - means[c]) ** 2)) == labels[i]
    assert correct / len(feats) >= 0.7
    mean_centroid = {c: np.mean(v) for c, v in centroids.items()}
    low = max(mean_centroid["footsteps"], mean_centroid["harmonic_hum"])
    assert low < mean_centroid["speech_like"] < mean_centroid["siren_sweep"]
    assert mean_centroid["siren_sweep"] < mean_centroid["alarm_beeps"] < mean_centroid["click_train"]


def test_same_class_overlaps_keep_both_rows(tmp_path):
    bank = ProceduralSoundBank(["harmonic_hum"])
    config = SceneConfig(n_events_probs=(0, 0, 1.0), empty_fraction=0.0)
    layout = generate_dataset(
        tmp_path / "hum",
        soundbank=bank,
        clip_duration=CLIP,
        sample_rate=SR,
        workers=1,
        config=config,
        sizes={"strong": 2, "weak": 1, "unlabeled": 1, "validation": 1, "test": 1},
    )
    raw = read_strong(layout.strong_tsv, merge_overlaps=False)
    assert len(raw) == 6 and set(raw.event_label) == {"harmonic_hum"}
    assert len(read_strong(layout.strong_tsv)) < len(raw)  # the reader merges them
    assert layout.classes() == ["harmonic_hum"]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_interrupted_generation_is_finished_and_deletes_no_file_it_did_not_plan(tmp_path, monkeypatch):
    import sed.synth.scenes as scenes

    out = tmp_path / "ds"
    sizes = {"strong": 4, "weak": 1, "unlabeled": 1, "validation": 1, "test": 1}
    assert not dataset_layout(out).complete()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scenes, "_write_metadata", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(out, clip_duration=1.0, sample_rate=SR, sizes=sizes, workers=1)
    layout = dataset_layout(out)
    assert not layout.complete() and layout.progress_marker.is_file()  # interrupted, and ours
    monkeypatch.undo()
    (layout.strong_audio / "mine.wav").write_bytes(b"user file")
    (layout.strong_audio / "strong_00099.wav").write_bytes(b"named like ours, not ours")
    layout = generate_dataset(out, clip_duration=1.0, sample_rate=SR, sizes=sizes, workers=1)
    assert layout.complete() and not layout.progress_marker.exists()
    assert sorted(p.name for p in layout.strong_audio.iterdir()) == [
        "mine.wav",
        "strong_00001.wav",
        "strong_00002.wav",
        "strong_00003.wav",
        "strong_00004.wav",
        "strong_00099.wav",
    ]
    # complete with the same settings: returned as it is
    before = _snapshot(out)
    generate_dataset(out, clip_duration=1.0, sample_rate=SR, sizes=sizes, workers=1)
    assert _snapshot(out) == before


def test_refuses_a_folder_the_generator_did_not_make(tmp_path):
    """A user's dataset (even one laid out like ours, with clips named like ours) is never overwritten."""
    user = tmp_path / "my_data"
    (user / "metadata" / "train").mkdir(parents=True)
    (user / "audio" / "train" / "strong").mkdir(parents=True)
    (user / "metadata" / "train" / "strong.tsv").write_text("filename\tonset\toffset\tevent_label\n")
    (user / "audio" / "train" / "strong" / "strong_00001.wav").write_bytes(b"precious")
    (user / "README.txt").write_text("my notes")
    before = _snapshot(user)
    with pytest.raises(GenerationRefused, match=r"my_data: the folder is not empty and carries no marker"):
        generate_dataset(user, clip_duration=1.0, sample_rate=SR, workers=1)
    assert _snapshot(user) == before
    # a folder prepared by another tool has a .complete marker too, but not the generator's
    (user / ".complete").write_text('{"prepared_by": "recipes/desed/prepare.py"}')
    with pytest.raises(GenerationRefused, match="no marker of the dataset generator"):
        generate_dataset(user, clip_duration=1.0, sample_rate=SR, workers=1)
    (tmp_path / "empty").mkdir()
    assert generate_dataset(
        tmp_path / "empty",
        clip_duration=1.0,
        sample_rate=SR,
        workers=1,
        sizes={"strong": 1, "weak": 1, "unlabeled": 1, "validation": 1, "test": 1},
    ).complete()


def test_refuses_to_regenerate_its_own_dataset_with_other_settings(tmp_path):
    out = tmp_path / "ds"
    sizes = {"strong": 2, "weak": 1, "unlabeled": 1, "validation": 1, "test": 1}
    generate_dataset(out, clip_duration=1.0, sample_rate=SR, sizes=sizes, workers=1)
    before = _snapshot(out)
    with pytest.raises(GenerationRefused, match=r"other settings \(sizes: .*'strong': 2.*'strong': 3") as err:
        generate_dataset(out, clip_duration=1.0, sample_rate=SR, sizes={**sizes, "strong": 3}, workers=1)
    assert set(err.value.differences) == {"sizes"}
    with pytest.raises(GenerationRefused) as err:
        generate_dataset(
            out,
            seed=1,
            clip_duration=1.0,
            sample_rate=SR,
            sizes=sizes,
            workers=1,
            config=SceneConfig(snr_range=(0.0, 6.0)),
        )
    assert set(err.value.differences) == {"seed", "scene"}
    assert _snapshot(out) == before


def _tone(path: Path, sr: int, seconds: float, freq: float, channels: int = 1, lead: float = 0.0) -> None:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    x = np.concatenate([np.zeros(int(lead * sr)), x])
    sf.write(str(path), np.stack([x] * channels, axis=1) if channels > 1 else x, sr)


@pytest.fixture()
def user_bank(tmp_path):
    root = tmp_path / "bank"
    (root / "foreground" / "dog").mkdir(parents=True)
    (root / "foreground" / "cat").mkdir(parents=True)
    (root / "background").mkdir()
    _tone(root / "foreground" / "dog" / "a.wav", 44100, 0.5, 300.0, channels=2, lead=0.2)
    _tone(root / "foreground" / "dog" / "b.wav", 44100, 0.4, 350.0, channels=2)
    _tone(root / "foreground" / "cat" / "a.flac", 22050, 0.3, 2000.0)
    rng = np.random.default_rng(0)
    sf.write(str(root / "background" / "noise.wav"), 0.05 * rng.standard_normal((8000, 2)), 8000)  # 1 s < clip
    return root


def test_user_soundbank(tmp_path, user_bank):
    sizes = {"strong": 4, "weak": 2, "unlabeled": 1, "validation": 2, "test": 1}
    layout = generate_dataset(
        tmp_path / "ds", soundbank=user_bank, clip_duration=CLIP, sample_rate=SR, sizes=sizes, workers=1
    )
    assert layout.complete() and layout.classes() == ["cat", "dog"]
    strong = read_strong(layout.strong_tsv, classes=["cat", "dog"], merge_overlaps=False)
    ev = strong.dropna()
    assert len(ev) > 0
    # events are whole files with the leading silence trimmed: dog 0.4-0.5 s, cat 0.3 s (or cut by the clip end)
    length = (ev.offset - ev.onset).to_numpy()
    full = ev.offset < CLIP
    expected = np.where(ev.event_label == "cat", 0.3, 0.45)
    assert np.all(np.abs(length[full] - expected[full]) <= 0.06)
    for name in strong.filename.unique():
        data, sr = sf.read(str(layout.strong_audio / name))
        assert sr == SR and data.ndim == 1 and data.size == CLIP * SR
    assert "folder" in layout.params()["soundbank"]


def test_user_soundbank_errors_name_the_folder(tmp_path, user_bank):
    (user_bank / "foreground" / "bird").mkdir()
    with pytest.raises(SoundbankError, match=r"foreground/bird"):
        FolderSoundBank(user_bank)
    (user_bank / "foreground" / "bird").rmdir()
    (user_bank / "foreground" / "cat" / "broken.wav").write_bytes(b"not audio")
    with pytest.raises(SoundbankError, match=r"broken\.wav"):
        FolderSoundBank(user_bank)
    (user_bank / "foreground" / "cat" / "broken.wav").unlink()
    for f in (user_bank / "background").iterdir():
        f.unlink()
    with pytest.raises(SoundbankError, match=r"background"):
        FolderSoundBank(user_bank)
    empty = tmp_path / "empty"
    (empty / "foreground").mkdir(parents=True)
    (empty / "background").mkdir()
    with pytest.raises(SoundbankError, match=r"empty/foreground has no class subfolders"):
        FolderSoundBank(empty)
    with pytest.raises(SoundbankError, match=r"missing folder .*nowhere/foreground|nowhere"):
        FolderSoundBank(tmp_path / "nowhere")


def test_cli(tmp_path, capsys, user_bank):
    args = [
        "--clip-duration",
        "1",
        "--n-strong",
        "2",
        "--n-weak",
        "1",
        "--n-unlabeled",
        "1",
        "--n-validation",
        "1",
        "--n-test",
        "1",
        "--workers",
        "1",
        "--seed",
        "3",
    ]
    assert cli_main([str(tmp_path / "ds"), *args]) == 0
    assert "wrote 6 clips" in capsys.readouterr().out
    layout = dataset_layout(tmp_path / "ds")
    assert layout.complete() and layout.params()["seed"] == 3
    for f in list((user_bank / "background").iterdir()):
        f.unlink()
    assert cli_main([str(tmp_path / "ds2"), "--soundbank", str(user_bank), *args]) == 2
    assert "background" in capsys.readouterr().err
