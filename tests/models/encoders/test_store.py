"""The disk cache of a frozen encoder's embeddings: shared by runs (a second encoder instance reads what the first
wrote), keyed so that a changed audio file, changed weights and another crop are each computed afresh, safe
against interrupted extractions, and never writing into a folder that is not ours, a read-only one or a full
disk without a one-line error naming model.encoder.cache_dir."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import torch
from tiny_network import TinyNet

import sed.models.encoders.store as store_mod
from sed.models.encoders import ModuleEncoder
from sed.models.encoders.store import MARKER, CacheFolderError, EmbeddingStore


def _encoder(cache_dir, **options) -> ModuleEncoder:
    torch.manual_seed(0)
    return ModuleEncoder(TinyNet(), cache_dir=str(cache_dir), cache=False, **options)  # disk only


def _audio(n: int = 3, seconds: float = 1.0, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return 0.1 * torch.randn(n, int(seconds * 16000))


def test_a_second_run_reads_what_the_first_wrote(tmp_path) -> None:
    audio = _audio()
    first = _encoder(tmp_path / "cache")
    out = first.embed(audio, cache=True)
    assert first.counts["computed"] == 3 and first.store().written == 3
    assert json.loads((tmp_path / "cache" / MARKER).read_text())["format"] == 1
    assert (tmp_path / "cache" / first.identity / "encoder.json").is_file()
    second = _encoder(tmp_path / "cache")  # another run, another process: the same identity
    calls = []
    second.model.front.register_forward_hook(lambda *a: calls.append(1))
    again = second.embed(audio[[2, 0]], cache=True)
    assert not calls and second.counts["disk"] == 2
    torch.testing.assert_close(again, out[[2, 0]], rtol=0, atol=0)
    torch.testing.assert_close(again, second.compute(audio[[2, 0]]))  # what it would compute


def test_changed_audio_weights_and_crop_are_each_computed_afresh(tmp_path) -> None:
    audio = _audio()
    _encoder(tmp_path / "c").embed(audio, cache=True)
    enc = _encoder(tmp_path / "c")
    changed = audio.clone()
    changed[1, 5000] += 1e-4  # one sample of one file changed
    out = enc.embed(changed, cache=True)
    assert enc.counts["disk"] == 2 and enc.counts["computed"] == 1
    torch.testing.assert_close(out[1], enc.compute(changed[1:2])[0])
    crop = audio[:, 320:].contiguous()  # the same files cropped elsewhere
    enc.embed(crop, cache=True)
    assert enc.counts["computed"] == 4
    other = _encoder(tmp_path / "c")
    with torch.no_grad():
        other.model.blocks[0].linear1.weight[0, 0] += 1e-3  # another checkpoint
    other._identity = None
    fresh = other.embed(audio, cache=True)
    assert other.counts["computed"] == 3 and other.counts["disk"] == 0
    torch.testing.assert_close(fresh, other.compute(audio))
    assert len([p for p in (tmp_path / "c").iterdir() if p.is_dir()]) == 2  # one folder per identity


def test_an_interrupted_extraction_leaves_nothing_that_is_read(tmp_path) -> None:
    audio = _audio(2)
    enc = _encoder(tmp_path / "c")
    enc.embed(audio[:1], cache=True)
    store = enc.store()
    good = store.path(enc_keys(audio[:1])[0])
    # A run killed while writing the second entry: its temporary file, never renamed...
    victim = store.path(enc_keys(audio[1:])[0])
    victim.parent.mkdir(parents=True, exist_ok=True)
    (victim.parent / f".{victim.name}.abc.tmp").write_bytes(good.read_bytes()[:100])
    again = _encoder(tmp_path / "c")
    out = again.embed(audio, cache=True)
    assert again.counts["disk"] == 1 and again.counts["computed"] == 1
    torch.testing.assert_close(out, again.compute(audio))
    # ...and a truncated entry (copied from elsewhere) is recomputed and replaced.
    good.write_bytes(good.read_bytes()[:120])
    third = _encoder(tmp_path / "c")
    out = third.embed(audio[:1], cache=True)
    assert third.counts["computed"] == 1
    torch.testing.assert_close(out, third.compute(audio[:1]))
    assert np.load(good).shape == (8, 50)


def enc_keys(audio: torch.Tensor):
    from sed.models.encoders import audio_fingerprint

    return audio_fingerprint(audio)


def test_float16_entries_are_half_the_size_and_rounded_alike(tmp_path) -> None:
    audio = _audio(1)
    enc = _encoder(tmp_path / "c", cache_dtype="float16")
    out = enc.embed(audio, cache=True)
    entry = next((tmp_path / "c").rglob("*.npy"))
    assert np.load(entry).dtype == np.float16
    again = _encoder(tmp_path / "c", cache_dtype="float16").embed(audio, cache=True)
    torch.testing.assert_close(out, again, rtol=0, atol=0)  # computed and read give the same numbers
    torch.testing.assert_close(out, enc.compute(audio), atol=2e-3, rtol=2e-3)


def test_a_folder_that_is_not_ours_is_refused(tmp_path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(
        CacheFolderError,
        match=r"model.encoder.cache_dir=.*mine: the folder holds files this "
        r"project did not write",
    ):
        _encoder(tmp_path / "mine").embed(_audio(1), cache=True)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]
    (tmp_path / "empty").mkdir()
    _encoder(tmp_path / "empty").embed(_audio(1), cache=True)  # an empty folder is claimed
    assert (tmp_path / "empty" / MARKER).is_file()
    (tmp_path / "claimed").mkdir()  # another process (a DDP rank) is writing its marker right now
    (tmp_path / "claimed" / f".{MARKER}.x1y2.tmp").write_text("")
    _encoder(tmp_path / "claimed").embed(_audio(1), cache=True)
    assert (tmp_path / "claimed" / MARKER).is_file()


def test_read_only_and_full_cache_folders_are_clear_errors(tmp_path, monkeypatch) -> None:
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store_mod, "atomic_write_text", read_only)
    with pytest.raises(CacheFolderError, match=r"^model.encoder.cache_dir=.*ro: cannot write there \(Read-only"):
        EmbeddingStore(tmp_path / "ro", "id", {})
    monkeypatch.undo()
    enc = _encoder(tmp_path / "full")
    enc.embed(_audio(1), cache=True)

    class Full:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(store_mod, "atomic_open", Full)
    with pytest.raises(
        CacheFolderError,
        match=r"^model.encoder.cache_dir=.*full: the disk is full; free space, or "
        r"set model.encoder.cache_dir=null .*\(1 entries written by this run\)",
    ):
        enc.embed(_audio(1, seed=2), cache=True)
