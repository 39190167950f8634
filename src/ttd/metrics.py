"""Metrics as state (``update`` / ``compute``), reducible across distributed ranks.

Tag-selection metrics (P / R / F1 / Acc micro-averaged, mAP) and segmentation metrics (one
dataset-level confusion matrix → IoU / FPR / FNR) share the reduction below.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_reduce_sum"]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks when a process group is running (a no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
