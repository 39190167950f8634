"""Candidate tags of a caption and the tag scores of TTD step 1 (METHOD §3–§4).

The score functions are pure tensor functions of embeddings, so training (online selection with
the current model) and evaluation share one definition.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import torch

__all__ = [
    "candidate_tags",
    "normalize_scores",
    "image_tag_scores",
    "text_tag_scores",
    "pixel_tag_scores",
]

CLIP_LOGIT_SCALE = 100.0
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}“”‘’«»…—–]")


def candidate_tags(caption: str) -> list[str]:
    """The paper's candidates: every whitespace word, lower-cased, punctuation stripped,
    duplicates removed (first occurrence kept), stop words kept."""
    words = (_PUNCT.sub("", w.lower()) for w in caption.split())
    return list(dict.fromkeys(w for w in words if w))


def normalize_scores(logits: torch.Tensor, mode: str = "softmax", dim: int = -1) -> torch.Tensor:
    """Normalise similarities across the candidate axis ``dim``.

    ``softmax``: softmax of ``100·cos`` (CLIP's logit scale); ``minmax``: (x − min)/(max − min);
    ``none``: the cosines themselves.
    """
    if mode == "softmax":
        return torch.softmax(CLIP_LOGIT_SCALE * logits, dim=dim)
    if mode == "minmax":
        lo, hi = logits.amin(dim=dim, keepdim=True), logits.amax(dim=dim, keepdim=True)
        return (logits - lo) / (hi - lo).clamp_min(1e-12)
    if mode == "none":
        return logits
    raise ValueError(f"unknown score normalisation {mode!r}; choose softmax, minmax or none")


def image_tag_scores(image_emb: torch.Tensor, tag_emb: torch.Tensor, mode: str = "softmax") -> torch.Tensor:
    """Eq. 1: ``s_image(t_k) = softmax_k(100·<f(I), g(t_k)>)``. (C,), (N, C) → (N,)."""
    return normalize_scores(tag_emb @ image_emb, mode)


def text_tag_scores(caption_emb: torch.Tensor, tag_emb: torch.Tensor, mode: str = "softmax") -> torch.Tensor:
    """Eq. 7: ``s_text(t_k) = softmax_k(100·<g(T), g(t_k)>)``. (C,), (N, C) → (N,)."""
    return normalize_scores(tag_emb @ caption_emb, mode)


def pixel_tag_scores(tag_cosines: torch.Tensor, mode: str = "softmax", valid: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2: ``s_pixel(t_k) = max_p softmax_k(100·cos_{t_k}(p))``.

    ``tag_cosines``: (..., N, h, w) cosine maps of N candidates; the normalisation runs across
    the N candidates at every location, then the maximum is taken over locations. ``valid``
    (..., N) marks real candidates when rows are padded; padded ones score 0.
    """
    logits = tag_cosines
    if valid is not None:
        fill = torch.finfo(logits.dtype).min if mode == "softmax" else 0.0
        logits = logits.masked_fill(~valid[..., None, None], fill)
    per_location = normalize_scores(logits, mode, dim=-3)
    scores = per_location.flatten(-2).amax(dim=-1)
    return scores if valid is None else scores * valid
