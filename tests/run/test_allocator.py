"""sed.run.allocator: train.py re-executes itself under mimalloc once, keeps its PID and arguments, and trains to the
same numbers as under glibc's malloc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TESTED_RUN_OPTIONS, run_train, tiny_overrides

from sed.run import allocator

LIB = Path("/somewhere/libmimalloc.so")
needs_mimalloc = pytest.mark.skipif(
    allocator.mimalloc_library() is None or not sys.platform.startswith("linux"),
    reason="cmeel-mimalloc (a dependency on Linux x86_64/aarch64) is not installed",
)


def test_preload_environment_adds_mimalloc_once_and_keeps_the_users_settings(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    env = allocator.preload_environment({"PATH": "/bin"}, LIB)
    assert env == {"PATH": "/bin", "LD_PRELOAD": str(LIB), "MIMALLOC_PURGE_DELAY": "-1"}
    assert allocator.preload_environment(env, LIB) is None  # already preloaded: no second re-execution
    env = allocator.preload_environment({"LD_PRELOAD": "/opt/libother.so", "MIMALLOC_PURGE_DELAY": "100"}, LIB)
    assert env == {"LD_PRELOAD": f"{LIB}:/opt/libother.so", "MIMALLOC_PURGE_DELAY": "100"}
    assert allocator.preload_environment({"SED_ALLOCATOR": "system"}, LIB) is None
    assert allocator.preload_environment({"SED_ALLOCATOR": " MiMalloc "}, LIB) is not None
    assert allocator.preload_environment({}, None) is None  # not installed: glibc's, no error
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.preload_environment({}, LIB) is None


def test_unknown_allocator_is_an_error_naming_the_variable():
    with pytest.raises(ValueError, match=r"SED_ALLOCATOR='tcmalloc': must be one of mimalloc, system"):
        allocator.choice({"SED_ALLOCATOR": "tcmalloc"})


@needs_mimalloc
def test_reexecuted_process_runs_mimalloc_with_the_same_pid_arguments_and_options(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(
        "import json, os, sys\n"
        "from sed.run import allocator\n"
        "allocator.reexec_with_mimalloc()\n"
        "print(json.dumps([os.getpid(), allocator.active(), sys.flags.dont_write_bytecode, sys.argv[1:]]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "SED_ALLOCATOR", "MIMALLOC_PURGE_DELAY")}
    proc = subprocess.Popen([sys.executable, "-B", str(script), "a b", "c"], env=env, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert json.loads(out) == [proc.pid, "mimalloc", 1, ["a b", "c"]]
    out = subprocess.run(
        [sys.executable, str(script)],
        env={**env, "SED_ALLOCATOR": "system"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out)[1] == "system"


@needs_mimalloc
def test_training_under_mimalloc_gives_the_numbers_of_glibc_malloc(tested_run, tiny_dataset, tmp_path):
    """Memory reused from earlier tensors is not zeroed as fresh pages are: a read of uninitialised memory would
    show here as a difference from the glibc run (whose large blocks are always fresh, zeroed pages)."""
    run_dir, _ = tested_run  # train.py's default: mimalloc
    assert "Memory allocator: mimalloc" in (run_dir / "train.log").read_text()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SED_ALLOCATOR", "system")
        run_train([*tiny_overrides(data_root=tiny_dataset, exp_dir=tmp_path, epochs=1), *TESTED_RUN_OPTIONS])
    (glibc_dir,) = [p for p in (tmp_path / "tiny").iterdir() if p.is_dir()]
    assert "Memory allocator: glibc's (SED_ALLOCATOR=system)" in (glibc_dir / "train.log").read_text()
    weights = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"] for d in (run_dir, glibc_dir)
    ]
    tensors = [k for k, v in weights[0].items() if isinstance(v, torch.Tensor)]
    assert tensors and all(torch.equal(weights[0][k], weights[1][k]) for k in tensors)
    for model in ("student", "teacher"):
        got = [json.loads((d / "test" / model / "metrics.json").read_text()) for d in (run_dir, glibc_dir)]
        for metrics in got:
            for varying in ("energy", "complexity"):  # durations and paths
                metrics.pop(varying, None)
        assert got[0] == got[1]
