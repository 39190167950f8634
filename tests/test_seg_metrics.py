import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from ttd.metrics import ConfusionMatrix, segmentation_scores


def _random_maps(seed, k, n=3, shape=(17, 23)):
    g = torch.Generator().manual_seed(seed)
    preds = [torch.randint(0, k, shape, generator=g) for _ in range(n)]
    targets = [torch.randint(0, k, shape, generator=g) for _ in range(n)]
    for t in targets:
        t[torch.rand(shape, generator=g) < 0.1] = 255
    return preds, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_miou_equals_torchmetrics_on_accumulated_counts(seed):
    k = 6
    preds, targets = _random_maps(seed, k)
    # class 5 absent from both targets and predictions: both implementations must skip it
    for p, t in zip(preds, targets):
        p[p == 5] = 0
        t[t == 5] = 1
    cm = ConfusionMatrix(k)
    reference = MulticlassJaccardIndex(num_classes=k, average="macro", ignore_index=255)
    per_class = MulticlassJaccardIndex(num_classes=k, average="none", ignore_index=255)
    for p, t in zip(preds, targets):
        cm.update(p, t)
        reference.update(p, t)
        per_class.update(p, t)
    scores = cm.compute()
    assert scores["mIoU"] == pytest.approx(reference.compute().item(), abs=1e-6)
    present = torch.tensor(scores["present"])
    assert not present[5]
    assert torch.allclose(torch.tensor(scores["IoU"])[present].float(), per_class.compute()[present], atol=1e-6)
    assert math.isnan(scores["IoU"][5])


def test_hand_case():
    # target: 0 0 1 1 / 255 2 2 2 ; prediction: 0 1 1 1 / 0 2 2 0
    target = torch.tensor([[0, 0, 1, 1], [255, 2, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 2, 0]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    s = cm.compute()
    # class 0: TP 1, FP 1 (a 2 predicted as 0), FN 1 → 1/3, 1/3, 1/3
    # class 1: TP 2, FP 1, FN 0 → 2/3, 1/3, 0 ; class 2: TP 2, FP 0, FN 1 → 2/3, 0, 1/3
    assert s["IoU"][:3] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert s["FPR"][:3] == pytest.approx([1 / 3, 1 / 3, 0])
    assert s["FNR"][:3] == pytest.approx([1 / 3, 0, 1 / 3])
    assert s["mIoU"] == pytest.approx(5 / 9)
    assert s["present"] == [True, True, True, False]
    assert s["aAcc"] == pytest.approx(5 / 7)


@pytest.mark.parametrize("seed", [3, 4])
def test_iou_fpr_fnr_sum_to_one_per_class(seed):
    preds, targets = _random_maps(seed, 5)
    cm = ConfusionMatrix(5)
    for p, t in zip(preds, targets):
        cm.update(p, t)
    s = cm.compute()
    for iou, fpr, fnr, present in zip(s["IoU"], s["FPR"], s["FNR"], s["present"]):
        if present:
            assert iou + fpr + fnr == pytest.approx(1.0)
    assert s["mIoU"] + s["mFPR"] + s["mFNR"] == pytest.approx(1.0)


def test_dataset_level_not_per_image_average():
    # one image perfect on class 1, another entirely wrong: per-image averaging would give 0.5
    cm = ConfusionMatrix(2)
    cm.update(torch.ones(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.long))
    cm.update(torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1, dtype=torch.long))
    s = segmentation_scores(cm.matrix)
    assert s["IoU"][1] == pytest.approx(1 / 4)
    assert s["IoU"][0] == pytest.approx(0.0)


def test_out_of_range_and_shape_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="class ids must lie in"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="differ in shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0]))
    cm.update(torch.tensor([2]), torch.tensor([255]))  # ignored pixels may hold anything predicted
    assert cm.matrix.sum() == 0


def test_reduce_without_process_group_is_identity():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    before = cm.matrix.clone()
    assert torch.equal(cm.reduce().matrix, before)


def test_tag_coverage_on_hand_made_maps():
    from ttd.metrics import TagCoverage

    heat = torch.tensor([[0.9, 0.9, 0.1, 0.1],
                         [0.9, 0.9, 0.5, 0.3],
                         [0.2, 0.2, 0.2, 0.2],
                         [0.0, 0.0, 0.0, 0.0]])  # fmt: skip
    cat = torch.zeros(4, 4, dtype=torch.bool)
    cat[:2, :2] = True  # fully lit
    dog = torch.zeros(4, 4, dtype=torch.bool)
    dog[:2, 2:] = True  # one pixel of four above 0.4
    background = ~(cat | dog)
    metric = TagCoverage()
    metric.update(heat, heat > 0.4, [cat, dog], background)
    metric.update(heat, heat > 0.4, [cat], background)  # one depicted tag: no bias to measure, skipped
    out = metric.compute()
    assert out["captions"] == 1
    assert out["best_coverage"] == pytest.approx(1.0) and out["other_coverage"] == pytest.approx(0.25)
    assert out["ratio"] == pytest.approx(0.25)
    best, other, bg = 0.9, (0.1 + 0.1 + 0.5 + 0.3) / 4, 0.8 / 8
    assert out["contrast"] == pytest.approx((other - bg) / (best - bg))
    assert out["background_on"] == 0.0
    restored = TagCoverage()
    restored.load_state(metric.state())  # what evaluation checkpoints save and resume from
    assert restored.compute() == out


def test_caption_maps_are_thresholded_raw_and_min_max_normalised():
    from ttd.segment import normalize_caption_map

    heat = torch.tensor([[0.2, 0.3], [0.25, 0.35]])
    assert torch.equal(normalize_caption_map(heat, "none"), heat)
    scaled = normalize_caption_map(heat, "minmax")
    assert scaled.min().item() == pytest.approx(0.0) and scaled.max().item() == pytest.approx(1.0, abs=1e-5)
    assert (scaled > 0.4).sum() == 2 and (heat > 0.4).sum() == 0  # a dim map still segments once normalised
