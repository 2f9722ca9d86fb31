from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import ConcatDataset, DataLoader

import sed.data.datasets as ds_mod
from sed.data.audio import AudioError
from sed.data.datasets import SEDDataset, collate
from sed.data.encoder import LabelEncoder
from sed.data.sampler import MixedBatchSampler
from sed.data.tsv import AnnotationError, read_filenames, read_strong, read_weak

SR = 16000
CLIP = 1.0
CLASSES = ["a", "b"]
HEADER = "filename\tonset\toffset\tevent_label\n"


@pytest.fixture()
def enc() -> LabelEncoder:
    return LabelEncoder(CLASSES, sample_rate=SR, hop_length=256, clip_duration=CLIP, time_pooling=4)  # 15 frames


def wav(path, data: np.ndarray, sr: int = SR) -> None:
    sf.write(path, data.astype(np.float32), sr, subtype="FLOAT")


def burst_file(path, seconds: float, start: float, stop: float, sr: int = SR) -> None:
    """Silence with a constant 0.5 burst in [start, stop) seconds."""
    x = np.zeros(int(seconds * sr), dtype=np.float32)
    x[int(round(start * sr)) : int(round(stop * sr))] = 0.5
    wav(path, x, sr)


def make(tmp_path, enc, kind: str = "strong", **kw) -> SEDDataset:
    audio = tmp_path / "audio"
    audio.mkdir(exist_ok=True)
    burst_file(audio / "x.wav", 1.0, 0.2, 0.4)
    burst_file(audio / "y.wav", 0.5, 0.0, 0.1)
    wav(audio / "z.wav", np.zeros(SR))
    if kind == "strong":
        tsv = tmp_path / "strong.tsv"
        tsv.write_text(HEADER + "x.wav\t0.2\t0.4\ta\ny.wav\t0\t0.1\tb\nz.wav\t\t\t\n")
        return SEDDataset(audio, None, enc, SR, CLIP, strong=read_strong(tsv, CLASSES), **kw)
    if kind == "weak":
        tsv = tmp_path / "weak.tsv"
        tsv.write_text("filename\tevent_labels\nx.wav\ta,b\ny.wav\t\n")
        return SEDDataset(audio, None, enc, SR, CLIP, weak=read_weak(tsv, CLASSES), **kw)
    return SEDDataset(audio, read_filenames(audio), enc, SR, CLIP, **kw)


