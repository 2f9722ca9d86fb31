from __future__ import annotations

import logging
import math

import pandas as pd
import pytest

from sed.data.tsv import (
    AnnotationError,
    merge_overlapping_events,
    read_durations,
    read_filenames,
    read_strong,
    read_weak,
    write_durations,
    write_strong,
    write_weak,
)

CLASSES = ["Speech", "Dog", "Cat"]


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_error_at(excinfo, path, line: int | None, *words: str) -> None:
    msg = str(excinfo.value)
    prefix = f"{path}:{line}:" if line is not None else f"{path}:"
    assert msg.startswith(prefix), msg
    for w in words:
        assert w in msg, msg


# --- strong -----------------------------------------------------------------------------


def test_read_strong_good_keeps_no_event_rows(tmp_path):
    path = write(
        tmp_path,
        "strong.tsv",
        "filename\tonset\toffset\tevent_label\n"
        "a.wav\t0.5\t1.25\tSpeech\n"
        "a.wav\t2\t3\tDog\n"
        "b.wav\t\t\t\n"  # no event, explicit empty fields
        "\n"  # blank line is skipped, does not shift line numbers
        "c.wav\n"  # no event, fields absent
        "d.wav\tnan\tNaN\t\n",  # pandas-style NaN
    )
    df = read_strong(path, CLASSES)
    assert list(df.columns) == ["filename", "onset", "offset", "event_label"]
    assert list(df["filename"]) == ["a.wav", "a.wav", "b.wav", "c.wav", "d.wav"]
    assert df["onset"].tolist()[:2] == [0.5, 2.0]
    assert df["offset"].tolist()[:2] == [1.25, 3.0]
    for i in (2, 3, 4):
        assert math.isnan(df["onset"][i]) and math.isnan(df["offset"][i])
        assert df["event_label"][i] == ""
    assert df.attrs["source"] == str(path)
    assert df.attrs["lines"] == {"a.wav": 2, "b.wav": 4, "c.wav": 6, "d.wav": 7}


def test_read_strong_without_classes_accepts_any_label(tmp_path):
    path = write(tmp_path, "s.tsv", "filename\tonset\toffset\tevent_label\nx.wav\t0\t1\tAnything\n")
    assert read_strong(path)["event_label"].tolist() == ["Anything"]


@pytest.mark.parametrize(
    "body, line, words",
    [
        ("filename\tonset\tevent_label\na.wav\t0\tDog\n", 1, ["missing column", "'offset'"]),
        ("filename onset offset event_label\na.wav 0 1 Dog\n", 1, ["missing column", "tab-separated"]),
        ("filename\tonset\toffset\tevent_label\na.wav\t0\t1\tDog\nb.wav\t0\t1\tHorse\n", 3, ["unknown label", "Horse"]),
        ("filename\tonset\toffset\tevent_label\na.wav\t2\t1\tDog\n", 2, ["onset 2.0 >= offset 1.0"]),
        ("filename\tonset\toffset\tevent_label\na.wav\t1\t1\tDog\n", 2, [">="]),
        ("filename\tonset\toffset\tevent_label\na.wav\t-0.5\t1\tDog\n", 2, ["negative onset"]),
        (
            "filename\tonset\toffset\tevent_label\na.wav\t0\t1\tDog\n\na.wav\t0\tabc\tDog\n",
            4,
            ["offset", "'abc'", "not a number"],
        ),
        ("filename\tonset\toffset\tevent_label\na.wav\t0\tinf\tDog\n", 2, ["not a finite number"]),
        ("filename\tonset\toffset\tevent_label\na.wav\t0\t\tDog\n", 2, ["empty offset"]),
        ("filename\tonset\toffset\tevent_label\na.wav\t0\t1\t\n", 2, ["empty event_label"]),
        ("filename\tonset\toffset\tevent_label\n\t0\t1\tDog\n", 2, ["empty filename"]),
        ("filename\tonset\toffset\tevent_label\na.wav\t0\t1\tDog\tx\n", 2, ["5 fields"]),
        ("filename\tonset\toffset\tevent_label\n", 1, ["no data rows"]),
        ("", 1, ["missing header"]),
    ],
)
def test_read_strong_bad_input_names_file_and_line(tmp_path, body, line, words):
    path = write(tmp_path, "bad.tsv", body)
    with pytest.raises(AnnotationError) as excinfo:
        read_strong(path, CLASSES)
    assert isinstance(excinfo.value, ValueError)
    assert excinfo.value.line == line
    assert_error_at(excinfo, path, line, *words)


