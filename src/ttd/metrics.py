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


# --- segmentation: one dataset-level confusion matrix ------------------------------------------
__all__ += ["ConfusionMatrix", "segmentation_scores"]


class ConfusionMatrix:
    """Pixel counts ``matrix[target, prediction]`` accumulated over a whole dataset.

    mmsegmentation's IoUMetric semantics: target pixels equal to ``ignore_index`` are skipped;
    scores are computed once from the summed counts (not averaged per image); classes absent
    from both targets and predictions are left out of the means. ``reduce()`` sums the counts
    of all distributed ranks, so sharded evaluations give the single-process numbers.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add one image (or a batch): integer class ids of the same shape."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
        prediction = prediction.flatten().long().cpu()
        target = target.flatten().long().cpu()
        valid = target != self.ignore_index
        prediction, target = prediction[valid], target[valid]
        k = self.num_classes
        if target.numel() and (target.min() < 0 or target.max() >= k or prediction.min() < 0 or prediction.max() >= k):
            raise ValueError(
                f"class ids must lie in [0, {k}) (or equal ignore_index={self.ignore_index} in the target)"
            )
        self.matrix += torch.bincount(target * k + prediction, minlength=k * k).view(k, k)

    def reduce(self) -> ConfusionMatrix:
        """Sum the counts over distributed ranks (a no-op without a process group)."""
        nccl = dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else self.matrix.device
        self.matrix = all_reduce_sum(self.matrix.to(device)).cpu()
        return self

    def compute(self) -> dict:
        return segmentation_scores(self.matrix)


def segmentation_scores(matrix: torch.Tensor) -> dict:
    """Per class c, with TP/FP/FN counted over the dataset: IoU = TP/(TP+FP+FN),
    FPR = FP/(TP+FP+FN), FNR = FN/(TP+FP+FN) (so IoU + FPR + FNR = 1), and their means over
    the classes present in the targets or the predictions. Per-class values of absent classes
    are NaN. Also the pixel accuracy ``aAcc``. Means and accuracy are fractions in [0, 1]."""
    matrix = matrix.double()
    tp = matrix.diag()
    fp = matrix.sum(0) - tp
    fn = matrix.sum(1) - tp
    union = tp + fp + fn
    present = union > 0
    nan = torch.full_like(tp, float("nan"))
    iou, fpr, fnr = (torch.where(present, x / union.clamp(min=1), nan) for x in (tp, fp, fn))
    return {
        "mIoU": iou[present].mean().item() if present.any() else float("nan"),
        "mFPR": fpr[present].mean().item() if present.any() else float("nan"),
        "mFNR": fnr[present].mean().item() if present.any() else float("nan"),
        "aAcc": (tp.sum() / matrix.sum()).item() if matrix.sum() > 0 else float("nan"),
        "IoU": iou.tolist(),
        "FPR": fpr.tolist(),
        "FNR": fnr.tolist(),
        "present": present.tolist(),
    }
