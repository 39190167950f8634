"""Small file helpers shared by every command: shipped assets, atomic writes, JSON results, Markdown tables.

Free of a top-level torch import, so the torch-free modules (protocols, vocabularies) can use it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
import typing
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from .errors import TTDError

if typing.TYPE_CHECKING:  # torch is imported where it is used: `ttd --help` stays fast
    import torch

__all__ = [
    "REFUSED", "asset", "read_named_or_file", "is_file", "value_type", "coerce", "fingerprint", "inputs_digest",
    "file_digest", "files_digest", "weights_version", "atomic_write_bytes", "remove_temporaries", "save_json",
    "save_image", "markdown_table", "default_device",
]

REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)  # the OS refusing a write (read-only, no permission), unlike a full disk


def asset(*parts: str) -> Path:
    """A file shipped in ``ttd/assets/``: the one place that knows where the package keeps them."""
    return Path(str(resources.files("ttd").joinpath("assets", *parts)))


def read_named_or_file(spec: str | os.PathLike, names: Sequence[str], folder: str, suffix: str, what: str,
                       label: str, file_kind: str) -> tuple[str, str]:
    """(text, source) of ``spec``: the shipped ``assets/folder/spec.suffix`` when ``spec`` is one
    of ``names``, else the file at ``spec``; anything else is a one-line error listing the names."""
    if str(spec) in names:
        return asset(folder, f"{spec}{suffix}").read_text(encoding="utf-8"), f"{label} {spec}"
    path = Path(spec)
    if not is_file(path):
        raise TTDError(f"unknown {what} {str(spec)!r}: choose one of {', '.join(names)} or give {file_kind}")
    return path.read_text(encoding="utf-8"), str(path)


def value_type(hint):
    """The type a value must take for the annotation ``hint``: ``T`` for ``T | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint if not args or typing.get_origin(hint) is tuple else args[0]


def coerce(value, hint):
    """A value from YAML or the command line (``"1e-4"``, ``"q,v"``, ``"[1, 0.5]"``, ``"true"``) as
    the type ``hint``: ``T | None``, ``tuple[T, ...]``, bool, int, float or str. The one reading of
    training configurations and segmentation protocols; raises ValueError or TypeError."""
    if value is None:
        return None
    hint = value_type(hint)
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            items = value.strip("[]() ").split(",")
        else:
            items = list(value) if isinstance(value, (list, tuple)) else [value]
        item = typing.get_args(hint)[0]
        return tuple(coerce(v.strip() if isinstance(v, str) else v, item) for v in items if str(v).strip())
    if hint is str:
        return str(value)
    if isinstance(value, str):
        if hint is bool and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"cannot parse {value!r}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if hint is int and isinstance(value, float) and not value.is_integer():
        raise ValueError("expected a whole number")
    return hint(value)


def is_file(path: Path) -> bool:
    """``path.is_file()`` that says False for names the OS refuses (too long, NUL bytes): a
    comma list or a class name is often tried as a path first."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def inputs_digest(*parts) -> str:
    """The key of a resumable cache: a hash of everything that changes its results (data digests,
    weight fingerprints, settings), so a rerun with other inputs never reuses stale entries."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def file_digest(path: str | os.PathLike) -> str:
    """A hash of a file's bytes (a manifest's content, not its name or line positions)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


def files_digest(paths) -> str:
    """A cheap key of many files (names, sizes, modification times): an evaluation set's images
    and masks are too many to hash, yet any change to them must miss a resumable state."""
    stats = []
    for path in paths:
        st = os.stat(path)
        stats.append((str(path), st.st_size, st.st_mtime_ns))
    return inputs_digest(stats)


def fingerprint(tensors) -> str:
    """The one weight fingerprint: a short hash of the tensors' values as float32, the same on
    any device and from any file format (adapters store it for their base weights; the text cache
    and resumable evaluations key on it)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def weights_version(module) -> tuple:
    """Changes whenever a tensor of ``module`` is replaced (a new object, e.g. adapters) or updated
    in place (an optimiser step, ``load_state_dict``): the cheap check before trusting a memo."""
    return tuple((id(t), t._version) for t in module.state_dict(keep_vars=True).values())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` so that ``path`` holds either the old or the complete new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; outputs honour the umask like open()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # a failed write names no file: name the output
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    return path


def remove_temporaries(folder: str | os.PathLike) -> None:
    """Delete what :func:`atomic_write_bytes` leaves when its process is killed (``.NAME.XXXX.tmp``);
    only the holder of the folder's lock may, as no other writer can be mid-write."""
    for path in Path(folder).rglob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_json(obj, path: str | os.PathLike) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_image(image, path: str | os.PathLike) -> Path:
    """A PIL image in the format its suffix names, encoded in memory and written atomically: a kill
    or a file-size limit never leaves a half-written picture."""
    from PIL import Image

    buffer = io.BytesIO()
    image.save(buffer, format=Image.registered_extensions()[Path(path).suffix.lower()])
    return atomic_write_bytes(path, buffer.getvalue())


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub-flavoured Markdown table; floats printed with one decimal unless already strings."""

    def cell(v) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, else CUDA when present, else CPU; a device this machine lacks is a
    one-line error here rather than a traceback deep in the first tensor move."""
    import torch

    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise TTDError(f"unknown device {str(device)!r}: use cpu, cuda or cuda:N") from None
    available = {
        "cpu": 1,
        "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "mps": int(torch.backends.mps.is_available()),
    }
    if (dev.index or 0) >= available.get(dev.type, 0):
        raise TTDError(f"device {str(device)!r} is not available on this machine; use --device cpu (or omit --device)")
    return dev
