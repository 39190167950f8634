"""The JSONL manifest shared by training pairs, multi-tag selection and caption segmentation.

One JSON object per line; relative paths are relative to the manifest's folder::

    {"image": "images/0001.jpg", "caption": "woman spends time in a jacuzzi",
     "tags": ["woman", "jacuzzi"],                       # depicted words (multi-tag selection)
     "caption_mask": "masks/0001_caption.png",            # caption-level segmentation
     "tag_masks": {"woman": "masks/0001_woman.png"}}      # per-tag masks

Only ``image`` and ``caption`` are required; a task that needs another field says which record
lacks it. Masks are single-channel PNGs: non-zero = foreground, 255 = ignore.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TTDError

__all__ = ["ManifestRecord", "read_manifest", "write_manifest"]


@dataclass(frozen=True)
class ManifestRecord:
    image: Path
    caption: str
    tags: tuple[str, ...] | None = None
    caption_mask: Path | None = None
    tag_masks: dict[str, Path] = field(default_factory=dict)
    line: int = 0

    def require(self, name: str, manifest: str | os.PathLike = "manifest") -> None:
        """Raise a one-line error when a task needs a field this record lacks."""
        value = getattr(self, name)
        if value is None or value == {}:  # an empty tag list is a valid answer ("nothing depicted")
            raise TTDError(f"{manifest}:{self.line}: field {name!r} is required for this task but missing")


def _path(base: Path, value, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise TTDError(f"{where} must be a non-empty path string, got {value!r}")
    p = Path(value)
    return p if p.is_absolute() else base / p


def _record(obj, base: Path, where: str, line: int) -> ManifestRecord:
    if not isinstance(obj, dict):
        raise TTDError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("image", "caption"):
        if key not in obj:
            raise TTDError(f"{where}: missing required field {key!r}")
    caption = obj["caption"]
    if not isinstance(caption, str) or not caption.strip():
        raise TTDError(f"{where}: field 'caption' must be a non-empty string")
    tags = obj.get("tags")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        raise TTDError(f"{where}: field 'tags' must be a list of strings")
    tag_masks = obj.get("tag_masks") or {}
    if not isinstance(tag_masks, dict):
        raise TTDError(f"{where}: field 'tag_masks' must be an object mapping words to mask paths")
    return ManifestRecord(
        image=_path(base, obj["image"], f"{where}: field 'image'"),
        caption=caption,
        tags=tuple(tags) if tags is not None else None,
        caption_mask=_path(base, obj["caption_mask"], f"{where}: field 'caption_mask'") if obj.get("caption_mask") else None,
        tag_masks={w: _path(base, p, f"{where}: field 'tag_masks.{w}'") for w, p in tag_masks.items()},
        line=line,
    )


def read_manifest(path: str | os.PathLike, check_files: bool = True) -> list[ManifestRecord]:
    """Parse and validate a manifest; errors name the line and the field.

    With ``check_files`` every referenced image and mask must exist.
    """
    path = Path(path)
    if not path.is_file():
        raise TTDError(f"manifest not found: {path}")
    records = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise TTDError(f"manifest {path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise TTDError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
        rec = _record(obj, path.parent, where, line_no)
        if check_files:
            for name, p in [("image", rec.image), ("caption_mask", rec.caption_mask), *rec.tag_masks.items()]:
                if p is not None and not p.is_file():
                    raise TTDError(f"{where}: {name} file not found: {p}")
        records.append(rec)
    if not records:
        raise TTDError(f"manifest {path} has no records")
    return records


def write_manifest(records: list[dict], path: str | os.PathLike) -> Path:
    """Write dicts (paths as strings, relative to the manifest folder) as a JSONL manifest, atomically."""
    from ..io import atomic_write_bytes

    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return atomic_write_bytes(path, text.encode("utf-8"))
