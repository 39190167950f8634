"""CLIP's ViT image tower and text transformer in plain torch.

Parameter names are exactly those of OpenAI CLIP / open_clip (``visual.conv1.weight``,
``transformer.resblocks.0.attn.in_proj_weight`` …), so their state dicts load without renaming.
Attention runs through ``F.scaled_dot_product_attention`` in a batch-first layout; the positional
embedding is interpolated on the fly so any input size works (448² windows, non-square images).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CLIPConfig", "CLIP", "config_from_state_dict"]


POOLS = ("cls", "avg", "max")


@dataclass(frozen=True)
class CLIPConfig:
    """Shapes of a ViT CLIP. Defaults are OpenAI's ViT-B/16."""

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    quick_gelu: bool = True
    pool: str = "cls"  # global image embedding: "cls" (OpenAI), "avg" or "max" (over the projected patch tokens)

    def __post_init__(self):
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; choose one of: {', '.join(POOLS)}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)

    def check_input_size(self, size: int, flag: str = "--image-size") -> None:
        """An input smaller than one patch has no patch token: a one-line error, not a shape crash."""
        from ..errors import TTDError

        if size < self.patch_size:
            raise TTDError(f"{flag} {size} is smaller than the model's {self.patch_size}-pixel patches; "
                           f"use at least {self.patch_size} (the model's own size is {self.image_size})")

    @classmethod
    def from_file(cls, path) -> CLIPConfig:
        """The fields in a YAML (or JSON) file, e.g. ``ttd pretrain --clip-config``; one-line errors."""
        import yaml

        from ..errors import TTDError

        try:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
        except OSError as err:
            raise TTDError(f"cannot read the CLIP config {path}: {err.strerror}") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known) if isinstance(values, dict) else ["<not a mapping>"]
        if unknown:
            raise TTDError(f"CLIP config {path}: unknown field {unknown[0]!r}; fields: {', '.join(sorted(known))}")
        return cls(**values)


class QuickGELU(nn.Module):
    """The GELU approximation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names, run by SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, C) tokens → q, k, v, each (B, heads, L, C/heads)."""
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        return qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)

    def project_out(self, heads: torch.Tensor) -> torch.Tensor:
        """(B, heads, L, d) per-head values → (B, L, C) through the output projection."""
        b, h, n, d = heads.shape
        return self.out_proj(heads.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        q, k, v = self.qkv(x)
        return self.project_out(F.scaled_dot_product_attention(q, k, v, is_causal=causal))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, quick_gelu: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, 4 * width),
                gelu=QuickGELU() if quick_gelu else nn.GELU(),
                c_proj=nn.Linear(4 * width, width),
            )
        )

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, quick_gelu: bool):
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, quick_gelu) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal=causal)
        return x


class VisionTransformer(nn.Module):
    """CLIP's image tower. ``trunk`` stops before the last block so dense readouts can branch off."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        width, scale = cfg.vision_width, cfg.vision_width**-0.5
        self.patch_size = cfg.patch_size
        self.grid_size = cfg.grid_size
        self.conv1 = nn.Conv2d(3, width, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid_size**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads, cfg.quick_gelu)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, cfg.embed_dim))
        self.pool = cfg.pool

    def interpolated_positions(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding for an h×w patch grid (bicubic; the identity at the trained size)."""
        pos = self.positional_embedding
        if (h, w) == (self.grid_size, self.grid_size):
            return pos
        g = self.grid_size
        grid = pos[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False)
        grid = grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(h * w, -1)
        return torch.cat([pos[:1], grid])

    def trunk(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens entering the LAST block, (B, 1 + h·w, width), and the patch grid (h, w)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        p = self.patch_size
        if images.shape[-2] < p or images.shape[-1] < p:
            raise ValueError(f"image of size {tuple(images.shape[-2:])} is smaller than a {p}px patch")
        x = self.conv1(images)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.interpolated_positions(h, w).to(x.dtype)
        x = self.ln_pre(x)
        for block in self.transformer.resblocks[:-1]:
            x = block(x)
        return x, (h, w)

    @property
    def last_block(self) -> ResidualAttentionBlock:
        return self.transformer.resblocks[-1]

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final tokens → the joint embedding space (ln_post then the image projection)."""
        return self.ln_post(tokens) @ self.proj

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """Last-block output tokens (B, 1 + h·w, width) → the global embedding (B, embed_dim).

        ``avg`` and ``max`` pool the projected patch tokens, so the global embedding is built from
        the raw per-patch readout itself: ``avg`` its mean (open_clip's ``pool_type="avg"``),
        ``max`` its per-channel maximum (CLIPpy's choice). Under ``max`` each channel's gradient
        reaches only the patch holding its maximum, so InfoNCE alone pushes each patch towards
        the words of what it shows, where ``avg`` lets every patch carry the whole image.
        """
        if self.pool == "avg":
            return self.project(tokens[:, 1:]).mean(dim=1)
        if self.pool == "max":
            return self.project(tokens[:, 1:]).amax(dim=1)
        return self.project(tokens[:, 0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x, _ = self.trunk(images)
        return self.pooled(self.last_block(x))


class CLIP(nn.Module):
    """CLIP with OpenAI's module layout: ``visual`` plus the text tower at the top level."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.visual = VisionTransformer(cfg)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, cfg.text_width))
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.quick_gelu)
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(cfg.text_width**-0.5 * torch.randn(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_tokens(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids (N, L ≤ context) → text embeddings at each row's end-of-text token.

        Rows may be padded to any common length L: the causal mask keeps padding after the
        end-of-text token out of its feature, so short tags need not be padded to 77.
        """
        n = tokens.shape[1]
        if n > self.config.context_length:
            raise ValueError(f"{n} tokens exceed the context length {self.config.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        x = self.ln_final(self.transformer(x, causal=True))
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)] @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x


_LAYER = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$")


def config_from_state_dict(
    state_dict: dict[str, torch.Tensor],
    quick_gelu: bool = True,
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> CLIPConfig:
    """Infer a ViT CLIP's configuration from the shapes in its (OpenAI-named) state dict.

    Head counts are not stored in a state dict: OpenAI and open_clip use width / 64, which is the
    default here; pass them explicitly for models built otherwise.
    """
    if "visual.conv1.weight" not in state_dict:
        hint = " (a ResNet CLIP: only ViT CLIPs are supported)" if "visual.layer1.0.conv1.weight" in state_dict else ""
        raise ValueError(f"not a CLIP ViT state dict: 'visual.conv1.weight' is missing{hint}")
    vision_layers = text_layers = 0
    for key in state_dict:
        m = _LAYER.match(key)
        if m:
            if m.group(1):
                vision_layers = max(vision_layers, int(m.group(2)) + 1)
            else:
                text_layers = max(text_layers, int(m.group(2)) + 1)
    conv = state_dict["visual.conv1.weight"]
    vision_width, patch = conv.shape[0], conv.shape[-1]
    grid = math.isqrt(state_dict["visual.positional_embedding"].shape[0] - 1)
    text_width = state_dict["ln_final.weight"].shape[0]
    return CLIPConfig(
        embed_dim=state_dict["text_projection"].shape[1],
        image_size=grid * patch,
        patch_size=patch,
        vision_width=vision_width,
        vision_layers=vision_layers,
        vision_heads=vision_heads or max(1, vision_width // 64),
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        text_width=text_width,
        text_layers=text_layers,
        text_heads=text_heads or max(1, text_width // 64),
        quick_gelu=quick_gelu,
    )
