"""Image reading across modes and its refusals; CLIP preprocessing."""

import numpy as np
import pytest
import torch
from PIL import Image

from ttd.errors import TTDError
from ttd.images import CLIP_MEAN, CLIP_STD, load_image, normalize, preprocess, resize_short_side, to_tensor


@pytest.mark.parametrize(
    "mode,array",
    [
        ("RGB", np.full((6, 8, 3), 200, np.uint8)),
        ("L", np.full((6, 8), 90, np.uint8)),
        ("I;16", np.full((6, 8), 65535, np.uint16)),  # Pillow infers I;16 from uint16
        ("F", np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)),
    ],
)
def test_modes_become_rgb(tmp_path, mode, array):
    path = tmp_path / ("x.tiff" if mode == "F" else "x.png")
    img = Image.fromarray(array) if mode == "I;16" else Image.fromarray(array, mode)
    assert img.mode == mode
    img.save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (8, 6)


def test_sixteen_bit_white_stays_white(tmp_path):
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "w.png")
    assert np.asarray(load_image(tmp_path / "w.png")).min() == 255


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2, :, :] = (255, 0, 0, 255)  # opaque red top half, transparent bottom
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    arr = np.asarray(load_image(tmp_path / "a.png"))
    assert arr[0, 0].tolist() == [255, 0, 0] and arr[3, 0].tolist() == [255, 255, 255]


def test_palette_and_cmyk(tmp_path):
    Image.new("P", (5, 5), 3).save(tmp_path / "p.png")
    Image.new("CMYK", (5, 5), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "p.png").mode == "RGB"
    r, g, b = np.asarray(load_image(tmp_path / "c.jpg"))[2, 2]
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (8, 4), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "o.jpg", exif=exif)
    assert load_image(tmp_path / "o.jpg").size == (4, 8)


def test_refusals(tmp_path):
    with pytest.raises(TTDError, match="image not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(TTDError, match="cannot read image .*text.png"):
        load_image(tmp_path / "text.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(TTDError, match="cannot read image .*cut.jpg"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(TTDError, match="decompression bomb"):
        load_image(tmp_path / "full.jpg", max_pixels=1000)


def test_preprocess_matches_manual_pipeline():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    x = preprocess(img, size=16)
    assert x.shape == (3, 16, 16)
    manual = resize_short_side(to_tensor(img), 16)[:, :, 5:21].clamp(0, 1)
    torch.testing.assert_close(x, normalize(manual, CLIP_MEAN, CLIP_STD))


def test_resize_short_side_respects_long_cap():
    x = torch.rand(3, 100, 400)
    assert resize_short_side(x, 50).shape[-2:] == (50, 200)
    assert resize_short_side(x, 50, max_long=100).shape[-2:] == (25, 100)
