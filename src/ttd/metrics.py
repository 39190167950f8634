"""Metrics as state (``update`` / ``compute``), reducible across distributed ranks.

Tag-selection metrics (P / R / F1 / Acc micro-averaged, mAP) and segmentation metrics (one
dataset-level confusion matrix → IoU / FPR / FNR) share the reduction below.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_reduce_sum", "average_precision", "TagMetrics"]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks when a process group is running (a no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


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
