"""Reading images of any mode safely, and CLIP preprocessing without torchvision."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps

from .errors import TTDError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_PIXELS",
    "load_image",
    "turn_like",
    "decode_image",
    "to_tensor",
    "normalize",
    "resize_short_side",
    "preprocess",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit, enforced as an error here


def _flatten_to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB: transparency composited on white, 16-bit and float rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) / max(hi - lo, 1e-12) * 255.0).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image as RGB with its EXIF orientation applied.

    Refuses, with a one-line :class:`TTDError`, files that are missing, not images, truncated, or
    larger than ``max_pixels`` (decompression bombs).
    """
    path = Path(path)
    if path.is_dir():
        raise TTDError(f"{path} is a folder, not an image; give an image file")
    if not path.is_file():
        raise TTDError(f"image {path} is a symbolic link to nothing (a loop, or a missing target); give an image file"
                       if path.is_symlink() else f"image not found: {path}")
    return _open_rgb(path, str(path), max_pixels)


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """:func:`load_image` for encoded bytes (a member of a tar shard); ``name`` goes in errors."""
    return _open_rgb(io.BytesIO(data), name, max_pixels)


def _open_rgb(source, name: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is max_pixels, checked below
            with Image.open(source) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise TTDError(
                        f"image {name} has {w}×{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                        "(a decompression bomb?); resize it or raise max_pixels"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                return _flatten_to_rgb(img)
    except TTDError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise TTDError(f"image {name} is too large to decode safely ({err}); resize it first") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise TTDError(f"cannot read image {name}: {err} (is it a complete image file?)") from None


# EXIF orientation → the turn of an (H, W) label that Pillow's exif_transpose gives its image
_TURNS = {
    2: lambda x: x.flip(1), 3: lambda x: x.flip(0, 1), 4: lambda x: x.flip(0), 5: lambda x: x.T,
    6: lambda x: torch.rot90(x, -1), 7: lambda x: x.flip(0, 1).T, 8: lambda x: torch.rot90(x, 1),
}


def turn_like(label: torch.Tensor, image_path: str | os.PathLike) -> torch.Tensor:
    """``label`` (H, W), drawn on the stored pixels of ``image_path``, turned by that file's EXIF
    orientation as :func:`load_image` turns the image, so the two stay aligned; a label not of the
    stored shape (drawn on the turned picture already) is left as it is."""
    try:
        with Image.open(image_path) as img:
            orientation, (w, h) = img.getexif().get(ExifTags.Base.Orientation, 1), img.size
    except (OSError, SyntaxError, ValueError):
        return label  # load_image reports an unreadable image
    if orientation not in _TURNS or tuple(label.shape) != (h, w):
        return label
    return _TURNS[orientation](label).contiguous()


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image → float tensor (3, H, W) in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def normalize(x: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """Per-channel (x − mean) / std for (3, H, W) or (B, 3, H, W) tensors in [0, 1]."""
    shape = (3, 1, 1)
    return (x - torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)) / torch.tensor(
        std, dtype=x.dtype, device=x.device
    ).view(shape)


def resize_short_side(
    x: torch.Tensor, short: float, max_long: float | None = None, mode: str = "bicubic"
) -> torch.Tensor:
    """Resize (…, 3, H, W) so the short side is ``short`` (``mode``: bicubic or bilinear,
    antialiased), keeping aspect; with ``max_long``, shrink further so the long side does not
    exceed it."""
    h, w = x.shape[-2:]
    scale = short / min(h, w)
    if max_long is not None:
        scale = min(scale, max_long / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    batched = x if x.ndim == 4 else x[None]
    out = F.interpolate(batched, size=size, mode=mode, align_corners=False, antialias=True)
    return out if x.ndim == 4 else out[0]


def preprocess(img: Image.Image, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """CLIP's evaluation transform: bicubic short-side resize, centre crop, normalise → (3, size, size)."""
    x = resize_short_side(to_tensor(img), size)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    x = x[:, top : top + size, left : left + size].clamp(0, 1)
    return normalize(x, mean, std)
