"""The exceptions the CLI turns into one line (never a traceback): bad input, failed runs, signals."""

from __future__ import annotations

__all__ = ["Interrupted", "TTDError", "TTDFailure"]


class TTDError(ValueError):
    """Bad input from the user (a name, a file, a caption, a dataset layout).

    The message names the problem and the fix in one line; the CLI exits with ``exit_code``.
    """

    exit_code = 2


class TTDFailure(TTDError):
    """A run that started from good input and failed (diverged, found no readable sample): exit 1."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """A stop by signal ``signum``: SIGTERM raises it where Ctrl-C raises KeyboardInterrupt, so a
    ``kill`` stops as cleanly (finished work kept, no half-written file); the CLI exits 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
