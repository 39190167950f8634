"""TTD step 2 (METHOD §5) as small pure functions: the composite mask and the two losses.

Shapes: ``B`` images, ``N`` candidate tags per image (ragged lists padded to the longest, with a
``valid`` mask), ``h × w`` locations. Every target is detached here, so callers cannot forget the
stop-gradient of Eq. 4–5.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "DISTANCES",
    "minmax_normalize",
    "tag_targets",
    "union_mask",
    "distance",
    "distill_loss",
    "tag_loss",
    "TAG_AVERAGES",
    "TTDLoss",
    "ttd_loss",
]

DISTANCES = ("l1", "mse", "bce")
TAG_AVERAGES = ("all", "balanced")


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(H − min H) / (max H − min H + ε)`` over the last two (location) axes of each map."""
    flat = maps.flatten(-2)
    lo = flat.amin(dim=-1)[..., None, None]
    hi = flat.amax(dim=-1)[..., None, None]
    return (maps - lo) / (hi - lo + eps)


def tag_targets(tag_heatmaps: torch.Tensor, selected: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The per-tag targets Ĥ (B, N, h, w), detached: min-max normalised heatmap for a selected
    tag, an all-zero mask otherwise (unselected words are pushed towards 0 by L_tag)."""
    normalised = minmax_normalize(tag_heatmaps.detach(), eps)
    return normalised * selected[..., None, None].to(normalised.dtype)


def union_mask(targets: torch.Tensor) -> torch.Tensor:
    """``U(p) = max_k Ĥ_k(p)`` (B, h, w), detached. Zero where no tag is selected: zero masks of
    unselected (and padded) tags never raise the union."""
    targets = targets.detach()
    if targets.shape[1] == 0:
        return targets.new_zeros(targets.shape[0], *targets.shape[2:])
    return targets.amax(dim=1)


def distance(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Element-wise distance ``d`` of Eq. 4–5 (no reduction), computed in float32.

    ``mse`` (default): (pred − target)²; ``l1``: |pred − target|; ``bce``: binary cross-entropy
    of the heatmap (a probability) against the soft target. Most targets are 0 (every unselected
    word, everywhere), and L1, which pulls each heatmap towards the median of its targets, then
    shrinks the objects' heatmaps too: on mini-world I it lowered CaptionIoU and mIoU where MSE
    raised both (docs/results/miniworld-i.md).
    """
    pred, target = pred.float(), target.float()
    if kind == "l1":
        return (pred - target).abs()
    if kind == "mse":
        return (pred - target).square()
    if kind == "bce":
        # autocast refuses binary_cross_entropy; losses are computed outside it in float32
        with torch.autocast(pred.device.type, enabled=False):
            return F.binary_cross_entropy(pred, target, reduction="none")
    raise ValueError(f"unknown distance {kind!r}; choose one of: {', '.join(DISTANCES)}")


def distill_loss(caption_heatmap: torch.Tensor, union: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Eq. 4: ``L_distill = mean_p d(H_T(p), sg[U(p)])``, averaged over the batch.

    ``caption_heatmap`` and ``union`` are (B, h, w).
    """
    return distance(caption_heatmap, union.detach(), kind).mean()


def tag_loss(
    tag_heatmaps: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor | None = None,
    kind: str = "mse",
    selected: torch.Tensor | None = None,
    average: str = "all",
) -> torch.Tensor:
    """Eq. 5: ``L_tag = mean_k mean_p d(H_k(p), sg[Ĥ_k(p)])`` per image, averaged over the batch.

    The mean over k covers the image's valid candidates only; an image without candidates adds 0
    (the batch mean still counts it, so per-process means average to the global batch mean).
    ``average="balanced"`` (with ``selected``): the image's selected and unselected tags weigh
    one half each instead of one share per tag, so a caption's many undepicted words (pushed
    towards 0) do not outweigh its few depicted ones; an image with one group only gives it all.
    """
    if valid is None:
        valid = torch.ones(tag_heatmaps.shape[:2], dtype=torch.bool, device=tag_heatmaps.device)
    if tag_heatmaps.shape[0] == 0:
        return tag_heatmaps.sum() * 0.0
    per_tag = distance(tag_heatmaps, targets.detach(), kind).flatten(2).mean(dim=-1)  # (B, N)
    if average == "all":
        return _group_mean(per_tag, valid).mean()
    if average != "balanced" or selected is None:
        raise ValueError(f"tag average must be one of {', '.join(TAG_AVERAGES)} ('balanced' needs the selection)")
    on, off = valid & selected, valid & ~selected
    has_on, has_off = on.any(dim=1), off.any(dim=1)
    weight_on = torch.where(has_off, 0.5, 1.0) * has_on
    weight_off = torch.where(has_on, 0.5, 1.0) * has_off
    return (weight_on * _group_mean(per_tag, on) + weight_off * _group_mean(per_tag, off)).mean()


def _group_mean(per_tag: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Per image, the mean of ``per_tag`` (B, N) over ``members`` (0 for an empty group)."""
    return (per_tag * members).sum(dim=1) / members.sum(dim=1).clamp_min(1)


class TTDLoss(NamedTuple):
    total: torch.Tensor
    distill: torch.Tensor
    tag: torch.Tensor
    union: torch.Tensor  # (B, h, w), detached: the composite mask, for logging and figures


def ttd_loss(
    caption_heatmap: torch.Tensor,
    tag_heatmaps: torch.Tensor,
    selected: torch.Tensor,
    valid: torch.Tensor | None = None,
    kind: str = "mse",
    tag_weight: float = 1.0,
    distill_weight: float = 1.0,
    eps: float = 1e-6,
    tag_average: str = "all",
) -> TTDLoss:
    """``L = w_distill·L_distill + λ·L_tag`` (METHOD §5; both weights 1 by default).

    ``caption_heatmap`` (B, h, w) and ``tag_heatmaps`` (B, N, h, w) carry gradients; ``selected``
    (B, N) bool marks the tags chosen in step 1; ``valid`` (B, N) marks real (non-padding) tags.
    Setting a weight to 0 gives the paper's "L_tag only" / "L_distill only" ablations;
    ``tag_average`` is :func:`tag_loss`'s ``average``.
    """
    if valid is not None:
        selected = selected & valid
    targets = tag_targets(tag_heatmaps, selected, eps)
    union = union_mask(targets)
    l_distill = distill_loss(caption_heatmap, union, kind)
    l_tag = tag_loss(tag_heatmaps, targets, valid, kind, selected, tag_average)
    return TTDLoss(distill_weight * l_distill + tag_weight * l_tag, l_distill, l_tag, union)
