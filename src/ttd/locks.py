"""One writer per output folder: two commands writing the same ``--out`` would mix their files.

The holder also removes the temporaries of atomic writes that a killed earlier writer left.

The lock is a file ``.ttd.lock`` inside the folder, created exclusively and holding the owner's
pid, host and command. A second writer gets a one-line error naming the first one; a lock left by
a process that died (same host, pid gone) is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from .errors import TTDError
from .io import remove_temporaries

__all__ = ["LOCK_NAME", "output_lock"]

LOCK_NAME = ".ttd.lock"
_HELD: dict[Path, int] = {}  # the locks this process holds → how many nested holders


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # torn or vanished: treated as stale below


def _acquire(path: Path, command: str) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            owner = _owner(path)
            pid, host = owner.get("pid"), owner.get("host")
            if isinstance(pid, int) and (host != me["host"] or _alive(pid)):
                raise TTDError(
                    f"{path.parent} is being written by ttd {owner.get('command', '?')} (pid {pid} on {host}); "
                    f"wait for it to finish or choose another --out (remove {path} if that process is gone)"
                ) from None
            print(f"ttd {command}: warning: taking over the stale lock of pid {pid} on {host} in {path.parent}",
                  file=sys.stderr)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return
    raise TTDError(f"cannot lock {path.parent}: another process keeps taking it; try again")


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike | None, command: str, active: bool = True) -> Iterator[None]:
    """Hold the lock of ``folder`` (created if missing) for the ``with`` block; re-entrant within a
    process. ``active=False`` (a non-main torchrun process, or no output folder) holds nothing:
    rank 0 speaks for the run."""
    if folder is None or not active:
        yield
        return
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise TTDError(f"--out {folder} is a file; choose a folder")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    key = path.resolve()
    if key in _HELD:  # this process holds it already (the CLI around the API's train): nothing to take
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    _acquire(path, command)
    _HELD[key] = 1
    remove_temporaries(folder)
    try:
        yield
    finally:
        del _HELD[key]
        if _owner(path).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
