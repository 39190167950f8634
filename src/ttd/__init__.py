"""Text-Tag Self-Distillation (TTD) for CLIP-based dense models.

The public names below are imported on first use (PEP 562), so ``ttd --help`` and other light
commands start without importing torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "CLIPConfig": ".models",
    "DenseCLIP": ".models",
    "create_model": ".models",
    "load_model": ".models",
    "tokenize": ".models",
    "load_protocol": ".protocols",
    "Segmenter": ".segment",
    "TagSelector": ".method.tags",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ttd' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
