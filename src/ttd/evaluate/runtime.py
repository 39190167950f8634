"""What every evaluation loop shares: its shard of the data and resumable confusion-matrix state.

Under ``torchrun --nproc_per_node N -m ttd eval ...`` each process takes every N-th image and the
confusion matrices are summed at the end, so the numbers equal a single-process run. The state of
each process is checkpointed atomically every few images; a rerun with the same arguments (and
process count) continues where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from ..cache import weights_fingerprint
from ..distributed import Distributed
from ..io import atomic_write_bytes, save_image, save_json
from ..metrics import ConfusionMatrix

__all__ = ["EvalCheckpoint", "evaluation_loop"]


class EvalCheckpoint:
    """One process's partial counts, saved atomically as safetensors with the run's key."""

    def __init__(self, out_dir: str | os.PathLike, key: dict, ctx: Distributed):
        self.key = json.dumps(key, sort_keys=True)
        self.path = Path(out_dir) / ".state" / f"rank{ctx.rank}-of-{ctx.world}.safetensors"

    def load(self) -> tuple[torch.Tensor, int] | None:
        """(matrix, images done) of an earlier run with the same key, else None."""
        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), "pt") as f:
                if (f.metadata() or {}).get("key") != self.key:
                    return None
            tensors = load_file(self.path)
        except (SafetensorError, OSError):
            return None
        return tensors["matrix"], int(tensors["done"])

    def save(self, matrix: torch.Tensor, done: int) -> None:
        data = save({"matrix": matrix.contiguous(), "done": torch.tensor(done)}, metadata={"key": self.key})
        atomic_write_bytes(self.path, data)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def open_checkpoint(out_dir, key: dict, model, ctx: Distributed, resume: bool) -> EvalCheckpoint | None:
    """The checkpoint of an evaluation writing to ``out_dir`` (None without one); its key adds the
    model's weights fingerprint and variant, so a changed model never resumes stale counts."""
    if out_dir is None:
        return None
    key = {**key, "weights": weights_fingerprint(model), "variant": getattr(model, "name", "")}
    checkpoint = EvalCheckpoint(out_dir, key, ctx)
    if not resume:
        checkpoint.clear()
    return checkpoint


def write_result(result: dict, markdown: str, out_dir, ctx: Distributed) -> None:
    """``results.json`` and ``results.md`` in ``out_dir``, written once, by the main process."""
    if out_dir is not None and ctx.main:
        save_json(result, Path(out_dir) / "results.json")
        atomic_write_bytes(Path(out_dir) / "results.md", markdown.encode())


def _as_list(samples):
    return list(samples)


@contextmanager
def _one_thread():
    """Metric updates are many small CPU operations (masks, counts, means): on one thread they
    never wait for a descheduled second one on a busy machine, and lose next to nothing on an idle one."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _update(metric, pairs: list) -> None:
    """Add a batch of (prediction, target) pairs: in one ``update_batch`` call when the metric
    has one, in one confusion-matrix update when the maps share a shape (the counts are the
    same), else pair by pair."""
    with _one_thread():
        _add(metric, pairs)


def _add(metric, pairs: list) -> None:
    if hasattr(metric, "update_batch"):
        metric.update_batch(pairs)
    elif (
        len(pairs) > 1 and isinstance(metric, ConfusionMatrix)
        and all(isinstance(p, torch.Tensor) and p.shape == t.shape == pairs[0][0].shape for p, t in pairs)
    ):
        metric.update(torch.stack([p for p, _ in pairs]), torch.stack([t for _, t in pairs]))
    else:
        for prediction, target in pairs:
            metric.update(prediction, target)


def evaluation_loop(
    dataset: torch.utils.data.Dataset,
    predict,
    metric,
    *,
    ctx: Distributed,
    checkpoint: EvalCheckpoint | None = None,
    limit: int | None = None,
    desc: str = "eval",
    progress: bool = True,
    workers: int = 0,
    checkpoint_every: int = 25,
    figure=None,
    figures: int = 0,
    figure_dir: str | os.PathLike | None = None,
    predict_batch=None,
    batch_size: int = 1,
) -> float:
    """Run ``predict(sample) -> (prediction, target)`` over this process's shard of ``dataset``,
    adding each pair to ``metric`` (``update``, and ``state``/``load_state`` for the checkpoint:
    a ConfusionMatrix or any metric with that interface), resuming from and saving ``checkpoint``;
    the main process saves ``figure(sample, prediction)`` for its first ``figures`` samples.
    With ``predict_batch(samples) -> [(prediction, target), ...]``, samples come ``batch_size``
    at a time (the DataLoader's workers collate them into lists); the checkpoint is saved after
    the batch that reaches each multiple of ``checkpoint_every`` images.
    Returns the seconds spent; the caller reduces the metric."""
    indices = ctx.shard(list(range(len(dataset)))[:limit])
    done = 0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        saved, done = state
        metric.load_state(saved)
    if predict_batch is None:
        batch_size = 1
        predict_batch = lambda samples: [predict(sample) for sample in samples]  # noqa: E731
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices[done:]), batch_size=max(1, int(batch_size)), num_workers=workers,
        collate_fn=_as_list,
    )
    bar = tqdm(total=len(indices), initial=done, desc=desc, unit="img", dynamic_ncols=True,
               disable=not (progress and ctx.main))
    draw = figure is not None and figure_dir is not None and ctx.main
    start = time.perf_counter()
    step = done
    for samples in loader:
        pairs = predict_batch(samples)
        _update(metric, pairs)
        for sample, (prediction, _) in zip(samples, pairs):
            if draw and step < figures:
                save_image(figure(sample, prediction), Path(figure_dir) / f"{sample.name.replace('/', '_')}.png")
            step += 1
        bar.update(len(samples))
        if checkpoint is not None and step // checkpoint_every > (step - len(samples)) // checkpoint_every:
            checkpoint.save(metric.state(), step)
    bar.close()
    if checkpoint is not None:
        checkpoint.save(metric.state(), len(indices))
    return time.perf_counter() - start
