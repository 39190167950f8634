"""Image-caption pairs for training: WebDataset shards or a JSONL manifest.

Both sources are split across processes (ranks) and loader workers in an order fixed by the seed,
and :class:`PairLoader` records how far each stream got, so a resumed run reads exactly the
batches the interrupted run would have read next.

* **Manifest** (``*.jsonl``, :func:`ttd.data.manifest.read_manifest`): random access. Every epoch is
  one permutation of all records (seeded by seed and epoch); global batch ``s`` holds positions
  ``s·B … s·B + B − 1`` of that sequence and rank ``r`` takes its contiguous ``B / world`` slice.
  So one process with batch B and two with B/2 each see the same samples at every step.
* **Shards** (img2dataset's ``NNNNN.tar`` with ``KEY.jpg`` + ``KEY.txt`` / ``KEY.json``): streamed.
  Every epoch is one permutation of the shards; rank ``r`` takes every ``world``-th shard and
  loader worker ``w`` every ``workers``-th of those; samples are shuffled inside a shard with a
  bounded buffer that restarts at each shard, so a worker's position is (epoch, shard, sample).

``webdataset`` reads the tar streams and groups members by key (local files, ``pipe:`` and URLs
alike). Its ``WebDataset`` pipeline is not used as a whole: its shard and sample shuffles draw
from unrecorded random states, which would make exact resumption impossible.

A sample that cannot be read (corrupt image, no caption, broken tar member) is skipped and
counted, never fatal; the trainer logs the count.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from ..errors import TTDError
from ..images import decode_image, load_image, preprocess
from .manifest import read_manifest

__all__ = [
    "IMAGE_EXTENSIONS",
    "PairBatch",
    "PairLoader",
    "ManifestPairs",
    "collate_pairs",
    "check_data",
    "list_shards",
    "is_manifest",
    "decode_pair",
    "read_keep_list",
    "decode_labels",
    "preprocess_labels",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
_REMOTE = ("pipe:", "http://", "https://", "s3://", "gs://", "hf://")


@dataclass
class PairBatch:
    """A batch of preprocessed images (B, 3, S, S), their captions and sample keys.

    ``skipped`` counts unreadable samples: in a manifest batch, those dropped from this batch; in
    a shard batch, all those its worker has met so far. ``position`` is the loader's bookkeeping.
    With ``labels=True`` (shards only) ``labels`` holds each image's class-id map (B, S, S) from
    ``KEY.seg.png`` and ``label_words`` each sample's ``classes`` (caption word → class id).
    """

    images: torch.Tensor
    captions: list[str]
    keys: list[str]
    skipped: int = 0
    position: dict = field(default_factory=dict)
    labels: torch.Tensor | None = None
    label_words: list[dict[str, int]] | None = None

    def __len__(self) -> int:
        return len(self.captions)

    def pin_memory(self) -> PairBatch:
        return replace(self, images=self.images.pin_memory())


# --- sources ----------------------------------------------------------------------------------
def is_manifest(spec: str) -> bool:
    return str(spec).lower().endswith((".jsonl", ".json"))


def list_shards(spec: str) -> list[str]:
    """Shard paths from a spec: a folder (its ``*.tar``), a glob, a brace pattern
    (``data/{00000..00099}.tar``), a remote URL or ``pipe:`` command, or several joined by ``::``."""
    import webdataset as wds

    shards: list[str] = []
    for item in wds.shardlists.expand_urls(str(spec)):
        if item.startswith(_REMOTE):
            shards.append(item)
        elif os.path.isdir(item):
            shards.extend(sorted(glob.glob(os.path.join(item, "*.tar"))))
        elif glob.has_magic(item):
            shards.extend(sorted(glob.glob(item)))
        elif os.path.isfile(item):
            shards.append(item)
        else:
            raise TTDError(f"shard not found: {item}")
    if not shards:
        raise TTDError(f"no shards match {spec!r}; pass a folder of .tar files, a glob or a brace pattern")
    return shards


def check_data(spec: str) -> None:
    """Fail early (before a model loads) when the data a run names does not exist."""
    if is_manifest(spec):
        if not Path(spec).is_file():
            raise TTDError(f"manifest not found: {spec}")
    else:
        list_shards(spec)


def read_keep_list(path: str | os.PathLike) -> frozenset[str]:
    """Sample keys to keep (one per line), as ``ttd data prune`` writes them for shards."""
    path = Path(path)
    if not path.is_file():
        raise TTDError(f"keep-list not found: {path}")
    keys = frozenset(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not keys:
        raise TTDError(f"keep-list {path} is empty")
    return keys


def _caption(sample: dict, where: str) -> str:
    text = None
    if "txt" in sample:
        text = sample["txt"].decode("utf-8", errors="replace")
    elif "json" in sample:
        try:
            text = json.loads(sample["json"]).get("caption")
        except (ValueError, AttributeError):
            raise TTDError(f"{where}: invalid JSON metadata") from None
    if not isinstance(text, str) or not text.strip():
        raise TTDError(f"{where}: no caption (expected KEY.txt or a 'caption' field in KEY.json)")
    return text.strip()


def decode_pair(sample: dict, size: int) -> tuple[torch.Tensor, str]:
    """A webdataset sample (``{"__key__", "jpg", "txt", …}``) → (image (3, size, size), caption)."""
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise TTDError(f"{where}: no image member (expected one of .{', .'.join(IMAGE_EXTENSIONS)})")
    caption = _caption(sample, where)
    return preprocess(decode_image(sample[ext], f"{where}.{ext}"), size), caption


def preprocess_labels(img: Image.Image, size: int) -> torch.Tensor:
    """A class-id map → (size, size) long, with the geometry of :func:`ttd.images.preprocess`
    (short-side resize, centre crop) but nearest-neighbour, so ids stay ids."""
    w, h = img.size
    scale = size / min(h, w)
    rh, rw = max(1, round(h * scale)), max(1, round(w * scale))
    x = torch.from_numpy(np.asarray(img.resize((rw, rh), Image.NEAREST), dtype=np.int64).copy())
    top, left = (rh - size) // 2, (rw - size) // 2
    return x[top : top + size, left : left + size]


def decode_labels(sample: dict, size: int) -> tuple[torch.Tensor, dict[str, int]]:
    """The object masks of a mini-world sample: ``KEY.seg.png`` (class ids, 0 = background) →
    (size, size) long, and ``classes`` of ``KEY.json`` (caption word → class id)."""
    where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    if "seg.png" not in sample or "json" not in sample:
        raise TTDError(f"{where}: no object masks (expected KEY.seg.png and 'classes' in KEY.json, as `ttd data miniworld` writes)")
    try:
        classes = json.loads(sample["json"])["classes"]
        img = Image.open(io.BytesIO(sample["seg.png"]))
        img.load()
    except (ValueError, KeyError, TypeError, OSError):
        raise TTDError(f"{where}: unreadable object masks (KEY.seg.png or 'classes' in KEY.json)") from None
    if img.mode not in ("L", "P"):
        raise TTDError(f"{where}: KEY.seg.png must be a single-channel class-id image, not {img.mode}")
    return preprocess_labels(img, size), {str(k): int(v) for k, v in classes.items()}


# --- manifest: random access ------------------------------------------------------------------
class ManifestPairs(Dataset):
    """Manifest records → (image, caption, line) or None when the image cannot be read."""

    def __init__(self, records, size: int):
        self.records, self.size = records, size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        rec = self.records[i]
        try:
            return preprocess(load_image(rec.image), self.size), rec.caption, str(rec.line)
        except TTDError as err:
            log.debug("skipping sample: %s", err)
            return None


class _GlobalBatches(Sampler):
    """This rank's slice of every global batch, from ``start_step`` on, epoch after epoch."""

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int, shuffle: bool, start_step: int, epochs: int | None):
        self.n, self.global_batch, self.local = n, global_batch, global_batch // world
        self.rank, self.seed, self.shuffle = rank, seed, shuffle
        self.start_step, self.epochs = start_step, epochs
        self._epoch, self._order = -1, None

    def _record(self, position: int) -> int:
        epoch = position // self.n
        if epoch != self._epoch:
            self._epoch = epoch
            if self.shuffle:
                self._order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            else:
                self._order = torch.arange(self.n)
        return int(self._order[position % self.n])

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        end = None if self.epochs is None else self.epochs * self.n
        while True:
            first = step * self.global_batch + self.rank * self.local
            last = first + self.local if end is None else min(first + self.local, end)
            if end is not None and first >= end:
                return
            yield [self._record(p) for p in range(first, last)]
            step += 1