def test_every_bad_line_of_a_file_is_reported_at_once(tmp_path):
    """A file with several bad lines names each of them in one error (it named only the first: fix, rerun, find
    the next), as the audio check does for files; a single bad line is reported as before."""
    strong = write(
        tmp_path,
        "strong.tsv",
        "filename\tonset\toffset\tevent_label\n"
        "a.wav\t2\t1\tDog\nb.wav\t0\t1\tDog\nc.wav\t-1\t1\tDog\nd.wav\t0\t1\tHorse\ne.wav\t0\t1\tDog\tx\n",
    )
    with pytest.raises(AnnotationError) as excinfo:
        read_strong(strong, CLASSES)
    assert [(p.line, p.detail.split(" ")[0]) for p in excinfo.value.problems] == [
        (2, "onset"),
        (4, "negative"),
        (5, "unknown"),
        (6, "5"),
    ]
    assert str(excinfo.value).splitlines() == [str(p) for p in excinfo.value.problems]
    weak = write(tmp_path, "weak.tsv", "filename\tevent_labels\na.wav\tHorse\na.wav\tDog\n")
    with pytest.raises(AnnotationError) as excinfo:
        read_weak(weak, CLASSES)
    assert [p.line for p in excinfo.value.problems] == [2, 3]
    durations = write(tmp_path, "d.tsv", "filename\tduration\na.wav\t0\nb.wav\tten\n")
    with pytest.raises(AnnotationError) as excinfo:
        read_durations(durations)
    assert [p.line for p in excinfo.value.problems] == [2, 3]
    listing = write(tmp_path, "u.tsv", "filename\na.wav\na.wav\n\t\nb.wav\nb.wav\n")
    with pytest.raises(AnnotationError) as excinfo:
        read_filenames(listing)
    assert [p.line for p in excinfo.value.problems] == [3, 6]


def test_read_strong_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="not found") as excinfo:
        read_strong(tmp_path / "nope.tsv")
    assert str(tmp_path / "nope.tsv") in str(excinfo.value)


def test_read_strong_merges_same_class_overlaps_and_logs_once(tmp_path, caplog):
    path = write(
        tmp_path,
        "ov.tsv",
        "filename\tonset\toffset\tevent_label\n"
        "a.wav\t0\t2\tDog\n"
        "a.wav\t1\t3\tDog\n"  # overlaps -> [0, 4] with next two
        "a.wav\t3\t4\tDog\n"  # touches
        "a.wav\t0.5\t1\tDog\n"  # contained
        "a.wav\t1\t2\tCat\n"  # other class overlaps: kept
        "a.wav\t5\t6\tDog\n"  # separate: kept
        "b.wav\t1.5\t2.5\tDog\n"  # other clip: kept
        "c.wav\t\t\t\n",
    )
    with caplog.at_level(logging.INFO, logger="sed.data.tsv"):
        df = read_strong(path, CLASSES)
    rows = [tuple(r) for r in df.itertuples(index=False)][:4]
    assert rows == [
        ("a.wav", 0.0, 4.0, "Dog"),
        ("a.wav", 1.0, 2.0, "Cat"),
        ("a.wav", 5.0, 6.0, "Dog"),
        ("b.wav", 1.5, 2.5, "Dog"),
    ]
    assert len(df) == 5 and df["filename"].iloc[-1] == "c.wav"
    msgs = [r.getMessage() for r in caplog.records if "merged" in r.getMessage()]
    assert len(msgs) == 1 and str(path) in msgs[0] and "merged 3 " in msgs[0]

    raw = read_strong(path, CLASSES, merge_overlaps=False)
    assert len(raw) == 8


