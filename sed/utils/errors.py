"""Errors that are the user's to fix, not bugs: bad input, configuration or machine state the pipeline checked.

Their message says what is wrong and where (the file and line, the configuration key, the path) in one line (a
data check lists every problem, one per line). ``train.py`` and the other commands report them as that message and
a non-zero exit status, without a traceback, which stays for bugs (``HYDRA_FULL_ERROR=1`` shows it anyway).
"""

from __future__ import annotations


class UserError(Exception):
    """A checked problem of the user's input, configuration or machine; the message names it and where it is."""


class ConfigError(UserError, ValueError):
    """A configuration value the pipeline refuses; the message names the key."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file or folder the configuration names does not exist; the message names the key and the path."""


class DiskFullError(UserError, OSError):
    """No space left on the device while writing; the message names the file (the previous one is kept)."""
