"""The tests' one helper module: the tiny CLIP shape, tiny random models, image-text pairs, manifests and shards."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ttd
from ttd.models.clip import CLIPConfig

torch.set_num_threads(1)  # 2 shared cores: extra threads only contend

TINY = CLIPConfig(
    embed_dim=32, image_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=2,
    text_width=64, text_layers=2, text_heads=2,
)
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SHAPES = ("square", "stripe", "dot")


def tiny_model(dense: str = "maskclip", seed: int = 0, **overrides):
    """A tiny random dense model in eval mode, the same weights for the same seed."""
    torch.manual_seed(seed)
    return ttd.create_model(TINY, dense=dense, **overrides).eval()


def make_pairs(n: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """``n`` small JPEGs (a coloured shape on a coloured ground) with a caption naming both."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        fg, bg = rng.sample(sorted(COLOURS), 2)
        shape = rng.choice(SHAPES)
        arr = np.zeros((40, 48, 3), np.uint8) + np.array(COLOURS[bg], np.uint8)
        y, x = rng.randrange(0, 20), rng.randrange(0, 24)
        arr[y : y + 16, x : x + (24 if shape == "stripe" else 16)] = COLOURS[fg]
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        pairs.append((buf.getvalue(), f"a {fg} {shape} on a {bg} background."))
    return pairs


def write_manifest(root: Path, pairs, corrupt: tuple[int, ...] = ()) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (jpeg, caption) in enumerate(pairs):
        path = root / "images" / f"{i:04d}.jpg"
        path.write_bytes(jpeg[: len(jpeg) // 3] if i in corrupt else jpeg)
        lines.append(json.dumps({"image": f"images/{i:04d}.jpg", "caption": caption}))
    manifest = root / "pairs.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def write_shards(root: Path, pairs, per_shard: int, corrupt: tuple[int, ...] = (), caption_as: str = "txt") -> Path:
    """img2dataset's layout: ``00000.tar`` … with ``KEY.jpg`` + ``KEY.txt`` (or ``KEY.json``)."""
    root.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(pairs), per_shard):
        with tarfile.open(root / f"{start // per_shard:05d}.tar", "w") as tar:
            for i in range(start, min(start + per_shard, len(pairs))):
                jpeg, caption = pairs[i]
                key = f"{i:09d}"
                if i in corrupt:
                    jpeg = b"not a jpeg at all"
                text = caption.encode() if caption_as == "txt" else json.dumps({"caption": caption}).encode()
                for name, data in ((f"{key}.jpg", jpeg), (f"{key}.{caption_as}", text)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root
