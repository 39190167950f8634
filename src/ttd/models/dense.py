"""The dense-model contract every other part of ``ttd`` stands on, and its CLIP variants.

A dense model gives, for images and strings:

* ``encode_text(texts) -> (N, C)``: L2-normalised, cached while the weights do not change;
* ``encode_image(images) -> (global (B, C), dense (B, C, h, w))``: both L2-normalised, from ONE
  pass through the shared trunk: the last block runs twice, normally for the global embedding and
  modified for the dense map;
* ``heatmap(dense, text) -> (B, N, h, w)`` in [0, 1]: a learnable sigmoid calibration of the
  cosine map (TCL's Sim2Mask, ``sigmoid(w·cos + b)``, w = 10, b = −2.5 at initialisation).

The variants differ only in how the last visual block reads out per-patch tokens:

=============  ===============================================================================
``clip``       the unmodified block (raw patch tokens: the weak baseline)
``maskclip``   MaskCLIP (Zhou et al. 2022): query-key attention bypassed, each token keeps its own
               value: ``out_proj(v(ln_1 x))``; no residual, no MLP
``sclip``      SCLIP (Wang et al. 2024): correlative self-attention
               ``softmax(q qᵀ/√d) + softmax(k kᵀ/√d)`` on v, residual kept, MLP dropped
``clearclip``  ClearCLIP (Lan et al. 2024): q-q attention ``softmax(q qᵀ/√d)`` on v; residual
               and MLP dropped
``naclip``     NACLIP (Hajimiri et al. 2025): k-k attention plus a Gaussian neighbourhood prior
               (σ = 5 patches) on the logits; residual and MLP dropped
``tcl``        TCL (Cha et al. 2023): a trained masker (its own copy of the last block, a gated
               conv decoder, a per-pixel projection) on the tokens entering the last block;
               dense maps at 4× the patch grid (:mod:`.tcl`)
=============  ===============================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..io import weights_version
from .clip import CLIP, ResidualAttentionBlock
from .tokenizer import tokenize

__all__ = ["DenseCLIP", "HeatmapCalibration", "MaskCLIP", "SCLIP", "ClearCLIP", "NACLIP", "neighbourhood_prior"]

TEXT_BATCH = 256


class HeatmapCalibration(nn.Module):
    """``sigmoid(w·cos + b)``: maps cosines (≈ 0.1–0.35 for CLIP) onto [0, 1] heatmaps."""

    def __init__(self, weight: float = 10.0, bias: float = -2.5):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(float(weight)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, cosine: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.weight * cosine + self.bias)


class DenseCLIP(nn.Module):
    """A CLIP whose last visual block also gives per-patch embeddings in the text space.

    Subclasses define ``dense_tokens``; everything else (text cache, one-pass encoding, heatmaps)
    is shared, so a new training-free backbone is one small class.
    """

    name: ClassVar[str] = "clip"
    # Parameters TTD trains besides LoRA (and stores in adapters); models with trained heads add theirs.
    trainable_prefixes: ClassVar[tuple[str, ...]] = ("calibration.",)

    def __init__(self, clip: CLIP, calibration: HeatmapCalibration | None = None, source: str = "random"):
        super().__init__()
        self.clip = clip
        self.calibration = calibration or HeatmapCalibration()
        self.source = source
        # adapter state, kept by ttd.models.lora and the trainer and saved with an adapter:
        self.finetune = "lora"  # what training updates: "lora" (adapters + calibration) or "full"
        self.lora_config = None  # the LoRAConfig of injected adapters; None without (or after merging)
        self.base_fingerprint: str | None = None  # of the base weights, taken before training changes them
        self._text_cache: tuple[tuple, dict[str, torch.Tensor]] = ((), {})  # (weights version, string → embedding)

    # --- shapes -----------------------------------------------------------------------------
    @property
    def config(self):
        return self.clip.config

    @property
    def device(self) -> torch.device:
        return self.clip.text_projection.device

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    # --- images -----------------------------------------------------------------------------
    def dense_tokens(self, block: ResidualAttentionBlock, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Tokens (B, 1 + h·w, width) entering the last block → dense output tokens, same shape."""
        return block(x)

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images (B, 3, H, W) → global (B, C) and dense (B, C, h, w), L2-normalised."""
        visual = self.clip.visual
        x, (h, w) = visual.trunk(images)
        block = visual.last_block
        global_emb = visual.pooled(block(x))
        patches = visual.project(self.dense_tokens(block, x, (h, w))[:, 1:])
        dense = patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return F.normalize(global_emb, dim=-1), F.normalize(dense, dim=1)

    # --- text -------------------------------------------------------------------------------
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids → L2-normalised text embeddings, never cached (use this when training)."""
        return self.clip.encode_tokens(tokens.to(self.device), normalize=True)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings → (N, C) L2-normalised embeddings; each distinct string is encoded once.

        In eval mode results are cached per string until any weight changes; in training mode
        nothing is cached and gradients flow.
        """
        if isinstance(texts, str):
            texts = [texts]
        if self.training:
            return self._encode_unique(list(dict.fromkeys(texts)), texts)
        # The (version, dict) pair is read and replaced as one object and only this local dict is used
        # below, so concurrent callers (the demo's requests) never see another's reset half-way.
        version, (key, cache) = weights_version(self), self._text_cache
        if key != version:  # any change to the weights invalidates cached text embeddings
            cache = {}
            self._text_cache = version, cache
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            with torch.no_grad():
                embedded = self._encode_unique(missing, missing)
            cache.update(zip(missing, embedded))
        if not texts:
            return torch.empty(0, self.config.embed_dim, device=self.device)
        return torch.stack([cache[t] for t in texts])

    def _encode_unique(self, unique: list[str], texts: Sequence[str]) -> torch.Tensor:
        # Shortest first, so each chunk pads only to its own longest row.
        order = sorted(range(len(unique)), key=lambda i: len(unique[i]))
        chunks = []
        for start in range(0, len(order), TEXT_BATCH):
            chunk = [unique[i] for i in order[start : start + TEXT_BATCH]]
            chunks.append(self.encode_tokens(tokenize(chunk, self.config.context_length)))
        if not chunks:
            return torch.empty(0, self.config.embed_dim, device=self.device)
        embedded = torch.cat(chunks)[torch.argsort(torch.tensor(order))]
        index = {t: i for i, t in enumerate(unique)}
        return embedded[[index[t] for t in texts]]

    def fingerprint_tensors(self) -> list[torch.Tensor]:
        """Base tensors LoRA never changes: their hash ties an adapter to these weights."""
        sd = self.clip.state_dict()
        return [sd[k] for k in ("visual.conv1.weight", "token_embedding.weight", "positional_embedding")]

    def clear_text_cache(self) -> None:
        self._text_cache = (), {}

    # --- heatmaps ---------------------------------------------------------------------------
    def _text_embeddings(self, text: Sequence[str] | torch.Tensor) -> torch.Tensor:
        return text if isinstance(text, torch.Tensor) else self.encode_text(text)

    def similarity(self, dense: torch.Tensor, text: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Cosine maps (B, N, h, w). ``text``: strings, (N, C) shared, or (B, N, C) per image."""
        emb = self._text_embeddings(text).to(dense.dtype)
        if emb.ndim == 2:
            return torch.einsum("bchw,nc->bnhw", dense, emb)
        return torch.einsum("bchw,bnc->bnhw", dense, emb)

    def heatmap(self, dense: torch.Tensor, text: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Calibrated heatmaps (B, N, h, w) in [0, 1]."""
        return self.calibration(self.similarity(dense, text))

    def train(self, mode: bool = True):
        self.clear_text_cache()
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"variant={self.name!r}, source={self.source!r}"


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class MaskCLIP(DenseCLIP):
    name = "maskclip"

    def dense_tokens(self, block, x, grid):
        _, _, v = block.attn.qkv(block.ln_1(x))
        return block.attn.project_out(v)


class SCLIP(DenseCLIP):
    name = "sclip"

    def dense_tokens(self, block, x, grid):
        q, k, v = block.attn.qkv(block.ln_1(x))
        return x + block.attn.project_out(_attend(q, q, v) + _attend(k, k, v))


class ClearCLIP(DenseCLIP):
    name = "clearclip"

    def dense_tokens(self, block, x, grid):
        q, _, v = block.attn.qkv(block.ln_1(x))
        return block.attn.project_out(_attend(q, q, v))


def neighbourhood_prior(h: int, w: int, std: float, device=None, dtype=None) -> torch.Tensor:
    """NACLIP's additive attention prior (1+hw, 1+hw): a Gaussian of patch distance, 0 for CLS."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], dim=1).to(torch.float32)
    gauss = torch.exp(-torch.cdist(pos, pos).square() / (2 * std**2))
    prior = torch.zeros(h * w + 1, h * w + 1, device=device)
    prior[1:, 1:] = gauss
    return prior.to(dtype)


class NACLIP(DenseCLIP):
    name = "naclip"
    gaussian_std: float = 5.0

    def dense_tokens(self, block, x, grid):
        _, k, v = block.attn.qkv(block.ln_1(x))
        prior = neighbourhood_prior(*grid, self.gaussian_std, x.device, x.dtype)
        return block.attn.project_out(_attend(k, k, v, prior))
