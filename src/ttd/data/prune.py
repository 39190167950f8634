"""Sample-level pruning (METHOD §5.5): score every pair once, keep the best-aligned fraction.

The score of a pair is the cosine of its global image embedding and its caption embedding.
Scores are saved in chunks (manifest: every ``chunk`` records; shards: one file per shard) in a
folder beside the output, each written atomically, so an interrupted run picks up where it
stopped. The folder is keyed by a digest of the inputs (the manifest's content or the shards'
names, sizes and times, the model's weights, the scoring resolution): a rerun with other inputs
rescores instead of reusing stale scores. A manifest gives a new manifest of the kept pairs (original order, ``score`` added); shards
give a keep-list of sample keys for ``ttd train --keep``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import TTDError, TTDFailure
from ..cache import weights_fingerprint
from ..io import atomic_write_bytes, file_digest, files_digest, inputs_digest, save_json
from ..models.dense import DenseCLIP
from ..models.tokenizer import tokenize
from .manifest import read_manifest, write_manifest
from .pairs import PairBatch, check_data, collate_pairs, identity, ManifestPairs, decode_pair, is_manifest, list_shards

__all__ = ["PruneResult", "pair_scores", "check_prune_args", "scores_dir", "prune"]


@dataclass
class PruneResult:
    out: Path
    scored: int
    kept: int
    skipped: int
    threshold: float


@torch.no_grad()
def pair_scores(model: DenseCLIP, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Cosine of global image and caption embeddings, (B,). Text is not cached (captions repeat rarely)."""
    if not captions:
        return torch.empty(0)
    device = model.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        global_emb, _ = model.encode_image(images.to(device, non_blocking=True))
        text = model.encode_tokens(tokenize(captions, model.config.context_length))
    return (global_emb.float() * text.float()).sum(dim=-1).cpu()


class _ShardBatches(IterableDataset):
    """Per loader worker, whole shards in order, as (shard index, batch, last batch of the shard)."""

    def __init__(self, shards: list[tuple[int, str]], batch_size: int, size: int):
        self.shards, self.batch_size, self.size = shards, batch_size, size

    def __iter__(self) -> Iterator[tuple[int, PairBatch, bool]]:
        import webdataset as wds

        info = get_worker_info()
        mine = self.shards[info.id :: info.num_workers] if info else self.shards
        for index, url in mine:
            broken = [0]

            def handler(err, broken=broken):
                broken[0] += 1
                return True

            items = []
            for raw in wds.tarfile_samples([{"url": url}], handler=handler):
                try:
                    image, caption = decode_pair(raw, self.size)
                    items.append((image, caption, raw["__key__"]))
                except TTDError:
                    items.append(None)
                if len(items) == self.batch_size:
                    yield index, collate_pairs(items, self.size), False
                    items = []
            batch = collate_pairs(items, self.size)
            batch.skipped += broken[0]
            yield index, batch, True


def scores_dir(out: Path) -> Path:
    """The folder of saved scores beside the output (``ttd data prune`` locks it while it writes)."""
    return out.with_name(out.name + ".scores")


def _score_manifest(data: str, folder: Path, model, batch_size: int, workers: int, size: int, chunk: int, bar):
    records = read_manifest(data, check_files=False)
    bar.reset(total=len(records))
    batches, owner = [], []  # the batches still to score, and the chunk each belongs to
    todo = []
    for start in range(0, len(records), chunk):
        end = min(start + chunk, len(records))
        path = folder / f"chunk_{start // chunk:06d}.json"
        if path.is_file():
            bar.update(end - start)
            continue
        todo.append({"path": path, "start": start, "end": end, "lines": [], "scores": [], "skipped": 0})
        for s in range(start, end, batch_size):
            batches.append(list(range(s, min(s + batch_size, end))))
            owner.append(len(todo) - 1)
    loader = DataLoader(
        ManifestPairs(records, size), batch_sampler=batches, num_workers=workers, collate_fn=partial(collate_pairs, size=size)
    )
    for b, batch in enumerate(loader):
        part = todo[owner[b]]
        part["lines"] += [int(k) for k in batch.keys]
        part["scores"] += pair_scores(model, batch.images, batch.captions).tolist()
        part["skipped"] += batch.skipped
        bar.update(len(batch) + batch.skipped)
        if b + 1 == len(owner) or owner[b + 1] != owner[b]:  # the chunk's last batch
            save_json({k: v for k, v in part.items() if k != "path"}, part["path"])
    parts = [json.loads(p.read_text()) for p in sorted(folder.glob("chunk_*.json"))]
    by_line = {rec.line: rec for rec in records}
    scored = [{"record": by_line[line], "score": score} for p in parts for line, score in zip(p["lines"], p["scores"])]
    return scored, sum(p["skipped"] for p in parts)


