"""The ``ttd`` command: parses arguments and calls the Python API; one module per command.

Every handler is ``(args) -> int``; :func:`main` turns every :class:`~ttd.errors.TTDError` into one
line on stderr (exit 2; ``TTDFailure`` exit 1) and ``OSError`` (disk full, read-only) into exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import TTDError
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


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 success, 1 a failure while running (disk full, a diverged run), 2 bad input;
    every error is one line on stderr, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (TTDError, FileNotFoundError) as err:
        print(f"ttd {args.command}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except OSError as err:  # disk full, read-only, a name the OS refuses: the file and the reason
        where = f"{err.filename}: " if err.filename else ""
        print(f"ttd {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ttd {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ttd info | head`: the reader left; end quietly, as coreutils do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
