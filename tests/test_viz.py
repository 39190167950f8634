"""Figures: small images are shown enlarged, texts are wrapped instead of cut, heatmaps carry a
colour bar, and any number of classes can be coloured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ttd.cli import main
from ttd.data.manifest import read_manifest
from ttd.evaluate.miniworld import SAMPLES_MANIFEST
from ttd.viz import (
    MIN_SIZE, colorize_heatmap, enlarge, heatmap_grid, legend, overlay, palette, panels, score_bars, with_legend,
    wrap_text,
)
from ttd.viz import _font, _text_width

SAMPLE = read_manifest(SAMPLES_MANIFEST)[0].image  # 64 × 64
LONG = "a very long class name that describes the blue background sky of this picture in great detail"


def _ink_columns(img: Image.Image) -> np.ndarray:
    """Indices of the columns holding any non-white pixel."""
    return np.nonzero((np.asarray(img.convert("L")) < 250).any(axis=0))[0]


def test_segment_overlay_of_a_64px_image_is_enlarged_with_nearest_pixels(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TTD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "overlay.png"
    argv = ["segment", str(SAMPLE), "--classes", f"pig,apple,{LONG}", "--model", "miniworld", "--protocol",
            "miniworld", "--out", str(out), "--heatmaps", str(tmp_path / "heat.png")]
    assert main(argv) == 0
    figure = np.asarray(Image.open(out).convert("RGB"))
    assert figure.shape[1] == MIN_SIZE and figure.shape[0] > MIN_SIZE  # 6 × 64 px, the legend below
    blocks = figure[:MIN_SIZE].reshape(64, 6, 64, 6, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # each source pixel is a crisp 6 × 6 block
    with Image.open(tmp_path / "heat.png") as heat:
        assert heat.height >= MIN_SIZE


def test_enlarge_uses_whole_factors_and_leaves_large_images_alone():
    assert enlarge(Image.new("RGB", (64, 20))).size == (384, 120)
    assert enlarge(Image.new("RGB", (100, 50))).size == (400, 200)
    big = Image.new("RGB", (500, 300))
    assert enlarge(big) is big


@pytest.mark.parametrize("width", [60, 200, 384])
def test_wrapped_text_keeps_every_character_and_fits(width):
    text = f"{LONG} and_an_unbreakable_word_longer_than_any_line_of_this_test"
    lines = wrap_text(text, width)
    font = _font(14)
    assert all(_text_width(line, font) <= width for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert len(lines) > 1


def test_legend_wraps_a_long_name_inside_its_width():
    short = legend(["cat"], [(255, 0, 0)], 384)
    tall = legend(["cat", LONG], [(255, 0, 0), (0, 0, 255)], 384)
    assert tall.width == 384 and tall.height >= short.height + 18  # one more line of text
    assert _ink_columns(tall).max() < 384 - 2  # nothing runs off the right edge
    figure = with_legend(Image.new("RGB", (64, 64), (0, 128, 0)), [LONG], [(0, 0, 255)])
    assert figure.width == MIN_SIZE and _ink_columns(figure.crop((0, MIN_SIZE, MIN_SIZE, figure.height))).max() < MIN_SIZE - 2


def test_panel_titles_wrap_over_lines_instead_of_being_cut():
    images = [Image.new("RGB", (64, 64), (0, 0, 0))] * 2
    one_line = panels(images, ["a", "b"])
    wrapped = panels(images, ["a", LONG])
    assert one_line.width == 2 * MIN_SIZE + 4
    assert wrapped.height > one_line.height  # the long title took more lines, not more width
    assert wrapped.width == one_line.width


def test_more_than_256_classes_get_their_own_colours():
    colors = palette(300)
    labels = torch.arange(300).reshape(15, 20)
    image = Image.new("RGB", (20, 15), (0, 0, 0))
    tinted = np.asarray(overlay(image, labels, colors, alpha=1.0))
    assert (tinted[12, 16] == colors[256]).all() and (tinted[14, 19] == colors[299]).all()
    assert (tinted[12, 15] == colors[255]).all()  # 255 is a class here, not "ignored"
    few = np.asarray(overlay(image, torch.full((15, 20), 255), palette(21), alpha=1.0))
    assert (few == 255).all()  # with 21 classes, 255 is the ignore label: white


def test_heatmap_grid_has_a_colour_bar_from_blue_to_red():
    grid = heatmap_grid(Image.new("RGB", (64, 64)), torch.rand(2, 64, 64), ["x", LONG])
    column = np.asarray(grid)[:, 3 * (MIN_SIZE + 4) + 6 + 8]  # through the middle of the bar
    ramp = column[(column != 255).any(axis=1)][1:-1].astype(int)  # inside its black outline
    assert len(ramp) > MIN_SIZE * 0.9
    assert np.abs(ramp[0] - colorize_heatmap(np.array(1.0))).max() <= 3  # red at the top
    assert np.abs(ramp[-1] - colorize_heatmap(np.array(0.0))).max() <= 3  # blue at the bottom
    assert grid.width > 3 * MIN_SIZE


def test_score_bars_draw_selected_words_solid_and_others_pale():
    chart = np.asarray(score_bars(["pig", "the"], {"before": [0.9, 0.4]}, {"before": [True, False]}, threshold=0.5))
    solid = (chart == (70, 110, 200)).all(axis=-1)
    pale = (chart == (190, 204, 236)).all(axis=-1)  # the series colour 65 % of the way to white
    assert solid.sum() > 0 and pale.sum() > 0
    assert np.nonzero(solid)[0].max() < np.nonzero(pale)[0].min()  # "pig" row above "the" row
    assert np.nonzero(solid)[1].max() > np.nonzero(pale)[1].max()  # 0.9 longer than 0.4