def test_strong_items(tmp_path, enc):
    d = make(tmp_path, enc)
    assert len(d) == 3 and d.kind == "strong"
    item = d[0]
    assert set(item) == {"audio", "strong", "weak", "has_strong", "has_weak", "filename", "index", "varies"}
    assert item["audio"].shape == (SR,) and item["audio"].dtype == torch.float32
    assert item["strong"].shape == (2, 15) and item["strong"].dtype == torch.float32
    assert item["filename"] == "x.wav" and item["index"] == 0
    assert bool(item["has_strong"]) and not bool(item["has_weak"])
    assert item["has_strong"].dtype == torch.bool and item["has_strong"].ndim == 0
    assert np.flatnonzero(item["strong"][0]).tolist() == enc.encode_strong([(0.2, 0.4, "a")])[0].nonzero()[0].tolist()
    assert not item["strong"][1].any()
    assert item["weak"].tolist() == [1.0, 0.0]
    # Short file: padded with zeros at the end; label kept.
    y = d[1]
    assert y["audio"][: SR // 10].eq(0.5).all() and not y["audio"][SR // 2 :].any()
    assert y["strong"][1, 0] == 1 and y["weak"].tolist() == [0.0, 1.0]
    # No-event row: the clip is there, with all-zero targets.
    z = d[2]
    assert z["filename"] == "z.wav" and not z["strong"].any() and not z["weak"].any() and bool(z["has_strong"])


def test_active_frame_fractions_count_label_frames_per_class(tmp_path, enc):
    d = make(tmp_path, enc)  # 3 clips of 15 frames: x has a in 0.2-0.4 s, y has b in 0-0.1 s, z nothing
    a = enc.encode_strong([(0.2, 0.4, "a")])[0].sum()
    b = enc.encode_strong([(0.0, 0.1, "b")])[1].sum()
    np.testing.assert_allclose(d.active_frame_fractions(), [a / 45, b / 45])
    assert make(tmp_path, enc, "weak").active_frame_fractions().tolist() == [0.0, 0.0]


def test_weak_and_unlabeled_items(tmp_path, enc):
    w = make(tmp_path, enc, "weak")
    assert w.kind == "weak" and len(w) == 2
    assert w[0]["weak"].tolist() == [1.0, 1.0] and not w[0]["strong"].any()
    assert bool(w[0]["has_weak"]) and not bool(w[0]["has_strong"])
    assert w[1]["weak"].tolist() == [0.0, 0.0]
    u = make(tmp_path, enc, "unlabeled")
    assert u.kind == "unlabeled" and u.filenames == ["x.wav", "y.wav", "z.wav"]
    item = u[0]
    assert not item["has_weak"] and not item["has_strong"] and not item["weak"].any() and not item["strong"].any()


def test_missing_audio_names_annotation_line(tmp_path, enc):
    audio = tmp_path / "audio"
    audio.mkdir()
    wav(audio / "x.wav", np.zeros(SR))
    tsv = tmp_path / "strong.tsv"
    tsv.write_text(HEADER + "x.wav\t0\t1\ta\n\ngone.wav\t0\t1\tb\nalso_gone.wav\t\t\t\n")
    with pytest.raises(AnnotationError) as excinfo:
        SEDDataset(audio, None, enc, SR, CLIP, strong=read_strong(tsv, CLASSES))
    msg = str(excinfo.value)
    assert msg.startswith(f"{tsv}:4:") and "gone.wav" in msg and "not found" in msg and "1 more" in msg

    unl = tmp_path / "unlabeled.tsv"
    unl.write_text("filename\nx.wav\nmissing.wav\n")
    with pytest.raises(AnnotationError, match=rf"^{unl}:3: .*missing\.wav"):
        SEDDataset(audio, read_filenames(unl), enc, SR, CLIP)
    with pytest.raises(AnnotationError, match="missing.wav"):
        SEDDataset(audio, ["x.wav", "missing.wav"], enc, SR, CLIP)  # plain list: names the audio path
    with pytest.raises(AnnotationError, match="does not exist"):
        SEDDataset(tmp_path / "nowhere", ["x.wav"], enc, SR, CLIP)


def test_empty_dataset_names_source(tmp_path, enc):
    audio = tmp_path / "audio"
    audio.mkdir()
    with pytest.raises(AnnotationError, match="empty dataset") as excinfo:
        SEDDataset(audio, [], enc, SR, CLIP)
    assert str(audio) in str(excinfo.value)
    with pytest.raises(AnnotationError, match="empty dataset"):
        read_filenames(audio)


def test_unreadable_audio(tmp_path, enc):
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "bad.wav").write_bytes(b"not a wav file at all")
    tsv = tmp_path / "u.tsv"
    tsv.write_text("filename\nbad.wav\n")
    with pytest.raises(AnnotationError, match=rf"^{tsv}:2: .*bad\.wav unreadable"):
        SEDDataset(audio, read_filenames(tsv), enc, SR, CLIP, check_readable=True)
    d = SEDDataset(audio, read_filenames(tsv), enc, SR, CLIP)
    with pytest.raises(AudioError, match="bad.wav"):
        d[0]


def test_unknown_label_and_mismatched_encoder(tmp_path, enc):
    audio = tmp_path / "audio"
    audio.mkdir()
    wav(audio / "x.wav", np.zeros(SR))
    tsv = tmp_path / "s.tsv"
    tsv.write_text(HEADER + "x.wav\t0\t1\tzebra\n")
    with pytest.raises(AnnotationError, match=rf"^{tsv}:2: unknown label 'zebra'"):
        SEDDataset(audio, None, enc, SR, CLIP, strong=read_strong(tsv))  # read without classes
    with pytest.raises(ValueError, match="disagree"):
        SEDDataset(audio, ["x.wav"], enc, SR, CLIP + 0.5)


def _active_frames(audio: torch.Tensor, hop: int, n_frames: int) -> np.ndarray:
    x = audio.numpy()[: hop * n_frames].reshape(n_frames, hop)
    return np.abs(x).max(axis=1) > 1e-4


@pytest.mark.parametrize("use_cache", [False, True])
def test_random_crop_moves_labels_with_audio(tmp_path, enc, use_cache):
    audio = tmp_path / "audio"
    audio.mkdir()
    burst_file(audio / "long.wav", 3.0, 1.3, 1.7)
    tsv = tmp_path / "s.tsv"
    tsv.write_text(HEADER + "long.wav\t1.3\t1.7\ta\n")
    d = SEDDataset(
        audio,
        None,
        enc,
        SR,
        CLIP,
        strong=read_strong(tsv, CLASSES),
        random_crop=True,
        seed=3,
        cache_dir=tmp_path / "cache" if use_cache else None,
    )
    patterns = set()
    n_with_event = 0
    for _ in range(40):
        item = d[0]
        label = item["strong"][0].numpy() > 0
        sound = _active_frames(item["audio"], enc.frame_hop_samples, enc.n_frames)
        np.testing.assert_array_equal(label, sound)  # every labelled frame has the burst and vice versa
        assert item["weak"][0] == float(label.any())
        patterns.add(tuple(np.flatnonzero(label)))
        n_with_event += label.any()
    assert len(patterns) > 5 and 0 < n_with_event < 40  # crops really vary, some miss the event


