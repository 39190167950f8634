"""On-disk cache of class text embeddings, so the same vocabulary is encoded once per model.

Encoding a benchmark vocabulary costs minutes on a CPU (COCO-Stuff with 80 templates and
synonyms is ≈ 13,700 prompts), far more than segmenting a few images. Entries are keyed by
(weights fingerprint, queries, templates); the fingerprint hashes the model's whole state dict
(adapter and calibration included), so any change to the weights misses the cache.
Location: ``$TTD_CACHE`` or ``~/.cache/ttd`` (none without a home folder); files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .io import REFUSED, atomic_write_bytes, fingerprint, weights_version

__all__ = ["cache_dir", "weights_fingerprint", "class_embeddings"]

_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cache_dir() -> Path | None:
    """``$TTD_CACHE``, else ``~/.cache/ttd``; ``None`` (no disk cache: embeddings are computed
    afresh) when there is no home folder either (``HOME`` unset and the user unknown to the system)."""
    if os.environ.get("TTD_CACHE"):
        return Path(os.environ["TTD_CACHE"])
    try:
        return Path.home() / ".cache" / "ttd"
    except RuntimeError:  # pathlib's "Could not determine home directory"
        return None


def weights_fingerprint(model: torch.nn.Module) -> str:
    """:func:`ttd.io.fingerprint` of every tensor in ``model.state_dict()``, memoised per model
    until any tensor is replaced or updated in place."""
    version = weights_version(model)
    memo = _FINGERPRINTS.get(model)
    if memo is None or memo[0] != version:
        memo = _FINGERPRINTS[model] = (version, fingerprint(model.state_dict().values()))
    return memo[1]


def _encode(model, queries: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Each query's prompts embedded, averaged over templates, then re-normalised → (Q, C)."""
    prompts = [t.replace("{}", q) for q in queries for t in templates]
    with torch.no_grad():
        emb = model.encode_text(prompts).float().view(len(queries), len(templates), -1)
    return torch.nn.functional.normalize(emb.mean(dim=1), dim=-1)


def class_embeddings(
    model,
    queries: Sequence[str],
    templates: Sequence[str],
    use_cache: bool = True,
) -> torch.Tensor:
    """(Q, C) text embeddings of ``queries`` under ``templates``, from the disk cache when present."""
    if not queries:
        return torch.empty(0, model.config.embed_dim, device=model.device)
    folder = cache_dir() if use_cache else None
    if folder is None:
        return _encode(model, queries, templates)
    key = json.dumps([weights_fingerprint(model), list(queries), list(templates)], ensure_ascii=False)
    path = folder / "text" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"
    if path.is_file():
        try:
            return load_file(path)["embeddings"].to(model.device)
        except (SafetensorError, OSError, KeyError):
            pass  # a damaged entry is simply recomputed and rewritten
    emb = _encode(model, queries, templates)
    try:
        atomic_write_bytes(path, save({"embeddings": emb.detach().cpu().contiguous()}, metadata={"key": key[:4096]}))
    except OSError as err:  # a read-only cache folder costs the next run time, not this one its result
        if err.errno not in REFUSED:
            raise
        warnings.warn(f"text cache not written to {path.parent} ({err.strerror}); set TTD_CACHE to a writable folder")
    return emb
