"""Each dense variant against a hand-written computation of its last block; the shared contract."""

import math

import pytest
import torch

from ttd.models import DENSE_VARIANTS, dense_variant


def _heads(block, x):
    """Per-head q, k, v (B, H, L, d) computed from the raw fused projection."""
    b, n, c = x.shape
    h = block.attn.heads
    w, bias = block.attn.in_proj_weight, block.attn.in_proj_bias
    y = block.ln_1(x)
    q, k, v = (y @ w[i * c : (i + 1) * c].T + bias[i * c : (i + 1) * c] for i in range(3))
    return [t.reshape(b, n, h, c // h).permute(0, 2, 1, 3) for t in (q, k, v)]


def _out(block, heads):
    b, h, n, d = heads.shape
    return heads.permute(0, 2, 1, 3).reshape(b, n, h * d) @ block.attn.out_proj.weight.T + block.attn.out_proj.bias


def _softmax_attn(a, b, v, bias=0.0):
    logits = a @ b.transpose(-1, -2) / math.sqrt(a.shape[-1]) + bias
    return logits.softmax(-1) @ v


def _gaussian_prior(h, w, std):
    cells = [(i, j) for i in range(h) for j in range(w)]
    prior = torch.zeros(h * w + 1, h * w + 1)
    for p, (i1, j1) in enumerate(cells):
        for q, (i2, j2) in enumerate(cells):
            prior[p + 1, q + 1] = math.exp(-((i1 - i2) ** 2 + (j1 - j2) ** 2) / (2 * std**2))
    return prior


def reference_last_block(name, block, x, grid):
    q, k, v = _heads(block, x)
    if name == "clip":
        return block(x)
    if name == "maskclip":
        return _out(block, v)
    if name == "sclip":
        return x + _out(block, _softmax_attn(q, q, v) + _softmax_attn(k, k, v))
    if name == "clearclip":
        return _out(block, _softmax_attn(q, q, v))
    if name == "naclip":
        return _out(block, _softmax_attn(k, k, v, _gaussian_prior(*grid, std=5.0)))
    raise AssertionError(name)


@pytest.mark.parametrize("name", [n for n in DENSE_VARIANTS if n != "tcl"])  # TCL: tests/test_tcl.py
def test_dense_map_matches_hand_written_last_block(tiny_model, name):
    model = tiny_model(name)
    images = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        _, dense = model.encode_image(images)
        x, grid = model.clip.visual.trunk(images)
        tokens = reference_last_block(name, model.clip.visual.last_block, x, grid)
        expected = model.clip.visual.ln_post(tokens[:, 1:]) @ model.clip.visual.proj
        expected = torch.nn.functional.normalize(expected, dim=-1).transpose(1, 2).reshape(2, -1, *grid)
    torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["maskclip", "naclip"])
def test_global_embedding_is_the_plain_clip_one(tiny_model, name):
    model = tiny_model(name)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        global_emb, _ = model.encode_image(images)
        plain = torch.nn.functional.normalize(model.clip.encode_image(images), dim=-1)
    torch.testing.assert_close(global_emb, plain, atol=1e-6, rtol=1e-6)


def test_outputs_are_unit_norm_and_heatmaps_in_unit_interval(tiny_model):
    model = tiny_model()
    with torch.no_grad():
        g, d = model.encode_image(torch.randn(2, 3, 32, 32))
        t = model.encode_text(["a cat", "a dog", "grass"])
        hm = model.heatmap(d, ["a cat", "a dog", "grass"])
    torch.testing.assert_close(g.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(d.norm(dim=1), torch.ones(2, 4, 4))
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))
    assert hm.shape == (2, 3, 4, 4) and hm.min() >= 0 and hm.max() <= 1


def test_heatmap_is_calibrated_sigmoid_of_cosine(tiny_model):
    model = tiny_model()
    with torch.no_grad():
        _, d = model.encode_image(torch.randn(1, 3, 32, 32))
        emb = model.encode_text(["a cat"])
        cos = torch.einsum("bchw,nc->bnhw", d, emb)
        torch.testing.assert_close(model.heatmap(d, emb), torch.sigmoid(10 * cos - 2.5))
        per_image = model.heatmap(d, emb[None])
    torch.testing.assert_close(per_image, torch.sigmoid(10 * cos - 2.5))


def test_text_cache_encodes_each_string_once_and_follows_weight_changes(tiny_model):
    model = tiny_model()
    calls = []
    original = model.encode_tokens
    model.encode_tokens = lambda tokens: calls.append(len(tokens)) or original(tokens)
    first = model.encode_text(["a cat", "a dog", "a cat"])
    again = model.encode_text(["a dog", "a cat"])
    assert calls == [2]
    torch.testing.assert_close(again, first[[1, 0]])
    with torch.no_grad():
        model.clip.text_projection.mul_(2)  # an in-place update, as an optimiser step makes
    model.encode_text(["a cat"])
    assert calls == [2, 1]


def test_text_in_training_mode_is_uncached_and_differentiable(tiny_model):
    model = tiny_model().train()
    emb = model.encode_text(["a cat", "a dog", "a cat"])
    assert emb.requires_grad
    torch.testing.assert_close(emb[0], emb[2])
    assert model._text_cache[1] == {}


def test_batched_text_equals_one_by_one(tiny_model):
    model = tiny_model()
    texts = [f"a photo of {'a very ' * i}big cat" for i in range(7)]
    batched = model.encode_text(texts)
    model.clear_text_cache()
    single = torch.cat([model.encode_text([t]) for t in texts])
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=1e-6)


def test_unknown_variant_lists_known_ones():
    with pytest.raises(ValueError, match="unknown dense variant 'segclip'; choose one of: clip, maskclip"):
        dense_variant("segclip")


@pytest.mark.parametrize("pool, reduce", [("avg", lambda p: p.mean(dim=1)), ("max", lambda p: p.amax(dim=1))])
def test_patch_pooled_global_embedding_pools_the_raw_patch_readout(tiny_model, pool, reduce):
    model = tiny_model("clip", pool=pool)
    images = torch.randn(2, 3, 32, 32)
    visual = model.clip.visual
    x, _ = visual.trunk(images)
    patches = visual.project(visual.last_block(x)[:, 1:])  # the raw readout, before normalisation
    global_emb, dense = model.encode_image(images)
    assert torch.allclose(global_emb, torch.nn.functional.normalize(reduce(patches), dim=-1), atol=1e-6)
    assert torch.allclose(model.clip.encode_image(images, normalize=True), global_emb, atol=1e-6)


def test_unknown_pool_lists_known_ones(tiny_model):
    with pytest.raises(ValueError, match="unknown pool 'attn'; choose one of: cls, avg, max"):
        tiny_model(pool="attn")
