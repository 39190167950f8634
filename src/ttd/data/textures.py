"""Procedural background textures for the mini-world: plain numpy, deterministic from a generator.

Backgrounds are generated rather than photographed so that nothing in them can be named by a
caption word: every depicted thing in a mini-world image is a pasted clip-art object.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

__all__ = ["TEXTURES", "random_texture", "random_colour"]


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour in [0, 255] (float32), drawn in HSV so hues are uniform."""
    h, s, v = rng.random(), rng.uniform(0.05, 0.85), rng.uniform(0.25, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colours ``a`` and ``b`` with weights ``t`` (H, W) in [0, 1] → (H, W, 3)."""
    return a * (1 - t[..., None]) + b * t[..., None]


def _coords(rng: np.random.Generator, size: int) -> np.ndarray:
    """Pixel coordinates projected on a random direction, (H, W)."""
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle))


def solid(rng: np.random.Generator, size: int) -> np.ndarray:
    return np.broadcast_to(random_colour(rng), (size, size, 3)).copy()


def gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    t = _coords(rng, size)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return _mix(random_colour(rng), random_colour(rng), t)


def stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    period = rng.uniform(4, max(6, size / 4))
    wave = np.sin(_coords(rng, size) * np.float32(2 * np.pi / period))
    t = (wave > 0).astype(np.float32) if rng.random() < 0.5 else (wave + 1) / 2
    return _mix(random_colour(rng), random_colour(rng), t)


def checker(rng: np.random.Generator, size: int) -> np.ndarray:
    cell = int(rng.integers(3, max(4, size // 6) + 1))
    yy, xx = np.mgrid[0:size, 0:size]
    t = ((yy // cell + xx // cell) % 2).astype(np.float32)
    return _mix(random_colour(rng), random_colour(rng), t)


def clouds(rng: np.random.Generator, size: int) -> np.ndarray:
    """Value noise: a coarse random grid upsampled bicubically, two octaves."""
    t = np.zeros((size, size), np.float32)
    for octave, weight in ((int(rng.integers(2, 6)), 0.7), (int(rng.integers(6, 14)), 0.3)):
        grid = (rng.random((octave, octave)) * 255).astype(np.uint8)
        up = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
        t += weight * np.asarray(up, np.float32) / 255
    return _mix(random_colour(rng), random_colour(rng), np.clip(t, 0, 1))


def dots(rng: np.random.Generator, size: int) -> np.ndarray:
    spacing = rng.uniform(5, max(7, size / 5))
    radius = spacing * rng.uniform(0.15, 0.4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy = (yy % spacing) - spacing / 2
    dx = ((xx + (yy // spacing) % 2 * spacing / 2) % spacing) - spacing / 2
    t = (dx * dx + dy * dy <= radius * radius).astype(np.float32)
    return _mix(random_colour(rng), random_colour(rng), t)


TEXTURES = {"solid": solid, "gradient": gradient, "stripes": stripes, "checker": checker, "clouds": clouds, "dots": dots}


def random_texture(rng: np.random.Generator, size: int) -> tuple[str, np.ndarray]:
    """A texture name and a size × size × 3 float32 background in [0, 255] (texture plus pixel noise)."""
    name = list(TEXTURES)[int(rng.integers(len(TEXTURES)))]
    image = TEXTURES[name](rng, size)
    noise = rng.normal(0, rng.uniform(0, 8), (size, size, 3)).astype(np.float32)
    return name, np.clip(image + noise, 0, 255)
