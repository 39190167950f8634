"""The dense variants by name: the one table that ``--dense``, the loaders and ``ttd info`` read.

It sits above the modules that define the variants (:mod:`.dense` for the training-free
readouts, :mod:`.tcl` for TCL, which builds on :class:`.dense.DenseCLIP`), so none of them
imports another one back.
"""

from __future__ import annotations

from ..errors import TTDError
from .dense import NACLIP, SCLIP, ClearCLIP, DenseCLIP, MaskCLIP
from .tcl import TCL

__all__ = ["DENSE_VARIANTS", "dense_variant"]

DENSE_VARIANTS: dict[str, type[DenseCLIP]] = {
    cls.name: cls for cls in (DenseCLIP, MaskCLIP, SCLIP, ClearCLIP, NACLIP, TCL)
}


def dense_variant(name: str) -> type[DenseCLIP]:
    try:
        return DENSE_VARIANTS[name.lower()]
    except KeyError:
        raise TTDError(f"unknown dense variant {name!r}; choose one of: {', '.join(DENSE_VARIANTS)}") from None
