"""Figures written with PIL only: label overlays with legends, side-by-side panels, heatmap grids.

Small images (the mini-world's are 64 px) are enlarged with nearest-neighbour sampling to at least
:data:`MIN_SIZE` pixels so every pixel stays visible, and every text (titles, legends, captions) is
wrapped to the width it has rather than cut.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "MIN_SIZE", "palette", "enlarge", "wrap_text", "text_block", "overlay", "legend", "with_legend", "panels",
    "stack", "colorize_heatmap", "colorbar", "heatmap_grid", "score_bars",
]

IGNORE_COLOR = (255, 255, 255)
IGNORE_LABEL = 255  # the label id datasets use for "not annotated"
BACKGROUND_COLOR = (0, 0, 0)
MIN_SIZE = 384  # the long side small images are shown at
PAD = 6
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def _font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _line_height(font) -> int:
    top, bottom = font.getbbox("Ag|")[1::2]
    return bottom + max(2, (bottom - top) // 4)


def _text_width(text: str, font) -> int:
    return int(np.ceil(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)))


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


def enlarge(image: Image.Image, min_size: int = MIN_SIZE) -> Image.Image:
    """``image`` scaled up by a whole factor (nearest neighbour) until its long side is at least
    ``min_size``, so small images stay crisp; larger images are returned as they are."""
    factor = -(-min_size // max(image.size))
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def wrap_text(text: str, width: int, font_size: int = 14) -> list[str]:
    """``text`` broken into lines at most ``width`` pixels wide: at spaces where possible, inside
    words that are wider than a whole line."""
    font = _font(font_size)
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if _text_width(candidate, font) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for char in word:  # the word alone: break it where it no longer fits
                if line and _text_width(line + char, font) > width:
                    lines.append(line)
                    line = ""
                line += char
        lines.append(line)
    return lines


def text_block(lines: Sequence[str], width: int, font_size: int = 14) -> Image.Image:
    """Lines of text on white, each wrapped to ``width`` pixels."""
    font = _font(font_size)
    wrapped = [w for line in lines for w in wrap_text(line, width - 2 * PAD, font_size)]
    step = _line_height(font)
    img = Image.new("RGB", (width, 2 * PAD + step * len(wrapped)), WHITE)
    draw = ImageDraw.Draw(img)
    for k, line in enumerate(wrapped):
        draw.text((PAD, PAD + k * step), line, fill=BLACK, font=font)
    return img


def _rgb(labels: torch.Tensor | np.ndarray, colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    table = np.zeros((max(256, len(colors)), 3), dtype=np.uint8)
    table[: len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(colors) <= IGNORE_LABEL:  # with more classes, 255 is a class of its own
        table[IGNORE_LABEL] = IGNORE_COLOR
    return table[np.clip(labels, 0, len(table) - 1).astype(np.int64)]


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
    """Colour swatches with names, in rows ``width`` pixels wide; a name too long for a whole
    row is wrapped over several lines beside its swatch."""
    font = _font(font_size)
    swatch, step = font_size, _line_height(font)
    text_room = max(1, width - 2 * PAD - swatch - PAD)
    entries = []
    for name, color in zip(names, colors):
        lines = wrap_text(name, text_room, font_size)
        entries.append((lines, color, swatch + PAD + max(_text_width(t, font) for t in lines) + 2 * PAD))
    rows, row, used = [], [], 0
    for entry in entries:
        if row and used + entry[2] > width - PAD:
            rows.append(row)
            row, used = [], 0
        row.append(entry)
        used += entry[2]
    if row:
        rows.append(row)
    heights = [max(len(lines) for lines, _, _ in r) * step + PAD for r in rows] or [step + PAD]
    img = Image.new("RGB", (width, PAD + sum(heights)), WHITE)
    draw = ImageDraw.Draw(img)
    y = PAD
    for entries_in_row, height in zip(rows, heights):
        x = PAD
        for lines, color, w in entries_in_row:
            draw.rectangle([x, y + 1, x + swatch, y + 1 + swatch], fill=tuple(color), outline=BLACK)
            for k, line in enumerate(lines):
                draw.text((x + swatch + PAD, y + k * step), line, fill=BLACK, font=font)
            x += w
        y += height
    return img


def stack(parts: Sequence[Image.Image]) -> Image.Image:
    """Images one below the other, left-aligned, on white."""
    out = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), WHITE)
    y = 0
    for part in parts:
        out.paste(part, (0, y))
        y += part.height
    return out


def with_legend(image: Image.Image, names: Sequence[str], colors: Sequence[tuple[int, int, int]]) -> Image.Image:
    """``image`` (enlarged when small) with a legend below it."""
    image = enlarge(image.convert("RGB"))
    return stack([image, legend(names, colors, image.width)])


def _titles(titles: Sequence[str], width: int, font_size: int) -> tuple[list[list[str]], int]:
    """Each title wrapped to ``width``, and the height the tallest of them needs."""
    wrapped = [wrap_text(t, width - 2 * 2, font_size) for t in titles]
    return wrapped, max(len(w) for w in wrapped) * _line_height(_font(font_size)) + 4


def panels(images: Sequence[Image.Image], titles: Sequence[str] | None = None, gap: int = 4) -> Image.Image:
    """Images side by side (top-aligned, small ones enlarged), each under an optional title."""
    images = [enlarge(im.convert("RGB")) for im in images]
    font = _font(14)
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    wrapped, title_h = _titles(titles, min(im.width for im in images), 14) if titles else ([], 0)
    out = Image.new("RGB", (width, max(im.height for im in images) + title_h), WHITE)
    draw = ImageDraw.Draw(out)
    x = 0
    for i, im in enumerate(images):
        for k, line in enumerate(wrapped[i] if titles else ()):
            draw.text((x + 2, 2 + k * _line_height(font)), line, fill=BLACK, font=font)
        out.paste(im, (x, title_h))
        x += im.width + gap
    return out


_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_RAMP = np.array([[30, 30, 160], [40, 200, 220], [250, 230, 40], [220, 30, 30]], dtype=np.float32)


def colorize_heatmap(heat: torch.Tensor | np.ndarray) -> np.ndarray:
    """Values in [0, 1] → RGB uint8 (H, W, 3) on a blue-cyan-yellow-red ramp."""
    h = np.clip(np.asarray(heat.cpu() if isinstance(heat, torch.Tensor) else heat, dtype=np.float32), 0, 1)
    rgb = np.stack([np.interp(h, _STOPS, _RAMP[:, c]) for c in range(3)], axis=-1)
    return rgb.round().astype(np.uint8)


def colorbar(height: int, font_size: int = 13, bar_width: int = 16) -> Image.Image:
    """The heatmap colour ramp as a vertical bar (1 at the top, 0 at the bottom) with ticks."""
    font = _font(font_size)
    labels = ("1.0", "0.5", "0.0")
    width = bar_width + 3 * PAD + max(_text_width(t, font) for t in labels)
    img = Image.new("RGB", (width, height), WHITE)
    margin = max(PAD, _line_height(font) // 2 + 1)  # room for the half of a tick label beyond the bar
    inner = max(2, height - 2 * margin)
    values = np.linspace(1.0, 0.0, inner)[:, None].repeat(bar_width, axis=1)
    img.paste(Image.fromarray(colorize_heatmap(values)), (PAD, margin))
    draw = ImageDraw.Draw(img)
    draw.rectangle([PAD, margin, PAD + bar_width - 1, margin + inner - 1], outline=BLACK)
    for text, frac in zip(labels, (0.0, 0.5, 1.0)):
        y = margin + round(frac * (inner - 1))
        draw.line([PAD + bar_width, y, PAD + bar_width + 4, y], fill=BLACK)
        draw.text((2 * PAD + bar_width, y), text, fill=BLACK, font=font, anchor="lm")
    return img


def heatmap_grid(
    image: Image.Image,
    heatmaps: torch.Tensor | np.ndarray,
    titles: Sequence[str],
    columns: int = 4,
    alpha: float = 0.6,
    cell: int = MIN_SIZE,
    show_image: bool = True,
) -> Image.Image:
    """The image beside each heatmap (N, H, W) blended over it, in a titled grid with a colour
    bar (``show_image=False`` leaves the plain image's cell out)."""
    heatmaps = np.asarray(heatmaps.cpu() if isinstance(heatmaps, torch.Tensor) else heatmaps)
    scale = cell / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    base = image.convert("RGB").resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
    cells = [("image", base)] if show_image else []
    for title, heat in zip(titles, heatmaps):
        tint = Image.fromarray(colorize_heatmap(heat)).resize(size, Image.BILINEAR)
        cells.append((title, Image.blend(base, tint, alpha)))
    font, gap = _font(13), 4
    wrapped, title_h = _titles([t for t, _ in cells], size[0], 13)
    cols = max(1, min(columns, len(cells)))
    rows = -(-len(cells) // cols)
    grid_h = rows * (size[1] + title_h + gap)
    bar = colorbar(size[1])
    out = Image.new("RGB", (cols * (size[0] + gap) + bar.width, grid_h), WHITE)
    draw = ImageDraw.Draw(out)
    for i, (_, im) in enumerate(cells):
        x, y = (i % cols) * (size[0] + gap), (i // cols) * (size[1] + title_h + gap)
        for k, line in enumerate(wrapped[i]):
            draw.text((x + 2, y + 2 + k * _line_height(font)), line, fill=BLACK, font=font)
        out.paste(im, (x, y + title_h))
    out.paste(bar, (cols * (size[0] + gap), title_h))
    return out


SERIES_COLORS = [(70, 110, 200), (230, 120, 30), (60, 160, 90), (170, 70, 170)]


def score_bars(
    words: Sequence[str],
    scores: dict[str, Sequence[float]],
    selected: dict[str, Sequence[bool]],
    threshold: float | None = None,
    width: int = 2 * MIN_SIZE,
    font_size: int = 14,
) -> Image.Image:
    """Each word's score in [0, 1] as one horizontal bar per series (e.g. before / after TTD):
    solid when the word is selected, pale when not, with a dashed line at ``threshold``."""
    font = _font(font_size)
    step = _line_height(font)
    label_w = min(max((_text_width(w, font) for w in words), default=0), width // 3)
    labels = [wrap_text(w, label_w, font_size) for w in words]
    value_w = _text_width("0.00", font) + PAD
    x0 = PAD + label_w + PAD
    span = max(1, width - x0 - value_w - PAD)
    names = list(scores)
    keys = [*names, "pale: not selected"] + ([f"dashed: threshold {threshold:.2f}"] if threshold is not None else [])
    key = legend(keys, [*SERIES_COLORS[: len(names)], (225, 225, 225), (200, 30, 30)], width, font_size)
    bar_h = step - 2
    row_h = [max(len(lines) * step, len(names) * bar_h) + PAD for lines in labels]
    img = Image.new("RGB", (width, key.height + sum(row_h) + PAD), WHITE)
    img.paste(key, (0, 0))
    draw = ImageDraw.Draw(img)
    y = key.height
    for k, lines in enumerate(labels):
        for j, line in enumerate(lines):
            draw.text((PAD, y + j * step), line, fill=BLACK, font=font)
        for s, name in enumerate(names):
            value = float(np.clip(scores[name][k], 0.0, 1.0))
            color = SERIES_COLORS[s % len(SERIES_COLORS)]
            if not selected[name][k]:
                color = tuple(round(c + 0.65 * (255 - c)) for c in color)
            top = y + s * bar_h
            draw.rectangle([x0, top + 1, x0 + max(1, round(value * span)), top + bar_h - 1], fill=color)
            draw.text((x0 + round(value * span) + 4, top + bar_h // 2), f"{scores[name][k]:.2f}", fill=BLACK,
                      font=_font(font_size - 2), anchor="lm")
        y += row_h[k]
    if threshold is not None:
        tx = x0 + round(float(np.clip(threshold, 0.0, 1.0)) * span)
        for ty in range(key.height, img.height - PAD, 6):
            draw.line([tx, ty, tx, ty + 3], fill=(200, 30, 30))
    return img
