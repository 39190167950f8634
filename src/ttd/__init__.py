"""Text-Tag Self-Distillation (TTD) for CLIP-based dense models."""

from .models import CLIPConfig, DenseCLIP, create_model, load_model, tokenize
from .tags import TagSelector

__version__ = "0.1.0"

__all__ = ["CLIPConfig", "DenseCLIP", "TagSelector", "create_model", "load_model", "tokenize", "__version__"]
