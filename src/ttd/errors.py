"""One exception type for bad input: the CLI prints its message as one line, never a traceback."""

from __future__ import annotations

__all__ = ["TTDError", "TTDFailure"]


class TTDError(ValueError):
    """Bad input from the user (a name, a file, a caption, a dataset layout).

    The message names the problem and the fix in one line; the CLI exits with ``exit_code``.
    """

    exit_code = 2


class TTDFailure(TTDError):
    """A run that started from good input and failed (diverged, found no readable sample): exit 1."""

    exit_code = 1