def test_merge_overlapping_events_counts_and_no_log_when_clean(tmp_path, caplog):
    df = pd.DataFrame(
        {"filename": ["x", "x", "x"], "onset": [2.0, 0.0, 1.0], "offset": [3.0, 1.5, 2.5], "event_label": ["A"] * 3}
    )
    out, n = merge_overlapping_events(df)
    assert n == 2
    assert out[["onset", "offset"]].values.tolist() == [[0.0, 3.0]]
    clean = write(tmp_path, "clean.tsv", "filename\tonset\toffset\tevent_label\na.wav\t0\t1\tDog\na.wav\t1.5\t2\tDog\n")
    with caplog.at_level(logging.INFO, logger="sed.data.tsv"):
        assert len(read_strong(clean)) == 2
    assert not [r for r in caplog.records if "merged" in r.getMessage()]


# --- weak / unlabeled / durations ---------------------------------------------------------


def test_read_weak_good(tmp_path):
    path = write(tmp_path, "weak.tsv", "filename\tevent_labels\na.wav\tDog,Speech\nb.wav\t\nc.wav\tCat, Cat\nd.wav\n")
    df = read_weak(path, CLASSES)
    assert list(df.columns) == ["filename", "event_labels"]
    assert df["event_labels"].tolist() == [("Dog", "Speech"), (), ("Cat",), ()]
    assert df.attrs["lines"]["c.wav"] == 4


@pytest.mark.parametrize(
    "body, line, words",
    [
        ("filename\tlabels\na.wav\tDog\n", 1, ["missing column", "'event_labels'"]),
        ("filename\tevent_labels\na.wav\tDog\nb.wav\tDog,Horse\n", 3, ["unknown label", "'Horse'"]),
        ("filename\tevent_labels\na.wav\tDog\na.wav\tCat\n", 3, ["duplicate", "line 2"]),
        ("filename\tevent_labels\n", 1, ["no data rows"]),
    ],
)
def test_read_weak_bad(tmp_path, body, line, words):
    path = write(tmp_path, "weak.tsv", body)
    with pytest.raises(AnnotationError) as excinfo:
        read_weak(path, CLASSES)
    assert_error_at(excinfo, path, line, *words)


def test_read_filenames_tsv_and_folder(tmp_path):
    path = write(tmp_path, "unlabel.tsv", "filename\textra\nb.wav\t1\na.wav\t2\n")
    names = read_filenames(path)
    assert names == ["b.wav", "a.wav"]
    assert names.source == str(path) and names.lines == {"b.wav": 2, "a.wav": 3}

    folder = tmp_path / "audio"
    folder.mkdir()
    for n in ["z.wav", "a.flac", "m.ogg", "notes.txt", "B.WAV"]:
        (folder / n).write_bytes(b"")
    (folder / "sub.wav").mkdir()
    assert read_filenames(folder) == ["B.WAV", "a.flac", "m.ogg", "z.wav"]


def test_read_filenames_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AnnotationError, match="empty dataset") as excinfo:
        read_filenames(empty)
    assert str(empty) in str(excinfo.value)
    path = write(tmp_path, "u.tsv", "name\na.wav\n")
    with pytest.raises(AnnotationError) as excinfo:
        read_filenames(path)
    assert_error_at(excinfo, path, 1, "'filename'")
    path = write(tmp_path, "u2.tsv", "filename\na.wav\nb.wav\na.wav\n")
    with pytest.raises(AnnotationError) as excinfo:
        read_filenames(path)
    assert_error_at(excinfo, path, 4, "duplicate")


def test_read_durations(tmp_path):
    path = write(tmp_path, "d.tsv", "filename\tduration\na.wav\t10.0\nb.wav\t7.5\n")
    assert read_durations(path) == {"a.wav": 10.0, "b.wav": 7.5}
    for body, line, word in [
        ("filename\tduration\na.wav\t10\nb.wav\tten\n", 3, "not a number"),
        ("filename\tduration\na.wav\t-1\n", 2, "negative"),
        ("filename\tduration\na.wav\t0\n", 2, "is 0"),
        ("filename\tduration\na.wav\t\n", 2, "empty duration"),
        ("filename\tlength\na.wav\t1\n", 1, "'duration'"),
        ("filename\tduration\na.wav\t1\na.wav\t2\n", 3, "differs"),
    ]:
        bad = write(tmp_path, "bad_d.tsv", body)
        with pytest.raises(AnnotationError) as excinfo:
            read_durations(bad)
        assert_error_at(excinfo, bad, line, word)


