"""The mini-world's embedded assets and evaluation settings, shared by ``ttd quickstart`` and the
reproduction (``benchmarks/reproduce_miniworld.py``).

* ``miniworld`` weights: the mini CLIP pretrained on the mini-world (loaded by name through
  :func:`ttd.load_model`);
* :data:`EMBEDDED_ADAPTER`: its TTD adapter (MaskCLIP, pixel scoring), loaded with
  :func:`ttd.models.lora.load_adapter`;
* :data:`SAMPLES_MANIFEST`: a few dozen validation images with captions, depicted tags and masks
  (``scripts/extract_miniworld_samples.py`` copies them out of a build);
* the ``miniworld`` protocol preset: segmentation of 64 px images (one forward, CLIP statistics).
"""

from __future__ import annotations

from ..io import asset

__all__ = ["ASSETS", "EMBEDDED_MODEL", "EMBEDDED_ADAPTER", "SAMPLES_MANIFEST", "miniworld_protocol"]

ASSETS = asset("miniworld")
EMBEDDED_MODEL = "miniworld"
EMBEDDED_ADAPTER = ASSETS / "ttd_adapter.safetensors"
SAMPLES_MANIFEST = ASSETS / "samples" / "tags.jsonl"


def miniworld_protocol(**overrides):
    """The ``miniworld`` protocol preset, with knobs changed by ``overrides``."""
    from ..protocols import load_protocol

    return load_protocol("miniworld", overrides=overrides or None)
