"""Checks before a run: bad audio files are all reported at once, events are held to their clip's audio."""

from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
import soundfile as sf

from sed.data.checks import (
    AudioInfo,
    ClipSet,
    DataCheckError,
    bound_events,
    check_sets,
    probe_audio,
)
from sed.data.tsv import AnnotationError, read_durations, read_filenames, read_strong

SR = 16000
CLASSES = ["a", "b"]
HEADER = "filename\tonset\toffset\tevent_label\n"


def wav(path, seconds: float = 1.0, sr: int = SR, **kw) -> None:
    sf.write(path, np.full(int(seconds * sr), 0.1, dtype=np.float32), sr, **kw)


def truncated(path) -> None:
    """A WAV cut short by a copy: its data chunk declares 1 s, the file holds half of it."""
    wav(path, 1.0, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD = {
    "empty file (0 bytes)": lambda p: p.write_bytes(b""),
    "unreadable by soundfile": lambda p: p.write_bytes(b"\x13\x37 not audio at all " * 20),
    "truncated": truncated,
    "0 frames": lambda p: wav(p, 0.0, subtype="PCM_16"),
}


def unlabeled(tmp_path, names: list[str]) -> ClipSet:
    (tmp_path / "audio").mkdir(exist_ok=True)
    tsv = tmp_path / "unlabeled.tsv"
    tsv.write_text("filename\n" + "".join(f"{n}\n" for n in names))
    files = read_filenames(tsv)
    return ClipSet("unlabeled", tmp_path / "audio", files, files.source, files.lines)


@pytest.mark.parametrize("reason", list(BAD))
def test_bad_file_is_refused_naming_its_line(tmp_path, reason):
    """Each of these used to pass the start of a run (the empty, corrupt one failing only if drawn; the
    truncated and 0-frame ones read as silence that still carries labels)."""
    clips = unlabeled(tmp_path, ["good.wav", "bad.wav"])
    wav(tmp_path / "audio" / "good.wav")
    BAD[reason](tmp_path / "audio" / "bad.wav")
    with pytest.raises(DataCheckError) as excinfo:
        check_sets([clips])
    (problem,) = excinfo.value.problems
    assert str(problem).startswith(f"{clips.source}:3: audio file {tmp_path / 'audio' / 'bad.wav'}: ")
    assert reason in str(problem)


def test_all_bad_files_of_all_sets_in_one_error(tmp_path):
    clips = unlabeled(tmp_path, ["ok.wav", *(f"bad{i}.wav" for i in range(len(BAD))), "gone.wav"])
    wav(tmp_path / "audio" / "ok.wav")
    for i, make in enumerate(BAD.values()):
        make(tmp_path / "audio" / f"bad{i}.wav")
    val_audio = tmp_path / "val"
    val_audio.mkdir()
    (val_audio / "v.wav").write_bytes(b"")
    tsv = tmp_path / "val.tsv"
    tsv.write_text(HEADER + "v.wav\t0\t1\ta\n")
    events = read_strong(tsv, CLASSES)
    val = ClipSet("val", val_audio, ["v.wav"], str(tsv), events.attrs["lines"], events)
    unreadable_tsv = AnnotationError(tmp_path / "weak.tsv", 1, "empty file or missing header")
    with pytest.raises(DataCheckError) as excinfo:
        check_sets([clips, val], problems=[unreadable_tsv])
    err = excinfo.value
    assert len(err.problems) == 1 + len(BAD) + 1 + 1
    msg = str(err)
    assert msg.startswith(f"{len(err.problems)} problem(s)")
    for line, name in enumerate([f"bad{i}.wav" for i in range(len(BAD))] + ["gone.wav"], start=3):
        assert f"{clips.source}:{line}: audio file {tmp_path / 'audio' / name}:" in msg
    assert "gone.wav: listed but not found" in msg and f"{tsv}:2: audio file {val_audio / 'v.wav'}" in msg
    assert str(unreadable_tsv) in msg and "ok.wav" not in msg


def test_missing_audio_folder_is_one_problem(tmp_path):
    clips = unlabeled(tmp_path, ["a.wav", "b.wav"])
    clips.audio_dir = tmp_path / "nowhere"
    with pytest.raises(DataCheckError) as excinfo:
        check_sets([clips])
    (problem,) = excinfo.value.problems
    assert "audio folder" in str(problem) and "does not exist" in str(problem)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "IMA_ADPCM"])
@pytest.mark.parametrize("channels", [1, 2])
def test_header_read_agrees_with_soundfile(tmp_path, subtype, channels):
    path = tmp_path / "x.wav"
    sf.write(path, np.zeros((12345, channels), dtype=np.float32), 22050, subtype=subtype)
    info = sf.info(str(path))
    assert probe_audio(path) == AudioInfo(info.frames, 22050, channels)