def test_writers_round_trip(tmp_path):
    strong = pd.DataFrame(
        {
            "filename": ["a.wav", "a.wav", "b.wav"],
            "onset": [0.1, 0.2 + 0.1, float("nan")],
            "offset": [1.0, 2.5, float("nan")],
            "event_label": ["Dog", "Cat", ""],
        }
    )
    write_strong(strong, tmp_path / "s.tsv")
    text = (tmp_path / "s.tsv").read_text()
    assert text.splitlines()[0] == "filename\tonset\toffset\tevent_label"
    assert "a.wav\t0.3\t2.5\tCat" in text and "b.wav\t\t\t" in text
    back = read_strong(tmp_path / "s.tsv", CLASSES)
    pd.testing.assert_frame_equal(back, strong.assign(onset=[0.1, 0.3, float("nan")]), check_exact=False)

    weak = pd.DataFrame({"filename": ["a.wav", "b.wav"], "event_labels": [("Dog", "Cat"), ()]})
    write_weak(weak, tmp_path / "w.tsv")
    assert read_weak(tmp_path / "w.tsv")["event_labels"].tolist() == [("Dog", "Cat"), ()]

    write_durations({"a.wav": 10.0, "b.wav": 9.87}, tmp_path / "d.tsv")
    assert read_durations(tmp_path / "d.tsv") == {"a.wav": 10.0, "b.wav": 9.87}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- soft labels: the confidence column ----------------------------------------------------
SOFT = (
    "filename\tonset\toffset\tevent_label\tconfidence\n"
    "a.wav\t0.0\t2.0\tDog\t0.6\n"
    "a.wav\t1.0\t3.0\tDog\t0.6\n"  # same class and confidence, overlapping: merged
    "a.wav\t2.5\t4.0\tDog\t1\n"  # other confidence: kept apart (soft targets take the larger value)
    "b.wav\t\t\t\t\n"
)


def test_read_strong_confidence_column(tmp_path):
    path = write(tmp_path, "soft.tsv", SOFT)
    df = read_strong(path, CLASSES)
    assert list(df.columns) == ["filename", "onset", "offset", "event_label", "confidence"]
    dog = df[df["event_label"] == "Dog"].sort_values("onset")
    assert dog[["onset", "offset", "confidence"]].values.tolist() == [[0.0, 3.0, 0.6], [2.5, 4.0, 1.0]]
    assert math.isnan(df.loc[df["filename"] == "b.wav", "confidence"].iloc[0])
    out = tmp_path / "out.tsv"
    write_strong(df, out)
    again = read_strong(out, CLASSES)
    pd.testing.assert_frame_equal(again.reset_index(drop=True), df.reset_index(drop=True))
    assert (
        "confidence"
        not in read_strong(
            write(tmp_path, "hard.tsv", "filename\tonset\toffset\tevent_label\na.wav\t0\t1\tDog\n"), CLASSES
        ).columns
    )


@pytest.mark.parametrize(
    "value, words",
    [
        ("high", ["confidence 'high' is not a number"]),
        ("1.5", ["confidence '1.5' is outside [0, 1]"]),
        ("-0.1", ["outside [0, 1]"]),
        ("", ["confidence '' is not a number"]),
        ("nan", ["outside [0, 1]"]),
    ],
)
def test_read_strong_bad_confidence_names_file_and_line(tmp_path, value, words):
    path = write(
        tmp_path,
        "bad.tsv",
        f"filename\tonset\toffset\tevent_label\tconfidence\na.wav\t0\t1\tDog\t0.5\na.wav\t1\t2\tCat\t{value}\n",
    )
    with pytest.raises(AnnotationError) as excinfo:
        read_strong(path, CLASSES)
    assert_error_at(excinfo, path, 3, *words)
