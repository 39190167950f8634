"""Dense models of the contract and dataset trees shared by the segmentation tests (tiny CLIPs: ``helpers``)."""

from __future__ import annotations

import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


class PixelDense(nn.Module):
    """A dense model of the contract whose patch features depend only on the patch's own pixels
    (8×8 average → linear map), so it commutes with mirroring; text is a hash-seeded vector."""

    patch = 8

    def __init__(self, embed_dim: int = 8):
        super().__init__()
        torch.manual_seed(1)
        self.proj = nn.Parameter(torch.randn(embed_dim, 3))
        self.bias = nn.Parameter(torch.randn(embed_dim))
        self.config = SimpleNamespace(embed_dim=embed_dim)
        self.logit_scale = torch.tensor(100.0)
        self.text_calls = 0

    @property
    def device(self):
        return self.proj.device

    def encode_image(self, images):
        pooled = F.avg_pool2d(images, self.patch)
        dense = F.normalize(torch.einsum("bchw,kc->bkhw", pooled, self.proj) + self.bias.view(1, -1, 1, 1), dim=1)
        return F.normalize(dense.mean(dim=(2, 3)), dim=-1), dense

    def encode_text(self, texts):
        self.text_calls += len(texts)
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(zlib.crc32(t.encode()))
            rows.append(torch.randn(self.config.embed_dim, generator=g))
        return F.normalize(torch.stack(rows), dim=-1)

    def similarity(self, dense, text):
        return torch.einsum("bchw,nc->bnhw", dense, text)

    def heatmap(self, dense, text):
        return torch.sigmoid(10 * self.similarity(dense, text) - 2.5)


# --- dataset trees ---------------------------------------------------------------------------
def write_image(path: Path, size=(40, 30), seed=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def write_label(path: Path, label: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label.astype(np.uint8), "L")
    if palette:
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def random_label(num_classes: int, size=(40, 30), seed=0, ignore: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, num_classes, (size[1], size[0]))
    if ignore:
        label[0, :5] = 255
    return label


# Expected trees written independently of the loaders' own layout tables.
TREES = {
    "voc21": ("VOCdevkit/VOC2012/JPEGImages/{}.jpg", "VOCdevkit/VOC2012/SegmentationClass/{}.png",
              "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt", 21),
    "voc20": ("VOCdevkit/VOC2012/JPEGImages/{}.jpg", "VOCdevkit/VOC2012/SegmentationClass/{}.png",
              "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt", 21),
    "context60": ("VOCdevkit/VOC2010/JPEGImages/{}.jpg", "VOCdevkit/VOC2010/SegmentationClassContext/{}.png",
                  "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt", 60),
    "context59": ("VOCdevkit/VOC2010/JPEGImages/{}.jpg", "VOCdevkit/VOC2010/SegmentationClassContext/{}.png",
                  "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt", 60),
    "coco_object": ("coco_stuff164k/images/val2017/{}.jpg", "coco_stuff164k/annotations/val2017/{}_instanceTrainIds.png", None, 81),
    "coco_stuff171": ("coco_stuff164k/images/val2017/{}.jpg", "coco_stuff164k/annotations/val2017/{}_labelTrainIds.png", None, 171),
    "cityscapes": ("cityscapes/leftImg8bit/val/frankfurt/{}_leftImg8bit.png",
                   "cityscapes/gtFine/val/frankfurt/{}_gtFine_labelTrainIds.png", None, 19),
    "ade20k": ("ade/ADEChallengeData2016/images/validation/{}.jpg",
               "ade/ADEChallengeData2016/annotations/validation/{}.png", None, 151),
}


def write_tree(name: str, root: Path, stems=("a", "b"), size=(40, 30)) -> dict[str, np.ndarray]:
    """Write the benchmark's tree under ``root``; returns the raw label arrays by stem."""
    image_t, label_t, split, raw_classes = TREES[name]
    labels = {}
    for i, stem in enumerate(stems):
        write_image(root / image_t.format(stem), size, seed=i)
        labels[stem] = random_label(raw_classes, size, seed=i)
        write_label(root / label_t.format(stem), labels[stem], palette=name.startswith("voc"))
    if split:
        (root / split).parent.mkdir(parents=True, exist_ok=True)
        (root / split).write_text("".join(f"{s}\n" for s in stems))
    return labels


def write_generic(root: Path, classes: list[str], count: int = 3, size=(40, 32)) -> dict[str, np.ndarray]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    labels = {}
    for i in range(count):
        stem = f"img{i}"
        write_image(root / "images" / f"{stem}.png", size, seed=10 + i)
        labels[stem] = random_label(len(classes), size, seed=10 + i)
        write_label(root / "masks" / f"{stem}.png", labels[stem])
    return labels
