import pytest
import torch
import torch.nn.functional as F

from ttd.pamr import _neighbours, affinity, pamr


def _reference_pamr(image, mask, iterations, dilations):
    """PAMR written the paper's way: shift kernels as grouped convolutions."""
    offsets = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]

    def gather(x, with_centre):
        b, k, h, w = x.shape
        kernels = torch.zeros(9 if with_centre else 8, 1, 3, 3)
        for i, (r, c) in enumerate(offsets + ([(1, 1)] if with_centre else [])):
            kernels[i, 0, r, c] = 1
        out = [F.conv2d(F.pad(x.reshape(b * k, 1, h, w), [d] * 4, mode="replicate"), kernels, dilation=d) for d in dilations]
        return torch.cat(out, 1).view(b, k, -1, h, w)

    std = gather(image, True).std(2, keepdim=True)
    diff = (image.unsqueeze(2) - gather(image, False)).abs()
    weights = (-diff / (1e-8 + 0.1 * std)).mean(1, keepdim=True).softmax(2)
    for _ in range(iterations):
        mask = (gather(mask, False) * weights).sum(2)
    return mask


def test_matches_convolutional_reference():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 19, 23, generator=g)
    mask = torch.rand(2, 4, 19, 23, generator=g)
    ours = pamr(image, mask, iterations=3, dilations=(1, 2, 4))
    ref = _reference_pamr(image, mask, 3, (1, 2, 4))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_constant_mask_stays_constant():
    image = torch.rand(1, 3, 30, 20, generator=torch.Generator().manual_seed(1))
    mask = torch.full((1, 3, 30, 20), 0.37)
    mask[:, 1] = 0.9
    out = pamr(image, mask, iterations=10, dilations=(1, 2, 4, 8, 12, 24))  # dilations beyond the image size too
    assert torch.allclose(out, mask, atol=1e-6)


def test_affinity_is_a_distribution_over_neighbours():
    w = affinity(torch.rand(1, 3, 9, 11), (1, 3))
    assert w.shape == (1, 16, 9, 11)
    assert torch.allclose(w.sum(1), torch.ones(1, 9, 11), atol=1e-6)


def test_refinement_follows_image_edges():
    # left half dark, right half bright; a blurry score ramp should sharpen toward the edge
    image = torch.zeros(1, 3, 16, 32)
    image[..., 16:] = 1.0
    image += 0.01 * torch.rand(1, 3, 16, 32, generator=torch.Generator().manual_seed(2))
    ramp = torch.linspace(0, 1, 32).expand(1, 1, 16, 32).clone()
    out = pamr(image, ramp, iterations=10, dilations=(1, 2))
    left, right = out[..., 2:14].mean(), out[..., 18:30].mean()
    assert right - left > ramp[..., 18:30].mean() - ramp[..., 2:14].mean()


def test_size_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ in size"):
        pamr(torch.rand(1, 3, 8, 8), torch.rand(1, 2, 4, 4))


def test_equals_the_plain_loop_and_keeps_the_thread_setting():
    import ttd.pamr as pamr_module

    torch.manual_seed(0)
    image = F.interpolate(torch.rand(2, 3, 5, 6), size=(30, 37), mode="bicubic", align_corners=False).clamp(0, 1)
    scores = torch.rand(2, 4, 30, 37)
    dilations = (1, 2, 4)
    weights = affinity(image, dilations)
    expected = scores
    for _ in range(5):  # the textbook loop: zeros, then one multiply-add per neighbour
        refined = torch.zeros_like(expected)
        for k, shifted in enumerate(_neighbours(expected, dilations, centre=False)):
            refined.addcmul_(shifted, weights[:, k : k + 1])
        expected = refined
    threads = torch.get_num_threads()
    for setting in (1, None):
        pamr_module.PAMR_THREADS = setting
        try:
            assert torch.allclose(pamr(image, scores, 5, dilations), expected, atol=1e-5)
        finally:
            pamr_module.PAMR_THREADS = 1
        assert torch.get_num_threads() == threads
