"""TTD's composite mask and losses (METHOD §5) on hand-made heatmaps."""

import pytest
import torch
import torch.nn.functional as F

from ttd.method.distill import distance, distill_loss, minmax_normalize, tag_loss, tag_targets, ttd_loss, union_mask


def maps(*rows):
    """2×2 heatmaps from flat lists of 4 values: (N, 2, 2)."""
    return torch.tensor(rows, dtype=torch.float32).view(len(rows), 2, 2)


def test_minmax_normalize_per_map_over_locations():
    out = minmax_normalize(maps([0.2, 0.4, 0.6, 1.0], [0.5, 0.5, 0.5, 0.5]), eps=1e-12)
    assert torch.allclose(out[0].flatten(), torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert torch.all(out[1] == 0)  # a flat map: ε keeps it finite (all zeros)


def test_targets_zero_for_unselected_and_union_is_pixelwise_max():
    h = maps([0.1, 0.3, 0.5, 0.9], [0.8, 0.6, 0.4, 0.2], [0.9, 0.9, 0.1, 0.1])[None]  # (1, 3, 2, 2)
    selected = torch.tensor([[True, True, False]])
    targets = tag_targets(h, selected, eps=1e-12)
    assert torch.allclose(targets[0, 0].flatten(), torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert torch.allclose(targets[0, 1].flatten(), torch.tensor([1.0, 2 / 3, 1 / 3, 0.0]))
    assert torch.all(targets[0, 2] == 0)
    union = union_mask(targets)
    assert torch.allclose(union[0].flatten(), torch.tensor([1.0, 2 / 3, 0.5, 1.0]))
    assert torch.equal(union, torch.maximum(targets[:, 0], targets[:, 1]))


def test_union_without_tags_is_zero():
    assert torch.equal(union_mask(torch.zeros(2, 0, 3, 3)), torch.zeros(2, 3, 3))


def test_unselected_tag_acts_only_through_tag_loss():
    caption = maps([0.5, 0.2, 0.7, 0.1])  # (1, 2, 2)
    chosen = maps([0.1, 0.3, 0.5, 0.9])
    other = maps([0.6, 0.7, 0.2, 0.3])
    with_other = ttd_loss(caption, torch.stack([chosen, other], dim=1), torch.tensor([[True, False]]), kind="l1")
    alone = ttd_loss(caption, chosen[:, None], torch.tensor([[True]]), kind="l1")
    assert torch.equal(with_other.union, alone.union)
    assert torch.equal(with_other.distill, alone.distill)
    # L_tag averages the two tags; the unselected one is pulled to 0: its L1 term is its mean
    assert with_other.tag.item() == pytest.approx((alone.tag.item() + other.mean().item()) / 2)


def test_losses_by_hand():
    caption = maps([0.5, 0.2, 0.7, 0.1])
    tags = maps([0.1, 0.3, 0.5, 0.9])[:, None]
    out = ttd_loss(caption, tags, torch.tensor([[True]]), kind="l1", eps=1e-12)
    target = torch.tensor([0.0, 0.25, 0.5, 1.0])
    default = ttd_loss(caption, tags, torch.tensor([[True]]), eps=1e-12)  # MSE
    assert default.distill.item() == pytest.approx((caption.flatten() - target).square().mean().item())
    assert out.distill.item() == pytest.approx((caption.flatten() - target).abs().mean().item())
    assert out.tag.item() == pytest.approx((tags.flatten() - target).abs().mean().item())
    assert out.total.item() == pytest.approx(out.distill.item() + out.tag.item())
    weighted = ttd_loss(caption, tags, torch.tensor([[True]]), kind="l1", tag_weight=0.25, distill_weight=2.0, eps=1e-12)
    assert weighted.total.item() == pytest.approx(2.0 * out.distill.item() + 0.25 * out.tag.item())


def test_no_gradient_reaches_the_targets():
    torch.manual_seed(0)
    caption = torch.rand(2, 3, 3, requires_grad=True)
    tags = torch.rand(2, 4, 3, 3, requires_grad=True)
    selected = torch.tensor([[True, False, True, False], [False, True, True, True]])
    ttd_loss(caption, tags, selected).total.backward()
    # the same losses with targets computed from a frozen copy: gradients must be identical
    frozen = tags.detach().clone()
    caption2, tags2 = caption.detach().clone().requires_grad_(), tags.detach().clone().requires_grad_()
    targets = tag_targets(frozen, selected)
    (distill_loss(caption2, union_mask(targets)) + tag_loss(tags2, targets)).backward()
    assert torch.allclose(caption.grad, caption2.grad) and torch.allclose(tags.grad, tags2.grad)
    assert not tag_targets(tags, selected).requires_grad and not union_mask(tags).requires_grad


def test_padded_tags_change_nothing():
    torch.manual_seed(1)
    caption = torch.rand(2, 3, 3)
    tags = torch.rand(2, 3, 3, 3)
    selected = torch.tensor([[True, False, True], [True, True, False]])
    valid = torch.tensor([[True, True, True], [True, True, False]])  # image 1 has 2 tags
    batch = ttd_loss(caption, tags, selected, valid)
    first = ttd_loss(caption[:1], tags[:1], selected[:1])
    second = ttd_loss(caption[1:], tags[1:, :2], selected[1:, :2])
    assert batch.total.item() == pytest.approx((first.total.item() + second.total.item()) / 2)
    # garbage in the padded slot (even "selected") is ignored
    tags[1, 2] = 7.0
    selected[1, 2] = True
    assert ttd_loss(caption, tags, selected, valid).total.item() == pytest.approx(batch.total.item())


def test_image_without_candidates_adds_zero_tag_loss():
    tags = torch.rand(2, 2, 3, 3)
    valid = torch.tensor([[True, True], [False, False]])
    targets = tag_targets(tags, valid)
    alone = tag_loss(tags[:1], targets[:1])
    assert tag_loss(tags, targets, valid).item() == pytest.approx(alone.item() / 2)


def test_distances_match_references():
    torch.manual_seed(2)
    p, t = torch.rand(5, 4).clamp(0.01, 0.99), torch.rand(5, 4)
    assert torch.allclose(distance(p, t, "l1"), F.l1_loss(p, t, reduction="none"))
    assert torch.allclose(distance(p, t, "mse"), F.mse_loss(p, t, reduction="none"))
    bce = -(t * p.log() + (1 - t) * (1 - p).log())
    assert torch.allclose(distance(p, t, "bce"), bce, atol=1e-6)
    with pytest.raises(ValueError, match="unknown distance 'huber'"):
        distance(p, t, "huber")


def test_balanced_tag_average_weighs_selected_and_unselected_halves():
    from ttd.method.distill import tag_loss

    maps = torch.tensor([0.2, 0.4, 0.6, 0.8]).view(1, 4, 1, 1).expand(1, 4, 2, 2).clone()
    targets = torch.zeros_like(maps)
    selected = torch.tensor([[True, False, False, False]])
    errors = maps[0, :, 0, 0] ** 2  # MSE against 0
    assert tag_loss(maps, targets, kind="mse").item() == pytest.approx(errors.mean().item())
    balanced = tag_loss(maps, targets, kind="mse", selected=selected, average="balanced").item()
    assert balanced == pytest.approx(0.5 * errors[0].item() + 0.5 * errors[1:].mean().item())
    everything = torch.ones_like(selected)  # one group only: it takes the whole weight
    assert tag_loss(maps, targets, kind="mse", selected=everything, average="balanced").item() == pytest.approx(errors.mean().item())
    with pytest.raises(ValueError, match="needs the selection"):
        tag_loss(maps, targets, average="balanced")
