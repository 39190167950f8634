"""Metrics as state (``update`` / ``compute``), reducible across distributed ranks.

Tag-selection metrics (P / R / F1 / Acc micro-averaged, mAP) and segmentation metrics (one
dataset-level confusion matrix → IoU / FPR / FNR) share one reduction (:func:`ttd.distributed.all_reduce_sum`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .distributed import all_reduce_sum

__all__ = ["average_precision", "TagMetrics", "ConfusionMatrix", "segmentation_scores", "TagCoverage"]


# --- multi-tag selection ----------------------------------------------------------------------
def average_precision(scores: torch.Tensor, truth: torch.Tensor) -> float | None:
    """Average precision of one score ranking: ``Σ_n (R_n − R_{n−1}) · P_n`` over the distinct
    score thresholds, ties counted together (scikit-learn's ``average_precision_score``).

    ``None`` when ``truth`` has no positive: AP is undefined there.
    """
    scores, truth = scores.detach().flatten().double().cpu(), truth.detach().flatten().bool().cpu()
    positives = int(truth.sum())
    if positives == 0:
        return None
    order = torch.argsort(scores, descending=True, stable=True)
    scores, hits = scores[order], truth[order].double()
    tp = hits.cumsum(0)
    # a threshold ends where the next (lower) score differs: ties share one precision-recall point
    ends = torch.cat([scores[1:] != scores[:-1], torch.tensor([True])]).nonzero().flatten()
    tp_at = tp[ends]
    precision = tp_at / (ends + 1).double()
    recall_step = torch.diff(tp_at, prepend=torch.zeros(1, dtype=torch.float64)) / positives
    return float((recall_step * precision).sum())


class TagMetrics:
    """Multi-tag selection metrics as state: every candidate of every caption is one decision.

    ``update(scores, selected, truth)`` per caption (1-D tensors over its candidates; ``scores``
    may be ``None`` for taggers without scores); ``compute()`` gives

    * ``precision``, ``recall``, ``f1``, ``accuracy``: micro-averaged over all decisions
      (0 where a denominator is 0);
    * ``map``: the mean over captions of the average precision of that caption's score ranking
      (:func:`average_precision`). Captions without any depicted candidate have no AP and are
      left out of the mean (``map_captions`` counts the captions in it); ``None`` when no caption
      had scores and a positive.

    The state is a tensor of sums, so ``compute`` reduces it over distributed ranks with
    :func:`all_reduce_sum` (each rank updates with its own captions).
    """

    _FIELDS = ("tp", "fp", "fn", "tn", "ap_sum", "ap_captions", "captions")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.state = torch.zeros(len(self._FIELDS), dtype=torch.float64)

    def update(self, scores: torch.Tensor | None, selected: torch.Tensor, truth: torch.Tensor) -> None:
        selected, truth = selected.detach().flatten().bool().cpu(), truth.detach().flatten().bool().cpu()
        if selected.shape != truth.shape or (scores is not None and scores.numel() != truth.numel()):
            raise ValueError(
                f"scores, selected and truth of a caption must have one entry per candidate, got "
                f"{None if scores is None else scores.numel()}, {selected.numel()} and {truth.numel()}"
            )
        tp = int((selected & truth).sum())
        fp = int((selected & ~truth).sum())
        fn = int((~selected & truth).sum())
        tn = truth.numel() - tp - fp - fn
        ap = None if scores is None else average_precision(scores, truth)
        self.state += torch.tensor(
            [tp, fp, fn, tn, 0.0 if ap is None else ap, ap is not None, 1], dtype=torch.float64
        )

    def compute(self) -> dict[str, float | int | None]:
        tp, fp, fn, tn, ap_sum, ap_captions, captions = all_reduce_sum(self.state).tolist()
        decisions = tp + fp + fn + tn

        def ratio(num: float, den: float) -> float:
            return num / den if den else 0.0

        return {
            "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "accuracy": ratio(tp + tn, decisions),
            "map": ap_sum / ap_captions if ap_captions else None,
            "captions": int(captions),
            "decisions": int(decisions),
            "map_captions": int(ap_captions),
        }


# --- segmentation: one dataset-level confusion matrix ------------------------------------------
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

    def state(self) -> torch.Tensor:
        """Everything ``update`` accumulated, as one tensor (what evaluation checkpoints save)."""
        return self.matrix

    def load_state(self, state: torch.Tensor) -> None:
        self.matrix = state.to(self.matrix.dtype).view_as(self.matrix).clone()

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


# --- single tag bias of caption maps ------------------------------------------------------------
class TagCoverage:
    """How evenly a caption's map covers the objects its caption names (docs/segmentation.md).

    Per caption with at least two depicted tags that have masks: the *coverage* of each tag is
    the share of its mask where the caption map is above the threshold (the caption
    segmentation's prediction). The best-covered tag and the mean of the others are averaged
    over captions; ``ratio`` = others / best (1: every object as lit as the best one; single tag
    bias pulls it towards 0). Threshold-free: the mean map value on the tag with the highest
    mean, on the other tags and on the background give ``contrast`` = (other − background) /
    (best − background). ``background_on`` is the share of background pixels above the
    threshold. Sums over captions, so the state reduces over ranks.
    """

    _FIELDS = ("captions", "best", "other", "best_mean", "other_mean", "background_mean", "background_on")

    def __init__(self) -> None:
        self.sums = torch.zeros(len(self._FIELDS), dtype=torch.float64)

    def update(self, heatmap: torch.Tensor, prediction: torch.Tensor, tag_masks: list[torch.Tensor], background: torch.Tensor) -> None:
        """One caption: its map (H, W) in [0, 1], the thresholded map (H, W) bool, one bool mask
        per depicted tag, and the background mask (neither depicted nor ignored)."""
        masks = [m for m in tag_masks if m.any()]
        if len(masks) < 2:
            return
        heatmap, prediction = heatmap.double().cpu(), prediction.bool().cpu()
        coverage = sorted((prediction[m].double().mean().item() for m in masks), reverse=True)
        means = sorted((heatmap[m].mean().item() for m in masks), reverse=True)
        has_background = bool(background.any())
        self.sums += torch.tensor([
            1.0, coverage[0], sum(coverage[1:]) / (len(coverage) - 1), means[0], sum(means[1:]) / (len(means) - 1),
            heatmap[background].mean().item() if has_background else 0.0,
            prediction[background].double().mean().item() if has_background else 0.0,
        ], dtype=torch.float64)  # fmt: skip

    def state(self) -> torch.Tensor:
        return self.sums

    def load_state(self, state: torch.Tensor) -> None:
        self.sums = state.double().clone()

    def compute(self) -> dict:
        sums = all_reduce_sum(self.sums).tolist()
        n = sums[0]
        if not n:
            return {"captions": 0}
        c = dict(zip(self._FIELDS[1:], (v / n for v in sums[1:])))
        spread = c["best_mean"] - c["background_mean"]
        return {
            "captions": int(n),
            "best_coverage": c["best"],
            "other_coverage": c["other"],
            "ratio": c["other"] / c["best"] if c["best"] else float("nan"),
            "contrast": (c["other_mean"] - c["background_mean"]) / spread if spread else float("nan"),
            "best_mean": c["best_mean"],
            "other_mean": c["other_mean"],
            "background_mean": c["background_mean"],
            "background_on": c["background_on"],
        }
