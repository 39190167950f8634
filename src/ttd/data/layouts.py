"""The TTD authors' dataset folders (their README), read as they are.

Segmentation sets: ``ROOT/{VOC2012,COCO2014,PascalContext,ADE2016,Cityscapes,COCO-Stuff}/
validation/{image,mask,xml}/``: an image ``image/STEM.jpg`` and its label ``mask/STEM.png`` (class
ids, 255 = ignore, the convention of the same authors' earlier code); ``xml/`` (VOC-style tag
lists) is not needed for evaluation and not read.

CC3M-TagMask: ``cc3m_for_evaluation/{image,json_refined,mask_using_HQ-SAM}/``: ``image/STEM.jpg``,
``json_refined/STEM.json`` (the caption and its ground-truth tags) and ``mask_using_HQ-SAM/STEM.png``
(the caption's mask, non-zero = depicted, 255 = ignore).

What the public README does not show (the label ids inside ``mask/``, the JSON field names, the
mask encoding of CC3M-TagMask) is assumed as written in docs/segmentation.md; every assumption is
checked per file, and a file that breaks one stops the run with one line naming it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import TTDError
from ..vocabulary import Vocabulary
from .manifest import ManifestRecord, read_manifest
from .segmentation import (
    SEGMENTATION_DATASETS,
    Layout,
    SegmentationDataset,
    _dataset_root,
    _list_items,
    load_segmentation_dataset,
)

__all__ = [
    "TTD_FOLDERS",
    "SEGMENTATION_LAYOUTS",
    "detect_layout",
    "load_dataset",
    "load_ttd_segmentation",
    "read_tagmask",
    "read_records",
]

# ``--dataset`` → the authors' folder name (their README's list).
TTD_FOLDERS = {
    "voc21": "VOC2012",
    "voc20": "VOC2012",
    "coco_object": "COCO2014",
    "context60": "PascalContext",
    "context59": "PascalContext",
    "ade20k": "ADE2016",
    "cityscapes": "Cityscapes",
    "coco_stuff171": "COCO-Stuff",
}
SEGMENTATION_LAYOUTS = ("auto", "mmseg", "ttd")
SPLIT = "validation"


def _ttd_layout(name: str) -> Layout:
    folder = TTD_FOLDERS[name]
    return Layout(
        roots=(f"{folder}/{SPLIT}", SPLIT, ""),
        image_dir="image",
        label_dir="mask",
        image_suffix=".jpg|.png",
        label_suffix=".png",
        reduce_zero_label=SEGMENTATION_DATASETS[name].reduce_zero_label,
        tree=f"{folder}/{SPLIT}/{{image/STEM.jpg, mask/STEM.png, xml/}}",
    )


def detect_layout(name: str, root: str | os.PathLike) -> str:
    """``ttd`` when ``root`` (or its ``FOLDER/validation``) holds ``image/``, else ``mmseg`` (a
    missing ``mask/`` is then reported against the authors' tree, where it belongs)."""
    if name not in TTD_FOLDERS:
        return "mmseg"
    root = Path(root)
    layout = _ttd_layout(name)
    base = _dataset_root(name, root, layout)
    return "ttd" if (base / "image").is_dir() else "mmseg"


def load_ttd_segmentation(name: str, root: str | os.PathLike) -> SegmentationDataset:
    """One benchmark in the authors' layout; ``root`` is the folder holding ``VOC2012/`` etc.,
    the dataset folder, or its ``validation/`` folder."""
    if name not in TTD_FOLDERS:
        raise TTDError(f"dataset {name} has no TTD-layout folder; the TTD layout holds {', '.join(sorted(TTD_FOLDERS))}")
    root = Path(root)
    if not root.is_dir():
        raise TTDError(f"dataset root not found: {root}")
    layout = _ttd_layout(name)
    base = _dataset_root(name, root, layout)
    return SegmentationDataset(name, _list_items(name, base, layout), Vocabulary.builtin(name), layout.reduce_zero_label)


def load_dataset(name: str, root: str | os.PathLike, layout: str = "auto") -> SegmentationDataset:
    """``ttd eval seg``'s dataset: ``layout`` ``mmseg`` (mmsegmentation's trees, and ``generic``),
    ``ttd`` (the authors' trees) or ``auto`` (``ttd`` when an ``image/`` folder is there)."""
    if layout not in SEGMENTATION_LAYOUTS:
        raise TTDError(f"unknown layout {layout!r}; choose one of: {', '.join(SEGMENTATION_LAYOUTS)}")
    if layout == "auto" and Path(root).is_dir():
        layout = detect_layout(name, root)
    if layout == "ttd":
        return load_ttd_segmentation(name, root)
    return load_segmentation_dataset(name, root)


# --- CC3M-TagMask ------------------------------------------------------------------------------
TAGMASK_TREE = "cc3m_for_evaluation/{image/STEM.jpg, json_refined/STEM.json, mask_using_HQ-SAM/STEM.png}"
_TAGMASK_DIRS = ("image", "json_refined", "mask_using_HQ-SAM")


def read_tagmask(root: str | os.PathLike, masks: bool = False) -> list[ManifestRecord]:
    """CC3M-TagMask as manifest records (image, caption, tags, caption_mask), sorted by name.

    ``json_refined/STEM.json`` must be an object with ``caption`` (a string) and ``tags`` (a list
    of strings). ``masks``: every image must have ``mask_using_HQ-SAM/STEM.png`` (caption
    segmentation); without it masks are attached where present (tag selection needs none).
    """
    root = Path(root)
    if (root / "cc3m_for_evaluation").is_dir():
        root = root / "cc3m_for_evaluation"
    for folder in _TAGMASK_DIRS if masks else _TAGMASK_DIRS[:2]:
        if not (root / folder).is_dir():
            raise TTDError(f"CC3M-TagMask: {root / folder} not found; expected the tree {TAGMASK_TREE}")
    records = []
    for line, path in enumerate(sorted((root / "json_refined").glob("*.json")), 1):
        stem = path.stem
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise TTDError(f"cannot read {path}: {err}") from None
        if not isinstance(obj, dict):
            raise TTDError(f"{path}: expected a JSON object with 'caption' and 'tags'")
        caption, tags = obj.get("caption"), obj.get("tags")
        if not isinstance(caption, str) or not caption.strip() or not (
            isinstance(tags, list) and all(isinstance(t, str) for t in tags)
        ):
            keys = ", ".join(map(str, obj)) or "none"
            raise TTDError(
                f"{path}: expected a string 'caption' and a list of strings 'tags' (its keys: {keys}); "
                "convert the file or write a JSONL manifest (docs/segmentation.md)"
            )
        image = next((root / "image" / f"{stem}{s}" for s in (".jpg", ".png") if (root / "image" / f"{stem}{s}").is_file()), None)
        if image is None:
            raise TTDError(f"CC3M-TagMask: {root / 'image' / stem}.jpg not found (named by {path}); expected the tree {TAGMASK_TREE}")
        mask = root / "mask_using_HQ-SAM" / f"{stem}.png"
        if masks and not mask.is_file():
            raise TTDError(f"CC3M-TagMask: {mask} not found (the caption mask of {path}); expected the tree {TAGMASK_TREE}")
        records.append(ManifestRecord(image, caption, tuple(tags), mask if mask.is_file() else None, line=line))
    if not records:
        raise TTDError(f"CC3M-TagMask: no JSON files in {root / 'json_refined'}; expected the tree {TAGMASK_TREE}")
    return records


def read_records(data: str | os.PathLike, masks: bool = False) -> list[ManifestRecord]:
    """``--data`` of ``ttd eval tags|caption``: a JSONL manifest, or the authors' CC3M-TagMask folder."""
    return read_tagmask(data, masks) if Path(data).is_dir() else read_manifest(data)
