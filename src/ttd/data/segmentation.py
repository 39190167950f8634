"""Semantic-segmentation benchmarks in the folder layouts users already have (mmsegmentation's),
plus a generic layout for any other labelled image set.

Every loader checks its tree up front and refuses a wrong or partial layout with one line naming
the missing path and the expected tree, instead of failing hours into an evaluation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import TTDError
from ..images import load_image, turn_like
from ..vocabulary import BUILTIN_VOCABULARIES, Vocabulary

__all__ = [
    "SEGMENTATION_DATASETS",
    "SegmentationDataset",
    "SegmentationSample",
    "load_segmentation_dataset",
    "read_label",
]

IGNORE_INDEX = 255


@dataclass(frozen=True)
class Layout:
    """Where one benchmark keeps its validation images and label maps."""

    roots: tuple[str, ...]  # candidate dataset roots below the user's --root, tried in order
    image_dir: str
    label_dir: str
    image_suffix: str
    label_suffix: str
    split_file: str | None = None  # list of stems; without it, image_dir is searched recursively
    reduce_zero_label: bool = False
    tree: str = ""  # the expected tree, for error messages


_VOC = "VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/val.txt}"
_CONTEXT = "VOCdevkit/VOC2010/{JPEGImages/*.jpg, SegmentationClassContext/*.png, ImageSets/SegmentationContext/val.txt}"
_COCO = "coco_stuff164k/{images/val2017/*.jpg, annotations/val2017/*%s}"
_voc = dict(roots=("", "VOC2012", "VOCdevkit/VOC2012"), image_dir="JPEGImages", label_dir="SegmentationClass",
            image_suffix=".jpg", label_suffix=".png", split_file="ImageSets/Segmentation/val.txt", tree=_VOC)
_context = dict(roots=("", "VOC2010", "VOCdevkit/VOC2010"), image_dir="JPEGImages",
                label_dir="SegmentationClassContext", image_suffix=".jpg", label_suffix=".png",
                split_file="ImageSets/SegmentationContext/val.txt", tree=_CONTEXT)
_coco = dict(roots=("", "coco_stuff164k"), image_dir="images/val2017", label_dir="annotations/val2017",
             image_suffix=".jpg")

SEGMENTATION_DATASETS: dict[str, Layout] = {
    "voc21": Layout(**_voc),
    "voc20": Layout(**_voc, reduce_zero_label=True),
    "context60": Layout(**_context),
    "context59": Layout(**_context, reduce_zero_label=True),
    "coco_object": Layout(**_coco, label_suffix="_instanceTrainIds.png", tree=_COCO % "_instanceTrainIds.png"),
    "coco_stuff171": Layout(**_coco, label_suffix="_labelTrainIds.png", tree=_COCO % "_labelTrainIds.png"),
    "cityscapes": Layout(
        roots=("", "cityscapes"), image_dir="leftImg8bit/val", label_dir="gtFine/val",
        image_suffix="_leftImg8bit.png", label_suffix="_gtFine_labelTrainIds.png",
        tree="cityscapes/{leftImg8bit/val/CITY/*_leftImg8bit.png, gtFine/val/CITY/*_gtFine_labelTrainIds.png}",
    ),
    "ade20k": Layout(
        roots=("", "ADEChallengeData2016", "ade/ADEChallengeData2016"), image_dir="images/validation",
        label_dir="annotations/validation", image_suffix=".jpg", label_suffix=".png", reduce_zero_label=True,
        tree="ade/ADEChallengeData2016/{images/validation/*.jpg, annotations/validation/*.png}",
    ),
    "generic": Layout(
        roots=("",), image_dir="images", label_dir="masks", image_suffix=".jpg|.png", label_suffix=".png",
        tree="ROOT/{images/STEM.jpg|png, masks/STEM.png (uint8 class ids, 255 = ignore), classes.txt}",
    ),
}
assert set(SEGMENTATION_DATASETS) - {"generic"} == set(BUILTIN_VOCABULARIES)


@dataclass
class SegmentationSample:
    image: Image.Image
    label: torch.Tensor  # (H, W) int64 class ids, 255 = ignore
    name: str


def read_label(path: Path, reduce_zero_label: bool = False, image: Path | None = None) -> torch.Tensor:
    """A label PNG (palette or grey, 8 or 16 bit) → int64 class ids; with ``reduce_zero_label``
    0 becomes ignore (255) and every other id moves down by one (mmsegmentation's rule). Given the
    ``image`` it was drawn on, the label turns with that image's EXIF orientation."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise TTDError(
                    f"label {path} is a {img.mode} image; expected single-channel class ids (palette or grey PNG)"
                )
            label = np.array(img, dtype=np.int64)
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, TTDError):
            raise
        raise TTDError(f"cannot read label {path}: {err}") from None
    label = torch.from_numpy(label)
    if image is not None:
        label = turn_like(label, image)
    if reduce_zero_label:
        label = torch.where(label == 0, IGNORE_INDEX, label - 1)
        label[label == IGNORE_INDEX - 1] = IGNORE_INDEX
    return label


