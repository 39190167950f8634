"""Text-Tag Self-Distillation (TTD) for CLIP-based dense models."""

from .models import CLIPConfig, DenseCLIP, create_model, load_model, tokenize
from .protocols import load_protocol
from .segment import Segmenter
from .tags import TagSelector

__version__ = "0.1.0"

__all__ = [
    "CLIPConfig",
    "DenseCLIP",
    "Segmenter",
    "TagSelector",
    "create_model",
    "load_model",
    "load_protocol",
    "tokenize",
    "__version__",
]