def test_header_read_of_other_layouts(tmp_path):
    # WAVE_FORMAT_EXTENSIBLE, FLAC (through soundfile), a 10 kB chunk before fmt (past the first read),
    # and a streamed WAV whose data size was never filled in (libsndfile reads it to the end).
    sf.write(tmp_path / "ext.wav", np.zeros((100, 3), np.float32), SR, format="WAVEX", subtype="PCM_24")
    assert probe_audio(tmp_path / "ext.wav") == AudioInfo(100, SR, 3)
    wav(tmp_path / "f.flac", 0.5)
    assert probe_audio(tmp_path / "f.flac") == AudioInfo(8000, SR, 1)
    wav(tmp_path / "plain.wav", 0.5, subtype="PCM_16")
    data = (tmp_path / "plain.wav").read_bytes()
    junk = b"junk" + struct.pack("<I", 10_000) + bytes(10_000)
    (tmp_path / "junk.wav").write_bytes(data[:12] + junk + data[12:])
    assert probe_audio(tmp_path / "junk.wav") == AudioInfo(8000, SR, 1) == probe_audio(tmp_path / "plain.wav")
    data_at = data.index(b"data")
    streamed = data[: data_at + 4] + struct.pack("<I", 0xFFFFFFFF) + data[data_at + 8 :]
    (tmp_path / "streamed.wav").write_bytes(streamed)
    assert probe_audio(tmp_path / "streamed.wav") == AudioInfo(8000, SR, 1)


def _strong(tmp_path, rows: str, name: str = "strong.tsv"):
    tsv = tmp_path / name
    tsv.write_text(HEADER + rows)
    return tsv, read_strong(tsv, CLASSES)


def test_event_past_the_end_is_clipped_with_one_warning_per_file(tmp_path, caplog):
    tsv, events = _strong(
        tmp_path,
        "x.wav\t0.1\t0.5\ta\n"  # inside
        "x.wav\t0.6\t1.005\tb\n"  # 5 ms past the end: rounding, clipped silently
        "y.wav\t\t\t\n"
        "y.wav\t0.2\t0.9\ta\n"  # 0.4 s past the end of a 0.5 s clip
        "y.wav\t0.3\t3.0\tb\n",
    )
    with caplog.at_level(logging.WARNING, logger="sed.data.checks"):
        out, problems = bound_events(events, {"x.wav": 1.0, "y.wav": 0.5})
    assert problems == []
    assert out["offset"].tolist()[:2] == [0.5, 1.0] and out["offset"].tolist()[3:] == [0.5, 0.5]
    assert np.isnan(out["offset"].iloc[2]) and out["onset"].tolist()[3:] == [0.2, 0.3]
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{tsv}: 2 event(s) end more than 0.01 s after the end") and "line 5" in warning
    assert events["offset"].tolist()[4] == 3.0  # the caller's frame is left alone


def test_event_starting_at_or_past_the_end_is_refused_naming_its_line(tmp_path, caplog):
    # The merged pair (lines 3 and 4) starts at its earliest row, line 3.
    tsv, events = _strong(tmp_path, "x.wav\t0\t0.5\ta\nx.wav\t1.2\t1.5\tb\nx.wav\t1.4\t1.8\tb\nz.wav\t2.0\t2.5\ta\n")
    with caplog.at_level(logging.WARNING, logger="sed.data.checks"):
        _, problems = bound_events(events, {"x.wav": 1.0, "z.wav": 2.0})
    assert not caplog.records  # refused, not also "clipped"
    assert [(p.path, p.line) for p in problems] == [(str(tsv), 3), (str(tsv), 5)]
    assert "x.wav b 1.2-1.8 s starts at or after the end of its clip (1.000 s)" in str(problems[0])


def test_eval_set_bounded_by_durations_tsv_which_is_checked_against_the_audio(tmp_path, caplog):
    audio = tmp_path / "audio"
    audio.mkdir()
    wav(audio / "x.wav", 1.0)
    wav(audio / "y.wav", 2.0)
    wav(audio / "z.wav", 1.0)
    tsv, events = _strong(tmp_path, "x.wav\t0.2\t0.9\ta\ny.wav\t0.5\t1.8\ta\nz.wav\t0.1\t0.2\tb\n")
    durations = tmp_path / "durations.tsv"
    durations.write_text("filename\tduration\nx.wav\t1.0\ny.wav\t1.5\nz.wav\t1.004\n")
    val = ClipSet(
        "val", audio, ["x.wav", "y.wav", "z.wav"], str(tsv), events.attrs["lines"], events, read_durations(durations)
    )
    with caplog.at_level(logging.WARNING, logger="sed.data.checks"):
        out = check_sets([val])["val"]
    assert out["offset"].tolist() == [0.9, 1.5, 0.2]  # y.wav: durations.tsv says 1.5 s
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith(f"{durations}: 1 of 3 duration(s) differ") and "line 3: y.wav" in messages[0]
    assert messages[1].startswith(f"{tsv}: 1 event(s) end")

    durations.write_text("filename\tduration\nx.wav\t1.0\n")
    val.durations = read_durations(durations)
    with pytest.raises(DataCheckError) as excinfo:
        check_sets([val])
    assert [str(p) for p in excinfo.value.problems] == [
        f"{tsv}:3: y.wav: no duration in {durations}",
        f"{tsv}:4: z.wav: no duration in {durations}",
    ]


def test_short_clips_pass(tmp_path):
    """Clips shorter than the training window are zero-padded, not refused; their events fit their audio."""
    audio = tmp_path / "audio"
    audio.mkdir()
    wav(audio / "short.wav", 0.3)
    tsv, events = _strong(tmp_path, "short.wav\t0.1\t0.3\ta\n")
    out = check_sets([ClipSet("strong", audio, ["short.wav"], str(tsv), events.attrs["lines"], events)])
    assert out["strong"]["offset"].tolist() == [0.3]