class SegmentationDataset(torch.utils.data.Dataset):
    """Validation pairs (image, label) of one benchmark, with its vocabulary."""

    def __init__(self, name: str, items: list[tuple[str, Path, Path]], vocabulary: Vocabulary, reduce_zero_label: bool):
        self.name = name
        self.items = items
        self.vocabulary = vocabulary
        self.reduce_zero_label = reduce_zero_label

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> SegmentationSample:
        stem, image_path, label_path = self.items[index]
        image = load_image(image_path)
        label = read_label(label_path, self.reduce_zero_label, image_path)
        if tuple(label.shape) != (image.height, image.width):
            raise TTDError(
                f"label {label_path} is {label.shape[1]}×{label.shape[0]} "
                f"but image {image_path} is {image.width}×{image.height}"
            )
        bad = (label != IGNORE_INDEX) & (label >= len(self.vocabulary))
        if bad.any():
            raise TTDError(
                f"label {label_path} holds class id {int(label[bad].max())} "
                f"but {self.name} has {len(self.vocabulary)} classes"
            )
        return SegmentationSample(image, label, stem)


def _missing(name: str, what: Path, layout: Layout) -> TTDError:
    return TTDError(f"dataset {name}: {what} not found; expected the tree {layout.tree} under --root")


def _dataset_root(name: str, root: Path, layout: Layout) -> Path:
    for candidate in layout.roots:
        base = root / candidate
        if (base / layout.image_dir).is_dir():
            return base
    return root


def _find_images(name: str, image_dir: Path, suffixes: list[str], label_suffix: str) -> tuple[list[Path], list[str]]:
    """The images under ``image_dir`` whose name ends in a suffix in any letter case (``A.PNG``), and
    their stems; two images with one stem (``a.jpg`` and ``a.png``) would score one mask twice."""
    found: dict[str, Path] = {}
    for path in sorted(image_dir.rglob("*")):
        suffix = next((s for s in suffixes if path.name.lower().endswith(s.lower())), None)
        if suffix is None or not path.is_file():
            continue
        stem = str(path.relative_to(image_dir))[: -len(suffix)]
        if stem in found:
            raise TTDError(f"dataset {name}: {found[stem]} and {path} share the mask {stem}{label_suffix}; keep one of them")
        found[stem] = path
    return list(found.values()), list(found)


def _list_items(name: str, base: Path, layout: Layout) -> list[tuple[str, Path, Path]]:
    image_dir, label_dir = base / layout.image_dir, base / layout.label_dir
    for needed in (image_dir, label_dir):
        if not needed.is_dir():
            raise _missing(name, needed, layout)
    suffixes = layout.image_suffix.split("|")
    if layout.split_file:
        split = base / layout.split_file
        if not split.is_file():
            raise _missing(name, split, layout)
        stems = [line.strip() for line in split.read_text().splitlines() if line.strip()]
        images = [image_dir / f"{stem}{suffixes[0]}" for stem in stems]
    else:
        images, stems = _find_images(name, image_dir, suffixes, layout.label_suffix)
    items = []
    for stem, image in zip(stems, images):
        label = label_dir / f"{stem}{layout.label_suffix}"
        for path in (image, label):
            if not path.is_file():
                raise _missing(name, path, layout)
        items.append((stem, image, label))
    if not items:
        raise TTDError(f"dataset {name}: no images in {image_dir}; expected the tree {layout.tree} under --root")
    return items


def load_segmentation_dataset(name: str, root: str | os.PathLike) -> SegmentationDataset:
    """One of ``voc21 voc20 context60 context59 coco_object coco_stuff171 cityscapes ade20k``
    (mmsegmentation layouts; ``root`` may be the dataset folder or a folder above it) or
    ``generic`` (``ROOT/images``, ``ROOT/masks``, ``ROOT/classes.txt``)."""
    if name not in SEGMENTATION_DATASETS:
        raise TTDError(f"unknown dataset {name!r}; choose one of {', '.join(SEGMENTATION_DATASETS)}")
    layout = SEGMENTATION_DATASETS[name]
    root = Path(root)
    if not root.is_dir():
        raise TTDError(f"dataset root not found: {root}")
    base = _dataset_root(name, root, layout)
    if name == "generic":
        classes = base / "classes.txt"
        if not classes.is_file():
            raise _missing(name, classes, layout)
        vocabulary = Vocabulary.from_file(classes)
    else:
        vocabulary = Vocabulary.builtin(name)
    return SegmentationDataset(name, _list_items(name, base, layout), vocabulary, layout.reduce_zero_label)
