"""CLIP byte-pair tokenisation, ids identical to OpenAI CLIP.

The BPE merges and vocabulary come from ``instant-clip-tokenizer`` (a maintained Rust
implementation that ships OpenAI's vocabulary file); this module adds OpenAI's text clean-up
(ftfy, HTML unescaping, whitespace folding), the start/end-of-text tokens and truncation that
keeps the end-of-text token, and pads a batch only to its longest row.
"""

from __future__ import annotations

import html
import re
import sys
from collections.abc import Sequence
from functools import lru_cache

import ftfy
import torch
from instant_clip_tokenizer import Tokenizer as _BPE

__all__ = ["SOT", "EOT", "CONTEXT_LENGTH", "clean_text", "count_tokens", "encode", "tokenize"]

SOT, EOT = 49406, 49407
CONTEXT_LENGTH = 77
_WHITESPACE = re.compile(r"\s+")


@lru_cache(maxsize=1)
def _bpe() -> _BPE:
    return _BPE()


def clean_text(text: str) -> str:
    """OpenAI CLIP's clean-up: fix mojibake, unescape HTML twice, fold whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WHITESPACE.sub(" ", text).strip().lower()


@lru_cache(maxsize=65536)
def _encode(text: str) -> tuple[int, ...]:
    return tuple(_bpe().encode(clean_text(text)))


def encode(text: str) -> list[int]:
    """BPE ids of ``text`` without start/end-of-text tokens."""
    return list(_encode(text))


_CUT_REPORTED = []


def _report_cut(text: str, context_length: int) -> None:
    """Say once per process that texts are cut to the context (CLIP reads no further)."""
    if not _CUT_REPORTED:
        _CUT_REPORTED.append(text)
        print(f"ttd: warning: texts longer than {context_length} tokens are cut to CLIP's context, e.g. "
              f"{text[:60]!r}…; shorten them to keep their end", file=sys.stderr)


def tokenize(
    texts: str | Sequence[str],
    context_length: int = CONTEXT_LENGTH,
    pad_to_context: bool = False,
) -> torch.Tensor:
    """Token ids (N, L): start-of-text, BPE ids, end-of-text, zero padding.

    L is the longest row (capped at ``context_length``) unless ``pad_to_context``. A text too long
    is truncated to ``context_length`` with its end-of-text token kept as the last id.
    """
    if isinstance(texts, str):
        texts = [texts]
    rows = [[SOT, *_encode(t)[: context_length - 2], EOT] for t in texts]
    cut = [t for t in texts if len(_encode(t)) > context_length - 2]
    if cut:
        _report_cut(cut[0], context_length)
    width = context_length if pad_to_context else max((len(r) for r in rows), default=2)
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row)
    return out


def count_tokens(text: str) -> int:
    """Number of ids ``text`` needs, start/end-of-text included (compare with the context length)."""
    return len(_encode(text)) + 2
