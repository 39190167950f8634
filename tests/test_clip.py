"""CLIP towers against a reference written with torch's own nn.MultiheadAttention math."""

import pytest
import torch
import torch.nn.functional as F

from ttd.models import CLIP, CLIPConfig, config_from_state_dict
from ttd.models.tokenizer import tokenize


def _mha(block, x, causal=False):
    """OpenAI CLIP's block: nn.MultiheadAttention in (L, N, C) layout, then the MLP."""
    h = block.ln_1(x).transpose(0, 1)
    n = h.shape[0]
    mask = torch.full((n, n), float("-inf")).triu(1) if causal else None
    a, _ = F.multi_head_attention_forward(
        h, h, h, h.shape[-1], block.attn.heads,
        block.attn.in_proj_weight, block.attn.in_proj_bias, None, None, False, 0.0,
        block.attn.out_proj.weight, block.attn.out_proj.bias, need_weights=False, attn_mask=mask,
    )
    x = x + a.transpose(0, 1)
    return x + block.mlp(block.ln_2(x))


def reference_image(clip, images):
    v = clip.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    x = v.ln_pre(x)
    for block in v.transformer.resblocks:
        x = _mha(block, x)
    return v.ln_post(x[:, 0]) @ v.proj


def reference_text(clip, tokens):
    x = clip.token_embedding(tokens) + clip.positional_embedding[: tokens.shape[1]]
    for block in clip.transformer.resblocks:
        x = _mha(block, x, causal=True)
    x = clip.ln_final(x)
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ clip.text_projection


@pytest.fixture
def clip(tiny_config):
    torch.manual_seed(0)
    return CLIP(tiny_config).eval()


def test_image_tower_matches_reference(clip):
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_image(images), reference_image(clip, images), atol=1e-5, rtol=1e-5)


def test_text_tower_matches_reference_at_full_context(clip):
    tokens = tokenize(["a photo of a cat", "woman spends time in a jacuzzi"], pad_to_context=True)
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_tokens(tokens), reference_text(clip, tokens), atol=1e-5, rtol=1e-5)


def test_padding_length_does_not_change_text_embedding(clip):
    short = tokenize(["a dog", "a photo of a cat"])
    full = tokenize(["a dog", "a photo of a cat"], pad_to_context=True)
    with torch.no_grad():
        torch.testing.assert_close(clip.encode_tokens(short), clip.encode_tokens(full), atol=1e-6, rtol=1e-6)


def test_positional_interpolation_is_identity_at_training_size(clip):
    g = clip.visual.grid_size
    assert clip.visual.interpolated_positions(g, g) is clip.visual.positional_embedding


def test_interpolated_positions_keep_shape_and_class_token(clip):
    pos = clip.visual.interpolated_positions(3, 7)
    assert pos.shape == (1 + 21, clip.config.vision_width)
    torch.testing.assert_close(pos[0], clip.visual.positional_embedding[0])


def test_non_square_and_larger_inputs(clip):
    with torch.no_grad():
        tokens, grid = clip.visual.trunk(torch.randn(2, 3, 40, 72))
    assert grid == (5, 9) and tokens.shape == (2, 1 + 45, clip.config.vision_width)


def test_config_round_trips_through_state_dict(tiny_config):
    sd = CLIP(tiny_config).state_dict()
    cfg = config_from_state_dict(sd, quick_gelu=True, vision_heads=2, text_heads=2)
    assert cfg == tiny_config


def test_config_default_heads_follow_openai_convention():
    cfg = config_from_state_dict(CLIP(CLIPConfig(vision_layers=1, text_layers=1)).state_dict())
    assert (cfg.vision_heads, cfg.text_heads) == (12, 8)


def test_bad_inputs_raise_clear_errors(clip):
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        clip.visual.trunk(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="smaller than a 8px patch"):
        clip.visual.trunk(torch.randn(1, 3, 4, 32))
    with pytest.raises(ValueError, match="exceed the context length"):
        clip.encode_tokens(torch.ones(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="ResNet CLIP"):
        config_from_state_dict({"visual.layer1.0.conv1.weight": torch.zeros(1)})
