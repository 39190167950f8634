"""Datasets: JSONL manifests, image-text pairs, segmentation layouts, the mini-world builder."""

from .manifest import ManifestRecord, read_manifest, write_manifest

__all__ = ["ManifestRecord", "read_manifest", "write_manifest"]