@pytest.mark.parametrize("use_cache", [False, True])
def test_items_say_whether_their_audio_varies_per_epoch(tmp_path, enc, use_cache):
    """What a frozen encoder's embedding cache relies on: random crops of longer files and random channels of
    multi-channel files vary, a clip no longer than the crop and every evaluation item do not."""
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    wav(audio / "long.wav", rng.uniform(-0.5, 0.5, 2 * SR).astype(np.float32))
    wav(audio / "short.wav", rng.uniform(-0.5, 0.5, SR).astype(np.float32))
    wav(audio / "long44.wav", rng.uniform(-0.5, 0.5, 2 * 44100).astype(np.float32), 44100)
    wav(audio / "stereo.wav", rng.uniform(-0.5, 0.5, (SR, 2)).astype(np.float32))
    names = ["long.wav", "short.wav", "long44.wav", "stereo.wav"]
    cache = {"cache_dir": tmp_path / "cache"} if use_cache else {}

    def varies(**kw):
        d = SEDDataset(audio, names, enc, SR, CLIP, seed=0, **cache, **kw)
        return [bool(d[i]["varies"]) for i in range(len(names))]

    assert varies(random_crop=True) == [True, False, True, False]
    assert varies(random_crop=True, channel="random") == [True, False, True, True]
    assert varies() == [False, False, False, False]
    assert varies(whole_clip=True) == [False, False, False, False]


def test_eval_crop_starts_at_zero_and_seed_determinism(tmp_path, enc):
    audio = tmp_path / "audio"
    audio.mkdir()
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 2 * SR).astype(np.float32)
    wav(audio / "r.wav", x)
    d = SEDDataset(audio, ["r.wav"], enc, SR, CLIP)
    np.testing.assert_array_equal(d[0]["audio"].numpy(), x[:SR])

    def crops(seed):
        dd = SEDDataset(audio, ["r.wav"], enc, SR, CLIP, random_crop=True, seed=seed)
        return [dd[0]["audio"][:4].tolist() for _ in range(5)]

    assert crops(1) == crops(1)
    assert crops(1) != crops(2)


