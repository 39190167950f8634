"""CLIP towers, tokenisation, weight loading and the dense-model contract."""

from .clip import CLIP, CLIPConfig, config_from_state_dict
from .dense import DenseCLIP, HeatmapCalibration
from .registry import DENSE_VARIANTS, dense_variant
from .factory import create_model, load_model
from .tokenizer import tokenize

__all__ = [
    "CLIP",
    "CLIPConfig",
    "DENSE_VARIANTS",
    "DenseCLIP",
    "HeatmapCalibration",
    "config_from_state_dict",
    "create_model",
    "dense_variant",
    "load_model",
    "tokenize",
]
