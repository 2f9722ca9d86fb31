"""Checkpoint files under faults: SIGKILL mid-save, a full disk, weights gone NaN, broken checkpoint files."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sed.run.checkpointing import (
    AtomicCheckpointIO,
    CheckpointError,
    NonFiniteWeightsError,
    read_checkpoint,
)

REPO = Path(__file__).resolve().parents[2]

_SAVER = """
import sys, torch
from sed.utils.io import atomic_torch_save  # what AtomicCheckpointIO writes with (no Lightning import: fast)
path, k = sys.argv[1], 0
while True:
    k += 1
    atomic_torch_save({"state_dict": {"w": torch.full((2_000_000,), float(k))}, "version": k}, path)
    print(k, flush=True)
"""


def test_sigkill_mid_save_always_leaves_a_whole_checkpoint(tmp_path):
    """A process killed while writing an 8 MB checkpoint, again and again: the file always loads whole."""
    path = tmp_path / "last.ckpt"
    seen = set()
    for delay in (0.02, 0.15, 0.4):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline()  # one save done: a previous checkpoint exists
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        checkpoint = torch.load(path, weights_only=False)
        version = checkpoint["version"]
        assert torch.all(checkpoint["state_dict"]["w"] == float(version))
        seen.add(version)
    assert seen


def test_weights_gone_nan_are_never_saved_over_a_good_checkpoint(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    with pytest.raises(
        NonFiniteWeightsError, match=r"not saving .*last\.ckpt: 1 weight tensor\(s\) hold NaN/Inf \(e\.g\. w\)"
    ):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan"), 2.0])}}, path)
    assert path.read_bytes() == before


def test_disk_full_names_the_path_and_keeps_the_previous_file(tmp_path, monkeypatch):
    """ENOSPC mid-write (injected into the file writes): 'no space left on device, <path>', old file intact,
    no temporary file left behind. torch.save on a full disk said only 'unexpected pos'."""
    import sed.utils.io as io_mod

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(io_mod.os, "fdopen", lambda *a, **k: Full(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match=rf"no space left on device, {path}"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_broken_checkpoint_files_get_one_line_errors(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(100_000)}, "hyper_parameters": {"classes": ["a"], "config": {}}}, good)
    assert read_checkpoint(good)["hyper_parameters"]["classes"] == ["a"]
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    for path, reason in (
        (truncated, "unreadable checkpoint \\(truncated or corrupt"),
        (empty, "empty file"),
        (tmp_path / "missing.ckpt", "no such file"),
        (foreign, "not a checkpoint of this pipeline"),
    ):
        with pytest.raises(CheckpointError, match=rf"^ckpt_path={path}: {reason}") as err:
            read_checkpoint(path)
        assert "\n" not in str(err.value)