def test_cache_decodes_once_and_matches_direct_resampling(tmp_path, enc, monkeypatch):
    audio = tmp_path / "audio"
    audio.mkdir()
    t = np.arange(int(1.2 * 44100)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 500 * t), 0.2 * np.sin(2 * np.pi * 900 * t)], axis=1) * 0.5
    wav(audio / "s.wav", stereo, 44100)
    cache = tmp_path / "cache"
    direct = SEDDataset(audio, ["s.wav"], enc, SR, CLIP)[0]["audio"]
    cached_ds = SEDDataset(audio, ["s.wav"], enc, SR, CLIP, cache_dir=cache)
    first = cached_ds[0]["audio"]
    files = list(cache.rglob("*.npy"))
    assert len(files) == 1
    assert np.load(files[0]).shape[0] == 1  # mono mix cached for channel="mean"
    np.testing.assert_allclose(first.numpy(), direct.numpy(), atol=1e-5)

    def boom(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(ds_mod, "read_raw", boom)
    again = SEDDataset(audio, ["s.wav"], enc, SR, CLIP, cache_dir=cache)[0]["audio"]
    np.testing.assert_array_equal(again.numpy(), first.numpy())
    assert list(cache.rglob("*.npy")) == files
    # channel="random" caches every channel and picks one per item.
    monkeypatch.undo()
    rnd = SEDDataset(audio, ["s.wav"], enc, SR, CLIP, cache_dir=cache, channel="random", seed=0)
    outs = {round(float(rnd[0]["audio"].abs().max()), 2) for _ in range(12)}
    assert outs == {0.5, 0.1}
    assert len(list(cache.rglob("*.npy"))) == 2


def test_mixed_batches_through_dataloader(tmp_path, enc):
    strong = make(tmp_path, enc, "strong")
    weak = make(tmp_path, enc, "weak")
    unl = make(tmp_path, enc, "unlabeled", random_crop=True)
    subsets = [strong, weak, unl]
    sampler = MixedBatchSampler([len(s) for s in subsets], [2, 1, 3], seed=0, epoch_length="max")
    loader = DataLoader(ConcatDataset(subsets), batch_sampler=sampler, collate_fn=collate, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert batch["audio"].shape == (6, SR)
        assert batch["strong"].shape == (6, 2, 15) and batch["weak"].shape == (6, 2)
        assert batch["has_strong"].tolist() == [True, True, False, False, False, False]
        assert batch["has_weak"].tolist() == [False, False, True, False, False, False]
        assert isinstance(batch["filename"], list) and len(batch["filename"]) == 6
        assert batch["index"].dtype == torch.long


def test_collate_rejects_empty_batch():
    with pytest.raises(ValueError):
        collate([])


@pytest.mark.parametrize("cache", [False, True])
@pytest.mark.parametrize("rate", [SR, 8000])
def test_nonfinite_training_audio_caught_where_read(tmp_path, enc, cache, rate):
    """A NaN sample in a training clip is an error naming the file (streamed, cached and resampled paths),
    or silence with nonfinite='zero'."""
    audio = tmp_path / "audio"
    audio.mkdir()
    x = np.full(rate, 0.1, dtype=np.float32)
    x[rate // 2] = np.nan
    wav(audio / "nan.wav", x, rate)
    kw = {"cache_dir": tmp_path / "cache"} if cache else {}
    d = SEDDataset(audio, ["nan.wav"], enc, SR, CLIP, **kw)
    with pytest.raises(AudioError, match=r"nan\.wav.*non-finite"):
        d[0]
    z = SEDDataset(audio, ["nan.wav"], enc, SR, CLIP, nonfinite="zero", **kw)
    assert torch.isfinite(z[0]["audio"]).all()


@pytest.mark.parametrize("whole_clip", [False, True])
def test_the_cache_never_serves_audio_zeroed_under_another_nonfinite_policy(tmp_path, enc, whole_clip):
    """A run with data.nonfinite_audio=zero caches its zeroed copy of a NaN file; a later run on the same cache with
    the default policy (error) still fails naming the file (it trained on the zeroed copy in silence)."""
    audio = tmp_path / "audio"
    audio.mkdir()
    x = np.full(SR, 0.1, dtype=np.float32)
    x[SR // 2] = np.nan
    wav(audio / "nan.wav", x, SR)
    kw = {"cache_dir": tmp_path / "cache", "whole_clip": whole_clip}
    assert torch.isfinite(SEDDataset(audio, ["nan.wav"], enc, SR, CLIP, nonfinite="zero", **kw)[0]["audio"]).all()
    with pytest.raises(AudioError, match=r"nan\.wav.*non-finite"):
        SEDDataset(audio, ["nan.wav"], enc, SR, CLIP, **kw)[0]


# --------------------------------------------------------------------------- audio at the model's input rate
NATIVE = 44100


def test_native_rate_items_keep_the_frames_and_targets_of_loader_resampling(tmp_path, enc):
    """A model that resamples its input (features.input_sample_rate=44100) gets 44.1 kHz items: the clip resampled in
    the model has the frames of the loader-resampled clip, and the strong targets (framed at the model's rate) are
    the same, for evaluation crops and for whole clips longer than the clip length."""
    from sed.features.frontend import FrontEnd

    audio = tmp_path / "audio"
    audio.mkdir()
    burst_file(audio / "x.wav", CLIP, 0.2, 0.55, sr=NATIVE)
    burst_file(audio / "long.wav", 2.7 * CLIP, 1.3, 2.2, sr=NATIVE)
    tsv = tmp_path / "s.tsv"
    tsv.write_text(HEADER + "x.wav\t0.2\t0.55\ta\nlong.wav\t1.3\t2.2\tb\n")
    strong = read_strong(tsv, CLASSES)
    fe, fe_native = (
        FrontEnd(n_fft=512, win_length=512, n_mels=16),
        FrontEnd(n_fft=512, win_length=512, n_mels=16, input_sample_rate=NATIVE),
    )
    for whole_clip in (False, True):
        loader = SEDDataset(audio, None, enc, SR, CLIP, strong=strong, whole_clip=whole_clip)
        native = SEDDataset(audio, None, enc, NATIVE, CLIP, strong=strong, whole_clip=whole_clip)
        for i in range(2):
            a, b = loader[i], native[i]
            n_in = b["length"] if whole_clip else NATIVE * CLIP
            assert b["audio"].shape[-1] >= n_in and a["audio"].shape[-1] == fe_native.resampled_length(
                b["audio"].shape[-1]
            )
            assert fe(a["audio"]).shape == fe_native(b["audio"]).shape
            torch.testing.assert_close(fe_native(b["audio"]), fe(a["audio"]), rtol=0, atol=1e-3)
            torch.testing.assert_close(b["strong"], a["strong"], rtol=0, atol=0)
            torch.testing.assert_close(b["weak"], a["weak"], rtol=0, atol=0)
    assert native[1]["strong"].shape[-1] == loader[1]["strong"].shape[-1] > enc.n_frames  # the whole 2.7-s clip


def test_native_rate_random_crops_move_the_labels_with_the_audio(tmp_path, enc):
    """Training crops at the input rate shift the labels by the crop's start in seconds: the burst's frames in the
    features of the crop (resampled in the model) are the target's active frames."""
    from sed.features.frontend import FrontEnd

    audio = tmp_path / "audio"
    audio.mkdir()
    burst_file(audio / "x.wav", 3 * CLIP, 1.1, 1.6, sr=NATIVE)
    tsv = tmp_path / "s.tsv"
    tsv.write_text(HEADER + "x.wav\t1.1\t1.6\ta\n")
    d = SEDDataset(audio, None, enc, NATIVE, CLIP, strong=read_strong(tsv, CLASSES), random_crop=True, seed=5)
    fe = FrontEnd(n_fft=512, win_length=512, n_mels=16, input_sample_rate=NATIVE)
    hop = enc.frame_hop_samples
    seen = 0
    for _ in range(8):
        item = d[0]
        x = fe.resample(item["audio"])
        assert x.shape[-1] == enc.n_samples
        active = _active_frames(x, hop, enc.n_frames)
        target = item["strong"][0].numpy() > 0
        # Frames where the burst fills (almost) the whole frame agree; partial edge frames may go either way.
        inner = np.convolve(active.astype(int), [1, 1, 1], mode="same") == 3
        assert (target[inner] == 1).all() and not target[np.convolve(active.astype(int), [1, 1, 1], "same") == 0].any()
        seen += int(target.any())
    assert seen  # some crops held the burst


# ------------------------------------------------------------------ long recordings, soft labels, extra fields
def test_window_starts_cover_a_long_recording_like_the_2024_baseline():
    assert ds_mod.window_starts(25.0, 10.0, 1.0) == [float(k) for k in range(16)]  # 10-s windows to 25 s exactly
    assert ds_mod.window_starts(25.5, 10.0, 1.0) == [float(k) for k in range(17)]  # + one zero-padded window
    assert ds_mod.window_starts(12.0, 10.0, 5.0) == [0.0, 5.0]  # the second one padded (5-15 s)
    assert ds_mod.window_starts(8.0, 10.0, 1.0) == [0.0]


@pytest.mark.parametrize("cache", [False, True])
def test_windowed_long_recording_with_soft_labels(tmp_path, enc, cache):
    audio = tmp_path / "audio"
    audio.mkdir()
    burst_file(audio / "long.wav", 2.5, 1.2, 1.6)  # 2.5 s: windows of 1 s every 0.5 s -> starts 0, .5, 1, 1.5
    tsv = tmp_path / "soft.tsv"
    tsv.write_text(HEADER.strip() + "\tconfidence\nlong.wav\t1.2\t1.6\ta\t0.75\n")
    mask = torch.tensor([True, False])
    d = SEDDataset(
        audio,
        None,
        enc,
        SR,
        CLIP,
        strong=read_strong(tsv, CLASSES),
        window_hop=0.5,
        lengths={"long.wav": 2.5},
        extra={"class_mask": mask},
        cache_dir=tmp_path / "c" if cache else None,
    )
    assert len(d) == 4 and d.filenames == ["long.wav"]
    whole, _ = sf.read(audio / "long.wav", dtype="float32")
    items = [d[i] for i in range(len(d))]
    assert [it["filename"] for it in items] == ["long.wav"] * 4
    for it, start in zip(items, (0.0, 0.5, 1.0, 1.5)):
        expected = enc.encode_arrays(
            np.array([1.2]), np.array([1.6]), np.array([0]), shift=start, values=np.array([0.75])
        )
        np.testing.assert_array_equal(it["strong"].numpy(), expected)  # labels cut to the window, soft
        a = int(start * SR)
        np.testing.assert_array_equal(it["audio"].numpy(), whole[a : a + SR])  # the window's audio
        assert it["class_mask"] is mask
    assert set(items[2]["strong"].unique().tolist()) == {0.0, 0.75} and not items[0]["strong"].any()
    with pytest.raises(ValueError, match="lengths"):
        SEDDataset(audio, None, enc, SR, CLIP, strong=read_strong(tsv, CLASSES), window_hop=0.5)
