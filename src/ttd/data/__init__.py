"""Datasets: JSONL manifests, image-text pairs, segmentation layouts, the mini-world builder."""

from .manifest import ManifestRecord, read_manifest, write_manifest
from .miniworld import MiniWorldConfig, build_miniworld
from .segmentation import SEGMENTATION_DATASETS, SegmentationDataset, load_segmentation_dataset

__all__ = [
    "ManifestRecord",
    "read_manifest",
    "write_manifest",
    "MiniWorldConfig",
    "build_miniworld",
    "SEGMENTATION_DATASETS",
    "SegmentationDataset",
    "load_segmentation_dataset",
]
