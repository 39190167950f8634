"""One exception type for bad input: the CLI prints its message as one line, never a traceback."""

from __future__ import annotations

__all__ = ["TTDError"]


class TTDError(ValueError):
    """Bad input from the user (a name, a file, a caption, a dataset layout).

    The message names the problem and the fix in one line.
    """
