"""Read the weights of a TorchScript archive (OpenAI's ``ViT-B-16.pt`` …) without running it.

``torch.jit.load`` compiles and runs the archive's code, and ``torch.load(weights_only=True)``
refuses TorchScript archives, so neither is safe for a file from the internet. Here the archive's
``data.pkl`` is read by a restricted unpickler instead:

* TorchScript module classes (``__torch__.*``) become plain attribute records with no behaviour;
* tensors are rebuilt as views of the raw little-endian storages under ``data/``;
* the only other callables it will resolve are a handful of list/dict builders; any other global
  is refused, so nothing in the file can execute.

Which tensor attributes are weights is read from the archive's own class declarations
(``__parameters__`` / ``__buffers__`` in ``code/``); the result equals the ``state_dict()`` that
``torch.jit.load(path).state_dict()`` would give.
"""

from __future__ import annotations

import io
import pickle
import re
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import TTDError

__all__ = ["is_torchscript_archive", "read_torchscript_weights"]

# Storage classes TorchScript names in persistent ids ("torch", "HalfStorage") → element type.
_STORAGE_DTYPES = {
    f"{name}Storage": dtype
    for name, dtype in {
        "Half": torch.float16,
        "Float": torch.float32,
        "Double": torch.float64,
        "BFloat16": torch.bfloat16,
        "Long": torch.int64,
        "Int": torch.int32,
        "Short": torch.int16,
        "Char": torch.int8,
        "Byte": torch.uint8,
        "Bool": torch.bool,
    }.items()
}


class _ScriptObject:
    """The attributes of one TorchScript object (a module), and nothing else."""

    qualified_name = ""

    def __setstate__(self, state) -> None:
        self.attributes = state if isinstance(state, dict) else {}


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_unused) -> torch.Tensor:
    # ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])``
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _keep_value(value, _type_tag=None):
    return value


_SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): _keep_value,
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._root = root
        self._classes: dict[str, type] = {}
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self._classes:
                self._classes[qualified] = type(name, (_ScriptObject,), {"qualified_name": qualified})
            return self._classes[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        try:
            return _SAFE_GLOBALS[module, name]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.60}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"storage {key} has no known element type")
        if key not in self._storages:
            data = bytearray(self._archive.read(f"{self._root}/data/{key}"))
            dtype = storage_type.dtype
            if len(data) != numel * dtype.itemsize:
                expected = numel * dtype.itemsize
                raise pickle.UnpicklingError(f"storage {key} holds {len(data)} bytes, expected {expected}")
            self._storages[key] = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        return self._storages[key]


_CLASS = re.compile(r"^class (\w+)\(Module\):\n((?:  .*\n)*)", re.MULTILINE)
_DECLARED = re.compile(r"^  __(?:parameters|buffers)__ = \[(.*)\]$", re.MULTILINE)


def _declared_weights(archive: zipfile.ZipFile, root: str) -> dict[str, set[str]]:
    """Qualified class name → names of its parameters and buffers, from the archive's code/."""
    declared: dict[str, set[str]] = {}
    code = f"{root}/code/"
    for name in archive.namelist():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        module = name[len(code) : -len(".py")].replace("/", ".")
        for cls in _CLASS.finditer(archive.read(name).decode("utf-8", "replace")):
            names = set()
            for listed in _DECLARED.findall(cls.group(2)):
                names.update(re.findall(r'"(\w+)"', listed))
            declared[f"{module}.{cls.group(1)}"] = names
    return declared


def _collect(obj: _ScriptObject, prefix: str, declared: dict[str, set[str]], out: dict, seen: set) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    # A class whose declaration is missing contributes all its tensors; the caller's key check
    # then reports any that are not weights.
    weights = declared.get(obj.qualified_name)
    for attr, value in getattr(obj, "attributes", {}).items():
        if isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{attr}.", declared, out, seen)
        elif isinstance(value, torch.Tensor) and (weights is None or attr in weights):
            out[prefix + attr] = value


def _archive_root(names: list[str]) -> str | None:
    roots = {n.split("/", 1)[0] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")}
    return roots.pop() if len(roots) == 1 else None


def is_torchscript_archive(names: list[str]) -> bool:
    """True for the member names of a TorchScript zip (``X/data.pkl`` beside ``X/constants.pkl``)."""
    root = _archive_root(names)
    return root is not None and f"{root}/constants.pkl" in names


def read_torchscript_weights(path: str | Path, archive: zipfile.ZipFile) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the TorchScript module in ``archive`` (an open zip of ``path``)."""
    names = archive.namelist()
    root = _archive_root(names)
    if root is None:
        raise TTDError(f"{path} is not a TorchScript archive: it has no single */data.pkl")
    byteorder = archive.read(f"{root}/byteorder").decode().strip() if f"{root}/byteorder" in names else sys.byteorder
    if byteorder != sys.byteorder:
        raise TTDError(f"{path} was saved on a {byteorder}-endian machine: re-save it on a {sys.byteorder}-endian one")
    try:
        top = _ArchiveUnpickler(archive.read(f"{root}/data.pkl"), archive, root).load()
        weights: dict[str, torch.Tensor] = {}
        if isinstance(top, _ScriptObject):
            _collect(top, "", _declared_weights(archive, root), weights, set())
    except _RefusedGlobal as err:
        raise TTDError(
            f"refusing to load {path}: its data.pkl calls {err}, which is not a tensor or module "
            "record (ttd never runs code from a weights file); export a plain state dict instead"
        ) from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, RuntimeError, zipfile.BadZipFile,
            TypeError, AttributeError, IndexError) as err:  # a malformed archive fails in any of these
        raise TTDError(f"cannot read {path}: the archive is corrupt or truncated ({err}); download it again") from None
    if not isinstance(top, _ScriptObject):
        raise TTDError(f"{path} is a TorchScript archive without a module: it holds no CLIP weights")
    return weights
