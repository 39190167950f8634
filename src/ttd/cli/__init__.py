"""The ``ttd`` command: parses arguments and calls the Python API; one module per command.

Every handler is ``(args) -> int``; :func:`main` turns every :class:`~ttd.errors.TTDError` into one
line on stderr (exit 2; ``TTDFailure`` exit 1), ``OSError`` (disk full) into exit 1, SIGINT and
SIGTERM into a clean stop (exit 130 and 143) and every Python warning into one line.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings

from ..errors import Interrupted, TTDError
from . import data, demo, evaluate, info, quickstart, segment, tags, train

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, like every other error of ``ttd`` (the usage
    block it prints by default buries the message); subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ttd", description="Text-Tag Self-Distillation for CLIP dense models")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (info, tags, segment, evaluate, train, data, quickstart, demo):
        command.add(sub)
    return parser


def _error(command: str, message: str) -> None:
    """One line on stderr, even when the message holds a file name with a newline in it."""
    print(f"ttd {command}: error: {message}".replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)


def _terminate(signum, frame):
    raise Interrupted(signum)


def _one_line_warnings(command: str):
    """``warnings.showwarning`` as one line ``ttd CMD: warning: MESSAGE``, without the source
    lines Python prints by default (a warning from deep in torch reads like a traceback)."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"ttd {command}: warning: {str(message).splitlines()[0]}", file=file or sys.stderr)

    return show


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 success, 1 a failure while running (disk full, a diverged run), 2 bad input,
    128 + the signal when stopped (130 Ctrl-C, 143 SIGTERM); every error is one line on stderr,
    never a traceback."""
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    saved = warnings.showwarning, signal.getsignal(signal.SIGTERM)
    warnings.showwarning = _one_line_warnings(args.command)
    if main_thread:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.run(args)
    except (TTDError, FileNotFoundError) as err:
        _error(args.command, str(err))
        return getattr(err, "exit_code", 2)
    except OSError as err:  # disk full, a file-size limit, a name the OS refuses: the file and the reason
        _error(args.command, f"{err.filename}: {err.strerror or err}" if err.filename else str(err.strerror or err))
        return 1
    except KeyboardInterrupt as stop:
        print(f"ttd {args.command}: interrupted{'; ' + args.resume_hint if hasattr(args, 'resume_hint') else ''}",
              file=sys.stderr)
        return 128 + getattr(stop, "signum", signal.SIGINT)
    except BrokenPipeError:  # `ttd info | head`: the reader left; end quietly, as coreutils do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    finally:
        warnings.showwarning = saved[0]
        if main_thread:
            signal.signal(signal.SIGTERM, saved[1])
