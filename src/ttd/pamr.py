"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, CVPR 2020), in plain torch.

Each iteration replaces every pixel's scores by an average of its neighbours' (8 neighbours at
each dilation), weighted by how similar their colours are. The weights are a softmax over the
neighbours, so a constant score map stays constant and scores never leave their range.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

__all__ = ["pamr", "PAMR_THREADS"]

PAMR_THREADS: int | None = 1  # intra-op threads of the refinement loop on the CPU (None: torch's setting)

_RING = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _neighbours(x: torch.Tensor, dilations: Sequence[int], centre: bool) -> list[torch.Tensor]:
    """Views of ``x`` (B, C, H, W) shifted to each neighbour, borders replicated."""
    pad = max(dilations)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    h, w = x.shape[-2:]
    ring = _RING + [(0, 0)] if centre else _RING
    return [
        padded[..., pad + dy * d : pad + dy * d + h, pad + dx * d : pad + dx * d + w]
        for d in dilations
        for dy, dx in ring
    ]


def affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Neighbour weights (B, P, H, W), P = 8·len(dilations), summing to 1 over P.

    ``-|I(p) - I(q)| / (0.1 · σ_local)`` per colour channel (σ over the 3×3 neighbourhood at all
    dilations), averaged over channels, softmax over the neighbours q of p.
    """
    centre_and_ring = torch.stack(_neighbours(image, dilations, centre=True), dim=2)  # B, C, 9D, H, W
    local_std = centre_and_ring.std(dim=2, keepdim=True)
    ring = torch.stack(_neighbours(image, dilations, centre=False), dim=2)  # B, C, 8D, H, W
    logits = -(ring - image.unsqueeze(2)).abs() / (1e-8 + 0.1 * local_std)
    return logits.mean(dim=1).softmax(dim=1)


@contextmanager
def _threads(count: int | None, device: torch.device):
    """Run CPU work on ``count`` intra-op threads (None or a CUDA device: unchanged)."""
    before = torch.get_num_threads()
    change = count is not None and device.type == "cpu" and count != before
    if change:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(before)


def pamr(
    image: torch.Tensor,
    scores: torch.Tensor,
    iterations: int = 10,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
) -> torch.Tensor:
    """Refine ``scores`` (B, K, H, W) with the colours of ``image`` (B, 3, H, W), same H, W.

    The affinity is computed once; each iteration is then one padded copy and 8·len(dilations)
    fused multiply-adds. On the CPU these ~500 small memory-bound operations run on
    :data:`PAMR_THREADS` thread(s): splitting each over cores gains little and, on a machine whose
    cores are busy, every split waits for a descheduled thread (10× slower at load 5 on 2 cores).
    Weights under float32's smallest normal number (≈1e-38) are set to 0, so no subnormal
    arithmetic can slow the loop down.
    """
    if image.shape[-2:] != scores.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape[-2:])} and scores {tuple(scores.shape[-2:])} differ in size")
    with _threads(PAMR_THREADS, scores.device):
        weights = affinity(image.float(), dilations).to(scores.dtype)  # B, P, H, W
        weights = weights.masked_fill_(weights < torch.finfo(weights.dtype).tiny, 0.0)
        for _ in range(iterations):
            refined = None
            for k, shifted in enumerate(_neighbours(scores, dilations, centre=False)):
                if refined is None:
                    refined = shifted * weights[:, k : k + 1]
                else:
                    refined.addcmul_(shifted, weights[:, k : k + 1])
            scores = refined
    return scores
