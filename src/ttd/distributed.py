"""The one process layer of training and evaluation: torchrun's variables, the process group, sums.

Under ``torchrun --nproc_per_node N`` every process has a ``rank`` in a ``world`` of N and uses the
GPU of its ``local_rank``; one process (``main``) writes files. A plain ``python`` run is a world
of one, where every function here is a no-op, so callers never branch on it.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .io import default_device

__all__ = [
    "Distributed",
    "is_main_process",
    "process_device",
    "owns_process_group",
    "all_reduce_sum",
    "gather_with_grad",
    "reduce_gradients",
]


def is_main_process() -> bool:
    """Whether this process prints and writes (rank 0; known before any process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def process_device(device: str | None = None) -> torch.device:
    """The device asked for; under torchrun on CUDA, ``cuda:LOCAL_RANK`` (one GPU per process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and device in (None, "cuda") and torch.cuda.is_available():
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    device = default_device(device)
    if device.type == "cuda" and device.index is None:  # torch.cuda.set_device refuses a bare "cuda"
        device = torch.device("cuda", torch.cuda.current_device())
    return device


@dataclass
class Distributed:
    """This process's place in a (possibly one-process) run; started from torchrun's variables."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @classmethod
    def setup(cls, device: str | None = None) -> Distributed:
        """Join the process group torchrun describes (nccl on CUDA, gloo on CPU), if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        dev = process_device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        owns = False
        if world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
            owns = True
        if dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        return cls(rank, world, local_rank, dev, owns)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1 and dist.is_initialized()

    def shard(self, indices: list[int]) -> list[int]:
        """This process's share of ``indices``: every ``world``-th one from ``rank``."""
        return indices[self.rank :: self.world]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def owns_process_group(evaluate):
    """Let an evaluation ``evaluate(model, ..., ctx=None)`` join torchrun's process group itself
    (on the model's device) and leave it when done; a given ``ctx`` is used as it is."""

    @functools.wraps(evaluate)
    def run(model, *args, ctx: Distributed | None = None, **kwargs):
        if ctx is not None:
            return evaluate(model, *args, ctx=ctx, **kwargs)
        ctx = Distributed.setup(str(model.device))
        try:
            return evaluate(model, *args, ctx=ctx, **kwargs)
        finally:
            ctx.close()

    return run


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks when a process group is running (a no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows (gradients flow back to their owners) and this process's offset."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(s) for s in sizes]
    padded = F.pad(x, (0, 0, 0, max(sizes) - x.shape[0]))  # all_gather needs equal shapes
    parts = all_gather(padded)
    rank = dist.get_rank()
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]), sum(sizes[:rank])


def reduce_gradients(params: list[torch.nn.Parameter], weight: float, extra: list[float], processes: Distributed) -> list[float]:
    """Make every process's gradients ``Σ_r w_r·g_r / Σ_r w_r`` with ONE all-reduce.

    ``weight`` is this process's sample count; a parameter keeps no gradient only when it has
    none on every process. ``extra`` values are summed alongside; returned with ``Σ w`` first.
    """
    if not processes.active:
        return [weight, *extra]
    device = params[0].device
    chunks = [p.grad.flatten().float() * weight if p.grad is not None else torch.zeros(p.numel(), device=device) for p in params]
    flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    tail = torch.tensor([weight, *extra], dtype=torch.float32, device=device)
    flat = torch.cat([*chunks, flags, tail])
    dist.all_reduce(flat)
    sums = flat[-len(tail) :].tolist()
    total = max(sums[0], 1e-12)
    offset = 0
    for p, has in zip(params, flat[-len(tail) - len(params) : -len(tail)].tolist()):
        n = p.numel()
        p.grad = (flat[offset : offset + n] / total).view_as(p).to(p.dtype) if has else None
        offset += n
    return sums