def collate_pairs(items, size: int) -> PairBatch:
    """Stack readable items into a batch; unreadable ones (None) are dropped and counted."""
    good = [item for item in items if item is not None]
    images = torch.stack([g[0] for g in good]) if good else torch.empty(0, 3, size, size)
    return PairBatch(images, [g[1] for g in good], [g[2] for g in good], skipped=len(items) - len(good))


# --- shards: streamed -------------------------------------------------------------------------
class _ShardStream(IterableDataset):
    """Batches from this rank's shards, per loader worker, resumable at (epoch, shard, sample).

    ``start`` maps a logical worker id to its position; ``rotation`` makes loader worker 0 play
    logical worker ``rotation``, so the round-robin order of the interrupted run continues.
    """

    def __init__(self, shards, local_batch, size, seed, rank, world, workers, shuffle, buffer, epochs, keep, start, rotation, labels=False):
        self.shards, self.local_batch, self.size, self.seed = shards, local_batch, size, seed
        self.labels = labels
        self.rank, self.world, self.workers = rank, world, workers
        self.shuffle, self.buffer, self.epochs, self.keep = shuffle, buffer, epochs, keep
        self.start, self.rotation = start, rotation

    def _my_shards(self, epoch: int, worker: int) -> list[str]:
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order[self.rank :: self.world][worker :: self.workers]

    def _shard_samples(self, url: str, epoch: int, counter: list[int]) -> Iterator[dict]:
        """Raw samples of one shard, keep-list applied, shuffled by a buffer that empties at its end."""
        import webdataset as wds

        def handler(err: Exception) -> bool:
            counter[0] += 1
            log.warning("skipping unreadable data in %s: %s", url, str(err).splitlines()[0][:200])
            return True

        rng = random.Random(f"{self.seed}:{epoch}:{url}")
        buffer: list[dict] = []
        for raw in wds.tarfile_samples([{"url": url}], handler=handler):
            if self.keep is not None and raw["__key__"] not in self.keep:
                continue
            if not self.shuffle:
                yield raw
                continue
            buffer.append(raw)
            if len(buffer) >= self.buffer:
                yield _pop_random(buffer, rng)
        while buffer:
            yield _pop_random(buffer, rng)

    def __iter__(self) -> Iterator[PairBatch]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        worker = (physical + self.rotation) % self.workers
        pos = self.start.get(worker, {"epoch": 0, "shard": 0, "sample": 0, "skipped": 0})
        epoch, skipped = pos["epoch"], [pos["skipped"]]
        first_shard, first_sample = pos["shard"], pos["sample"]
        images, captions, keys, labels, words = [], [], [], [], []
        while self.epochs is None or epoch < self.epochs:
            shards = self._my_shards(epoch, worker)
            whole_epoch, good_in_epoch = (first_shard, first_sample) == (0, 0), 0
            for s in range(first_shard, len(shards)):
                replaying = first_sample > 0  # re-reading (not decoding) what was consumed before
                for i, raw in enumerate(self._shard_samples(shards[s], epoch, skipped)):
                    if i < first_sample:
                        continue
                    if replaying:  # the checkpoint's count already holds the replayed errors
                        skipped[0], replaying = pos["skipped"], False
                    try:
                        image, caption = decode_pair(raw, self.size)
                        label = decode_labels(raw, self.size) if self.labels else None
                    except TTDError as err:
                        skipped[0] += 1
                        log.debug("skipping sample: %s", err)
                        continue
                    good_in_epoch += 1
                    images.append(image)
                    captions.append(caption)
                    keys.append(raw["__key__"])
                    if label is not None:
                        labels.append(label[0])
                        words.append(label[1])
                    if len(images) == self.local_batch:
                        position = {"worker": worker, "epoch": epoch, "shard": s, "sample": i + 1, "skipped": skipped[0]}
                        yield self._batch(images, captions, keys, labels, words, skipped[0], position)
                        images, captions, keys, labels, words = [], [], [], [], []
                if replaying:
                    skipped[0] = pos["skipped"]
                first_sample = 0
            if whole_epoch and good_in_epoch == 0:
                raise TTDError(f"worker {worker} of rank {self.rank} found no readable samples in its {len(shards)} shard(s)")
            epoch, first_shard = epoch + 1, 0
        if images:
            position = {"worker": worker, "epoch": epoch, "shard": 0, "sample": 0, "skipped": skipped[0]}
            yield self._batch(images, captions, keys, labels, words, skipped[0], position)

    def _batch(self, images, captions, keys, labels, words, skipped, position) -> PairBatch:
        if not self.labels:
            return PairBatch(torch.stack(images), captions, keys, skipped, position)
        return PairBatch(torch.stack(images), captions, keys, skipped, position, torch.stack(labels), words)


