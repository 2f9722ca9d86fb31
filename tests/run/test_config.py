"""The command line as train.py reads it: what Hydra's override grammar refuses gets a hint in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sed.run.config import check_override_syntax

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("data.root=/data/ünï", """'data.root="/data/ünï"'"""),
        ("exp_name=naïve", """'exp_name="naïve"'"""),
        ("data.classes=[dög,cat]", "quote each item"),
    ],
)
def test_a_non_ascii_unquoted_value_is_refused_with_how_to_quote_it(override, hint):
    with pytest.raises(SystemExit) as refused:
        check_override_syntax(["train.py", "data.generate=false", override])
    message = str(refused.value.code)
    assert message.startswith(f"error: {override}: ") and hint in message and "\n" not in message, message


def test_valid_overrides_and_quoted_non_ascii_values_pass():
    check_override_syntax(
        [
            "train.py",
            "-m",
            """data.root="/data/ünï\"""",
            "data.root='/data/ünï'",
            "training.lr=1e-3,3e-4",
            "+callbacks.x._target_=a.B",
            "~model",
            'data.classes=["dög",cat]',
        ]
    )


def test_train_py_refuses_it_in_one_line_before_hydra():
    """(Hydra's lexer failed with 'LexerNoViableAltException' and no hint.)"""
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "data.root=/data/ünï"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        """error: data.root=/data/ünï: Hydra's override grammar takes a non-ASCII character ('ü') only in a quoted """
        """value: quote it, e.g. 'data.root="/data/ünï"' (the outer quotes for the shell)"""
    ], proc.stderr