def _score_shards(data: str, folder: Path, model, batch_size: int, workers: int, size: int, bar):
    shards = list_shards(data)
    names = {i: folder / f"shard_{i:06d}.json" for i in range(len(shards))}
    todo = [(i, url) for i, url in enumerate(shards) if not names[i].is_file()]
    bar.reset(total=len(shards))
    bar.unit = "shard"
    bar.update(len(shards) - len(todo))
    loader = DataLoader(
        _ShardBatches(todo, batch_size, size), batch_size=None, num_workers=min(workers, len(todo)), collate_fn=identity
    )
    partial_results: dict[int, dict] = {}
    for index, batch, last in loader:
        entry = partial_results.setdefault(index, {"shard": shards[index], "keys": [], "scores": [], "skipped": 0})
        entry["keys"] += batch.keys
        entry["scores"] += pair_scores(model, batch.images, batch.captions).tolist()
        entry["skipped"] += batch.skipped
        if last:
            save_json(partial_results.pop(index), names[index])
            bar.update(1)
    parts = [json.loads(p.read_text()) for p in sorted(folder.glob("shard_*.json"))]
    return [{"key": k, "score": s} for p in parts for k, s in zip(p["keys"], p["scores"])], sum(p["skipped"] for p in parts)


def check_prune_args(data: str, keep_fraction: float, batch_size: int, image_size: int = 224, workers: int = 0) -> None:
    """One-line errors for bad arguments, before a model is loaded."""
    if not 0 < keep_fraction <= 1:
        raise TTDError(f"keep fraction must lie in (0, 1], got {keep_fraction}")
    for name, value, least in (("batch size", batch_size, 1), ("image size", image_size, 8), ("workers", workers, 0)):
        if value < least:
            raise TTDError(f"{name} must be at least {least}, got {value}")
    check_data(data)


def _scores_key(data: str, model: DenseCLIP, image_size: int, chunk: int) -> str:
    """The digest of everything a saved score depends on."""
    if is_manifest(data):
        source = file_digest(data)
    else:
        shards = list_shards(data)  # too large to hash: their names, sizes and times (URLs: their names)
        source = files_digest(shards) if all(os.path.isfile(url) for url in shards) else shards
    return inputs_digest("prune", source, weights_fingerprint(model), getattr(model, "name", ""), image_size, chunk)


def _open_scores(folder: Path, key: str) -> None:
    """Keep the saved scores only if they were computed from the same inputs (``key``)."""
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "key.json"
    try:
        saved = json.loads(key_file.read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        saved = None
    stale = [*folder.glob("chunk_*.json"), *folder.glob("shard_*.json")]
    if saved != key:
        if stale:
            print(f"ttd data prune: warning: the scores in {folder} were computed from other data, model or settings; rescoring",
                  file=sys.stderr)
        for p in stale:
            p.unlink()
        save_json({"key": key}, key_file)


def prune(
    data: str,
    out: str | os.PathLike,
    model: DenseCLIP,
    keep_fraction: float = 0.5,
    batch_size: int = 256,
    workers: int = 4,
    image_size: int = 224,
    chunk: int = 4096,
    progress: bool = True,
) -> PruneResult:
    """Score every pair of ``data`` with ``model`` and write the top ``keep_fraction`` to ``out``."""
    from tqdm.auto import tqdm

    check_prune_args(data, keep_fraction, batch_size, image_size, workers)
    out = Path(out)
    folder = scores_dir(out)
    model.config.check_input_size(image_size)
    _open_scores(folder, _scores_key(data, model, image_size, chunk))
    model.eval()
    with tqdm(total=0, unit="pair", disable=not progress, dynamic_ncols=True, desc="scoring") as bar:
        if is_manifest(data):
            scored, skipped = _score_manifest(data, folder, model, batch_size, workers, image_size, chunk, bar)
        else:
            scored, skipped = _score_shards(data, folder, model, batch_size, workers, image_size, bar)
    if not scored:
        raise TTDFailure(f"no readable pairs in {data} ({skipped:,} skipped); check the image paths and files it names")
    keep = math.ceil(keep_fraction * len(scored))
    ranked = sorted(range(len(scored)), key=lambda i: -scored[i]["score"])[:keep]
    threshold = scored[ranked[-1]]["score"]
    kept = sorted(ranked)
    if is_manifest(data):
        base = os.path.abspath(out.parent)
        rows = [
            {
                "image": os.path.relpath(os.path.abspath(scored[i]["record"].image), base),
                "caption": scored[i]["record"].caption,
                "score": round(scored[i]["score"], 6),
            }
            for i in kept
        ]
        write_manifest(rows, out)
    else:
        atomic_write_bytes(out, "".join(scored[i]["key"] + "\n" for i in kept).encode())
    return PruneResult(out, len(scored), len(kept), skipped, threshold)
