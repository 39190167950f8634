"""Placeholder replaced by the weights module (named weights, OpenAI archives, open_clip, HF)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .clip import CLIPConfig


@dataclass
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]
    config: CLIPConfig
    source: str
    calibration: dict[str, torch.Tensor] | None = None


def load_weights(name_or_path: str, quick_gelu: bool | None = None) -> LoadedWeights:
    raise NotImplementedError
KNOWN_WEIGHTS: dict = {}