def _pop_random(buffer: list, rng: random.Random):
    j = rng.randrange(len(buffer))
    buffer[j], buffer[-1] = buffer[-1], buffer[j]
    return buffer.pop()


def identity(x):
    """A loader ``collate_fn`` for datasets that yield whole batches (picklable, unlike a lambda)."""
    return x


# --- the loader -------------------------------------------------------------------------------
class PairLoader:
    """Batches of this process's share of the pairs, with a ``state_dict`` that resumes exactly.

    ``batch_size`` is the GLOBAL batch (all processes together); each process gets
    ``batch_size / world``. ``epochs=None`` streams forever (training counts steps, not epochs).
    ``labels=True`` also reads the mini-world's object masks (shards only; see :class:`PairBatch`).
    """

    def __init__(
        self,
        data: str,
        batch_size: int,
        image_size: int = 224,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        epochs: int | None = None,
        keep: str | os.PathLike | None = None,
        state: dict | None = None,
        pin_memory: bool = False,
        labels: bool = False,
    ):
        if batch_size < world or batch_size % world:
            raise TTDError(f"batch size {batch_size} cannot be split evenly across {world} processes; use a multiple of {world}")
        self.data, self.batch_size, self.local_batch = str(data), batch_size, batch_size // world
        self.image_size, self.seed, self.rank, self.world = image_size, seed, rank, world
        self.shuffle, self.epochs = shuffle, epochs
        self.kind = "manifest" if is_manifest(self.data) else "shards"
        state = state or {}
        if state and state.get("kind") != self.kind:
            raise TTDError(f"the checkpoint was written while reading {state.get('kind')}, not {self.kind}; resume with the same --data")
        self.skipped = int(state.get("skipped", 0))
        # its own generator: creating a loader iterator must not draw from the global RNG, or a
        # resumed run's random streams would drift from the uninterrupted run's
        loader_kw = {"num_workers": workers, "pin_memory": pin_memory, "generator": torch.Generator().manual_seed(seed)}
        if self.kind == "manifest":
            if keep is not None:
                raise TTDError("a keep-list filters shards; for a manifest, train on the manifest `ttd data prune` wrote")
            if labels:
                raise TTDError("object masks are read from shards (KEY.seg.png); pass the mini-world's train/shards folder as --data")
            records = read_manifest(self.data, check_files=False)
            self.steps = int(state.get("step", 0))
            self.num_samples = len(records)
            sampler = _GlobalBatches(len(records), batch_size, rank, world, seed, shuffle, self.steps, epochs)
            loader_kw["collate_fn"] = partial(collate_pairs, size=image_size)
            self._loader = DataLoader(ManifestPairs(records, image_size), batch_sampler=sampler, **loader_kw)
        else:
            shards = list_shards(self.data)
            if len(shards) < world:
                raise TTDError(f"{len(shards)} shard(s) cannot feed {world} processes; write more, smaller shards")
            per_rank = len(shards) // world
            self.workers = max(1, min(workers, per_rank))  # a worker without a shard would stall
            if state and (state["world"], state["workers"]) != (world, self.workers):
                raise TTDError(
                    f"this run was checkpointed with {state['world']} process(es) × {state['workers']} loader worker(s) "
                    f"per process; resume with the same numbers (now {world} × {self.workers})"
                )
            self.positions = {int(k): v for k, v in state.get("positions", {}).items()}
            self.next_worker = int(state.get("next_worker", 0))
            self.num_samples = None
            stream = _ShardStream(
                shards, self.local_batch, image_size, seed, rank, world, self.workers, shuffle, shuffle_buffer,
                epochs, read_keep_list(keep) if keep else None, self.positions, self.next_worker, labels,
            )
            loader_kw.update(num_workers=self.workers if workers > 0 else 0, batch_size=None, collate_fn=identity)
            self._loader = DataLoader(stream, **loader_kw)

    def __iter__(self) -> Iterator[PairBatch]:
        for batch in self._loader:
            if self.kind == "manifest":
                self.steps += 1
                self.skipped += batch.skipped
            else:
                worker = batch.position["worker"]
                self.positions[worker] = batch.position
                self.next_worker = (worker + 1) % self.workers
                self.skipped = sum(p["skipped"] for p in self.positions.values())
            yield batch

    def state_dict(self) -> dict:
        """Where this process's stream stands after the batches handed out so far."""
        if self.kind == "manifest":
            return {"kind": "manifest", "step": self.steps, "skipped": self.skipped}
        return {
            "kind": "shards",
            "world": self.world,
            "workers": self.workers,
            "positions": {str(w): dict(p) for w, p in self.positions.items()},
            "next_worker": self.next_worker,
            "skipped": self.skipped,
        }
