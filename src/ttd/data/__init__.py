"""Datasets: JSONL manifests, image-text pairs, segmentation layouts, the mini-world builder."""

from .manifest import ManifestRecord, read_manifest, write_manifest
from .segmentation import SEGMENTATION_DATASETS, SegmentationDataset, load_segmentation_dataset

__all__ = ["ManifestRecord", "read_manifest", "write_manifest"]
__all__ += ["SEGMENTATION_DATASETS", "SegmentationDataset", "load_segmentation_dataset"]
