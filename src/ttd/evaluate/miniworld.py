"""The mini-world's embedded assets and evaluation settings, shared by ``ttd quickstart``, ``ttd
demo`` and the reproduction (``benchmarks/reproduce_miniworld.py``).

* the embedded weights and their TTD adapters are entries of the weights registry
  (:func:`ttd.models.weights.embedded_models`): ``miniworld-clip`` (plain InfoNCE,
  MaskCLIP-like, :data:`EMBEDDED_MODEL`, the quickstart's and the demo's default) and ``miniworld``
  (TCL-like);
* :data:`SAMPLES_MANIFEST`: a few dozen held-out test images with captions, depicted tags and
  masks (``scripts/extract_miniworld_samples.py`` copies them out of a build);
* the ``miniworld`` protocol preset: segmentation of 64 px images (one forward, CLIP statistics).
"""

from __future__ import annotations

from ..io import asset

__all__ = ["EMBEDDED_MODEL", "SAMPLES_MANIFEST", "miniworld_protocol"]

EMBEDDED_MODEL = "miniworld-clip"  # its caption maps show single tag bias the way MaskCLIP's do
SAMPLES_MANIFEST = asset("miniworld", "samples", "tags.jsonl")


def miniworld_protocol(**overrides):
    """The ``miniworld`` protocol preset, with knobs changed by ``overrides``."""
    from ..protocols import load_protocol

    return load_protocol("miniworld", overrides=overrides or None)
