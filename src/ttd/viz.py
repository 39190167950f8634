"""Figures written with PIL only: label overlays with legends, side-by-side panels, heatmap grids."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["palette", "overlay", "legend", "with_legend", "panels", "colorize_heatmap", "heatmap_grid"]

IGNORE_COLOR = (255, 255, 255)
BACKGROUND_COLOR = (0, 0, 0)


def _font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def palette(num_classes: int, background: bool = False) -> list[tuple[int, int, int]]:
    """Distinct, deterministic colours (golden-ratio hues); black for a background class."""
    colors = []
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        sat, val = (0.65, 0.95) if i % 2 else (0.9, 0.8)
        colors.append(tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val)))
    if background and colors:
        colors[0] = BACKGROUND_COLOR
    return colors


def _rgb(labels: torch.Tensor | np.ndarray, colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    table[255] = IGNORE_COLOR
    return table[np.clip(labels, 0, 255).astype(np.int64)]


def overlay(
    image: Image.Image,
    labels: torch.Tensor | np.ndarray,
    colors: Sequence[tuple[int, int, int]],
    alpha: float = 0.55,
    skip: Sequence[int] = (),
) -> Image.Image:
    """The image with each pixel tinted by its class colour; classes in ``skip`` left untinted."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    tint = _rgb(labels, colors).astype(np.float32)
    if tint.shape[:2] != base.shape[:2]:
        raise ValueError(f"labels {tint.shape[:2]} and image {base.shape[:2]} differ in size")
    weight = np.full(base.shape[:2] + (1,), alpha, dtype=np.float32)
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    for k in skip:
        weight[labels == k] = 0.0
    return Image.fromarray((base * (1 - weight) + tint * weight).round().astype(np.uint8))


def legend(
    names: Sequence[str], colors: Sequence[tuple[int, int, int]], width: int, font_size: int = 14
) -> Image.Image:
    """Colour swatches with names, wrapped into rows ``width`` pixels wide."""
    font = _font(font_size)
    pad, swatch = 6, font_size
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries = [(n, c, int(draw.textlength(n, font=font)) + swatch + 3 * pad) for n, c in zip(names, colors)]
    rows, row, used = [], [], 0
    for entry in entries:
        if row and used + entry[2] > width:
            rows.append(row)
            row, used = [], 0
        row.append(entry)
        used += entry[2]
    if row:
        rows.append(row)
    line = swatch + pad
    img = Image.new("RGB", (width, pad + line * max(1, len(rows))), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r, entries_in_row in enumerate(rows):
        x, y = pad, pad + r * line
        for name, color, w in entries_in_row:
            draw.rectangle([x, y, x + swatch, y + swatch], fill=tuple(color), outline=(0, 0, 0))
            draw.text((x + swatch + pad, y), name, fill=(0, 0, 0), font=font)
            x += w
    return img


def with_legend(image: Image.Image, names: Sequence[str], colors: Sequence[tuple[int, int, int]]) -> Image.Image:
    """``image`` with a legend strip below it."""
    strip = legend(names, colors, image.width)
    out = Image.new("RGB", (image.width, image.height + strip.height), (255, 255, 255))
    out.paste(image, (0, 0))
    out.paste(strip, (0, image.height))
    return out


def panels(images: Sequence[Image.Image], titles: Sequence[str] | None = None, gap: int = 4) -> Image.Image:
    """Images side by side (top-aligned), each under an optional title."""
    font = _font(14)
    title_h = 20 if titles else 0
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    height = max(im.height for im in images) + title_h
    out = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    x = 0
    for i, im in enumerate(images):
        if titles:
            draw.text((x + 4, 2), titles[i], fill=(0, 0, 0), font=font)
        out.paste(im.convert("RGB"), (x, title_h))
        x += im.width + gap
    return out


def colorize_heatmap(heat: torch.Tensor | np.ndarray) -> np.ndarray:
    """Values in [0, 1] → RGB uint8 (H, W, 3) on a blue-cyan-yellow-red ramp."""
    h = np.clip(np.asarray(heat.cpu() if isinstance(heat, torch.Tensor) else heat, dtype=np.float32), 0, 1)
    stops = np.array([0.0, 0.35, 0.65, 1.0])
    colors = np.array([[30, 30, 160], [40, 200, 220], [250, 230, 40], [220, 30, 30]], dtype=np.float32)
    rgb = np.stack([np.interp(h, stops, colors[:, c]) for c in range(3)], axis=-1)
    return rgb.round().astype(np.uint8)


def heatmap_grid(
    image: Image.Image,
    heatmaps: torch.Tensor | np.ndarray,
    titles: Sequence[str],
    columns: int = 4,
    alpha: float = 0.6,
    cell: int = 256,
) -> Image.Image:
    """The image beside each heatmap (N, H, W) blended over it, in a titled grid."""
    heatmaps = np.asarray(heatmaps.cpu() if isinstance(heatmaps, torch.Tensor) else heatmaps)
    scale = cell / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    base = image.convert("RGB").resize(size, Image.BILINEAR)
    cells = [("image", base)]
    for title, heat in zip(titles, heatmaps):
        tint = Image.fromarray(colorize_heatmap(heat)).resize(size, Image.BILINEAR)
        cells.append((title, Image.blend(base, tint, alpha)))
    font, title_h, gap = _font(13), 18, 4
    cols = max(1, min(columns, len(cells)))
    rows = -(-len(cells) // cols)
    out = Image.new("RGB", (cols * (size[0] + gap), rows * (size[1] + title_h + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for i, (title, im) in enumerate(cells):
        x, y = (i % cols) * (size[0] + gap), (i // cols) * (size[1] + title_h + gap)
        draw.text((x + 2, y + 2), title[:40], fill=(0, 0, 0), font=font)
        out.paste(im, (x, y + title_h))
    return out
