"""Candidate tags of a caption and TTD step 1: tag scoring and selection (METHOD §3–§4).

* candidates: every word of the caption (:func:`candidate_tags`), padded per batch (:func:`batch_tags`);
* scores: ``s_image`` (Eq. 1, :func:`image_tag_scores`), ``s_pixel`` (Eq. 2, :func:`pixel_tag_scores`),
  ``s_text`` (Eq. 7, :func:`text_tag_scores`), normalised across the candidates (:func:`normalize_scores`);
* selection: ``s(t_k) ≥ τ`` (:func:`select_tags`), with every setting in one frozen
  :class:`TagSelection` that the selector, the training objective, the Table 2 evaluation and the
  training configuration share.

The score functions are pure tensor functions of embeddings, so training (online selection with
the current model) and evaluation share one definition. :class:`TagSelector` runs them on a model
for many captions at once: every image of a batch goes through ONE ``encode_image`` call, every
distinct string through the model's (deduplicating, caching) ``encode_text`` once, and ragged
candidate lists are padded to the longest with a ``valid`` mask.
"""

from __future__ import annotations

import os
import re
import string
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import TTDError
from ..io import asset

__all__ = [
    "SCORINGS",
    "NORMALIZATIONS",
    "TAG_SCORERS",
    "SelectionInputs",
    "TagBatch",
    "TagSelection",
    "TagScore",
    "TagScores",
    "TagSelector",
    "batch_tags",
    "candidate_tags",
    "check_scorings",
    "check_template",
    "clean_word",
    "english_stopwords",
    "tag_candidates",
    "tag_prompt",
    "normalize_scores",
    "image_tag_scores",
    "text_tag_scores",
    "pixel_tag_scores",
    "select_tags",
    "register_tag_scorer",
]

CLIP_LOGIT_SCALE = 100.0
NORMALIZATIONS = ("softmax", "minmax", "none")
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}“”‘’«»…—–\x00-\x1f\x7f]")  # and control characters (NUL)


# --- candidates -----------------------------------------------------------------------------
def clean_word(word: str) -> str:
    """One whitespace word as a candidate: lower-cased, punctuation and control characters stripped
    (may become '')."""
    return _PUNCT.sub("", word.lower())


def candidate_tags(caption: str, stopwords: bool = False) -> list[str]:
    """The paper's candidates: every whitespace word, lower-cased, punctuation stripped,
    duplicates removed (first occurrence kept), stop words kept unless ``stopwords``."""
    words = (clean_word(w) for w in caption.split())
    words = list(dict.fromkeys(w for w in words if w))
    if stopwords:
        stop = english_stopwords()
        words = [w for w in words if w not in stop]
    return words


@lru_cache(maxsize=1)
def english_stopwords() -> frozenset[str]:
    """The fixed English stop-word list of the ``stopwords`` option (``ttd/assets/stopwords_en.txt``)."""
    text = asset("stopwords_en.txt").read_text(encoding="utf-8")
    return frozenset(w for w in (line.strip() for line in text.splitlines()) if w and not w.startswith("#"))


def _quote(text: str, limit: int = 60) -> str:
    """A caption for a one-line message: quoted, long ones cut with an ellipsis."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def tag_candidates(caption: str, stopwords: bool = False) -> list[str]:
    """:func:`candidate_tags` of user input, checked: a caption must be a string with words.

    A caption without any word (empty, only punctuation) is an error; a caption made only of stop
    words has no candidates under ``stopwords=True`` (an empty list, not an error).
    """
    if not isinstance(caption, str):
        raise TTDError(f"a caption must be a string, got {type(caption).__name__}")
    if not candidate_tags(caption):
        raise TTDError(f"caption {_quote(caption)} has no words to tag (empty or only punctuation); give a caption with words")
    return candidate_tags(caption, stopwords)


@dataclass
class TagBatch:
    """The candidate tags of a batch of captions, padded: ``words[b][k]`` is embedded as
    ``unique[index[b, k]]`` where ``valid[b, k]``; padding sits after each row's tags."""

    words: list[list[str]]
    unique: list[str]
    index: torch.Tensor  # (B, N) long
    valid: torch.Tensor  # (B, N) bool


def batch_tags(captions: Sequence[str], tagger: Callable[[str], list[str]] = candidate_tags) -> TagBatch:
    """The candidates of every caption, each distinct word once (embed ``unique``, then index)."""
    words = [tagger(c) for c in captions]
    unique = list(dict.fromkeys(w for row in words for w in row))
    position = {w: i for i, w in enumerate(unique)}
    width = max((len(row) for row in words), default=0)
    index = torch.zeros(len(words), width, dtype=torch.long)
    valid = torch.zeros(len(words), width, dtype=torch.bool)
    for b, row in enumerate(words):
        index[b, : len(row)] = torch.tensor([position[w] for w in row], dtype=torch.long)
        valid[b, : len(row)] = True
    return TagBatch(words, unique, index, valid)


def check_template(template: str | None) -> None:
    if template is None:
        return
    try:
        ok = isinstance(template, str) and template.count("{}") == 1 and template.format("x") is not None
    except (IndexError, KeyError, ValueError):
        ok = False
    if not ok:
        raise TTDError(f"tag template {template!r} must contain '{{}}' exactly once and no other braces, e.g. 'a photo of a {{}}.'")


def tag_prompt(word: str, template: str | None = None) -> str:
    """The string embedded for a tag: the raw word (paper default) or ``template.format(word)``."""
    return word if template is None else template.format(word)


def _warn_if_truncated(text: str, what: str, context_length: int) -> None:
    from ..models.tokenizer import count_tokens

    n = count_tokens(text)
    if n > context_length:
        warnings.warn(
            f"{what} {_quote(text)} has {n} tokens, more than the text context of {context_length}: "
            "its embedding is truncated",
            stacklevel=4,  # the caller of TagSelector.score_batch
        )


# --- scores (pure functions) ----------------------------------------------------------------
def normalize_scores(
    logits: torch.Tensor, mode: str = "softmax", dim: int = -1, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalise similarities across the candidate axis ``dim``.

    ``softmax``: softmax of ``100·cos`` (CLIP's logit scale); ``minmax``: (x − min)/(max − min);
    ``none``: the cosines themselves. ``valid`` (broadcastable to ``logits``) marks real
    candidates of padded rows: padding takes no part in the normalisation and scores 0.
    """
    if mode not in NORMALIZATIONS:
        raise TTDError(f"unknown score normalisation {mode!r}; choose softmax, minmax or none")
    if mode == "softmax":
        scaled = CLIP_LOGIT_SCALE * logits
        if valid is not None:
            scaled = scaled.masked_fill(~valid, torch.finfo(scaled.dtype).min)
        out = torch.softmax(scaled, dim=dim)
    elif mode == "minmax":
        lo_in, hi_in = logits, logits
        if valid is not None:
            lo_in, hi_in = logits.masked_fill(~valid, float("inf")), logits.masked_fill(~valid, float("-inf"))
        lo, hi = lo_in.amin(dim=dim, keepdim=True), hi_in.amax(dim=dim, keepdim=True)
        out = (logits - lo) / (hi - lo).clamp_min(1e-12)
    else:
        out = logits
    return out if valid is None else out.masked_fill(~valid, 0.0)


def _tag_logits(query: torch.Tensor, tag_emb: torch.Tensor) -> torch.Tensor:
    return torch.einsum("...c,...nc->...n", query, tag_emb)


def image_tag_scores(
    image_emb: torch.Tensor, tag_emb: torch.Tensor, mode: str = "softmax", valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 1: ``s_image(t_k) = softmax_k(100·<f(I), g(t_k)>)``. (…, C), (…, N, C) → (…, N)."""
    return normalize_scores(_tag_logits(image_emb, tag_emb), mode, valid=valid)


def text_tag_scores(
    caption_emb: torch.Tensor, tag_emb: torch.Tensor, mode: str = "softmax", valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Eq. 7: ``s_text(t_k) = softmax_k(100·<g(T), g(t_k)>)``. (…, C), (…, N, C) → (…, N)."""
    return normalize_scores(_tag_logits(caption_emb, tag_emb), mode, valid=valid)


def pixel_tag_scores(tag_cosines: torch.Tensor, mode: str = "softmax", valid: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2: ``s_pixel(t_k) = max_p softmax_k(100·cos_{t_k}(p))``.

    ``tag_cosines``: (..., N, h, w) cosine maps of N candidates; the normalisation runs across
    the N candidates at every location, then the maximum is taken over locations. ``valid``
    (..., N) marks real candidates when rows are padded; padded ones score 0.
    """
    per_location = normalize_scores(tag_cosines, mode, dim=-3, valid=None if valid is None else valid[..., None, None])
    scores = per_location.flatten(-2).amax(dim=-1)
    return scores if valid is None else scores.masked_fill(~valid, 0.0)


def select_tags(
    scores: torch.Tensor, threshold: float = 0.5, keep_argmax: bool = False, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Selection of step 1: tag k is kept when its score ≥ ``threshold``; with ``keep_argmax``
    the best tag of every (non-empty) row is kept as well. (…, N) → bool (…, N)."""
    selected = scores >= threshold
    if valid is not None:
        selected &= valid
    if keep_argmax and scores.shape[-1]:
        ranked = scores if valid is None else scores.masked_fill(~valid, float("-inf"))
        best = torch.zeros_like(selected).scatter_(-1, ranked.argmax(dim=-1, keepdim=True), True)
        selected |= best if valid is None else best & valid
    return selected


# --- the scorer table: one per name, for the selector, the objective and the evaluation --------
@dataclass
class SelectionInputs:
    """Everything a scorer may look at for a batch, all detached from the graph; what no asked-for
    scorer needs may be None."""

    captions: Sequence[str]
    tags: TagBatch
    global_emb: torch.Tensor | None  # (B, C)  f(I)
    tag_emb: torch.Tensor  # (B, N, C) g(t_k)
    tag_cosines: torch.Tensor | None  # (B, N, h, w) cos_{t_k}(p)
    normalize: str  # score normalisation across tags: softmax | minmax | none
    caption_emb: torch.Tensor | None = None  # (B, C)  g(T)

    def valid(self, like: torch.Tensor) -> torch.Tensor:
        return self.tags.valid.to(like.device)


def _pixel_scores(inp: SelectionInputs) -> torch.Tensor:
    return pixel_tag_scores(inp.tag_cosines, inp.normalize, inp.valid(inp.tag_cosines))


def _image_scores(inp: SelectionInputs) -> torch.Tensor:
    return image_tag_scores(inp.global_emb, inp.tag_emb, inp.normalize, inp.valid(inp.tag_emb))


def _text_scores(inp: SelectionInputs) -> torch.Tensor:
    return text_tag_scores(inp.caption_emb, inp.tag_emb, inp.normalize, inp.valid(inp.tag_emb))


# A scorer maps SelectionInputs to scores (B, N); tags scoring ≥ τ are selected. A caption-only
# tagger (nouns, an LLM) plugs in as a scorer returning 1 for the words it picks.
TAG_SCORERS: dict[str, Callable[[SelectionInputs], torch.Tensor]] = {
    "pixel": _pixel_scores,  # Eq. 2
    "image": _image_scores,  # Eq. 1
    "text": _text_scores,  # Eq. 7
    "image-text": lambda inp: _image_scores(inp) - _text_scores(inp),  # Table 2's baseline row
}
SCORINGS = tuple(TAG_SCORERS)  # the paper's four, whatever is registered later


def register_tag_scorer(name: str, scorer: Callable[[SelectionInputs], torch.Tensor]) -> None:
    """Add a scorer for training (``scorer: name``), ``TagSelector`` and ``ttd eval tags``."""
    TAG_SCORERS[name] = scorer


# --- the settings of a selection -------------------------------------------------------------
@dataclass(frozen=True)
class TagSelection:
    """Every setting of step 1, one object: built once (from flags, a config or keywords) and
    handed to :class:`TagSelector`, the training objective and the Table 2 evaluation, so the
    knobs have one name and one check everywhere.

    ``scorer``: the score that decides (``pixel``, Eq. 2, by default). ``tau``: τ, a tag is
    selected when its score ≥ τ. ``normalize``: across the candidates, ``softmax`` at CLIP's logit
    scale 100 (default), ``minmax`` or ``none``. ``keep_argmax``: also keep each caption's best tag.
    ``stopwords``: drop :func:`english_stopwords` from the candidates. ``template``: the prompt of a
    tag, e.g. ``"a photo of a {}."`` (``None`` or ``"{}"``: the raw word, the paper's choice).
    """

    scorer: str = "pixel"
    tau: float = 0.5
    normalize: str = "softmax"
    keep_argmax: bool = False
    stopwords: bool = False
    template: str | None = None

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise TTDError(f"unknown score normalisation {self.normalize!r}; choose softmax, minmax or none")
        check_template(self.template)
        object.__setattr__(self, "tau", float(self.tau))

    def candidates(self, caption: str) -> list[str]:
        """The candidates of one caption under these settings (an error for a caption without words)."""
        return tag_candidates(caption, self.stopwords)

    def prompt(self, word: str) -> str:
        return tag_prompt(word, self.template)

    def decide(self, scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The selection rule applied to scores (…, N)."""
        return select_tags(scores, self.tau, self.keep_argmax, valid)


# --- running the scores on a model ----------------------------------------------------------
@dataclass(frozen=True)
class TagScore:
    """One candidate of one caption: its score under the selector's scoring and the decision."""

    word: str
    score: float
    selected: bool


@dataclass
class TagScores:
    """The scores of a batch of captions, padded to the longest candidate list.

    ``scores[name]`` is (B, N) for every scoring asked for; entries outside ``valid`` are 0.
    """

    words: list[list[str]]
    valid: torch.Tensor
    scores: dict[str, torch.Tensor]

    def row(self, scoring: str, index: int) -> torch.Tensor:
        """The (N_i,) scores of caption ``index`` under ``scoring``."""
        return self.scores[scoring][index, : len(self.words[index])]


class TagSelector:
    """TTD step 1 on a dense model: score the candidate tags of captions and select the depicted ones.

    ``selection`` (or its fields as keywords, e.g. ``TagSelector(model, scorer="image", tau=0.3)``)
    holds the settings; its ``scorer`` may be ``pixel`` (Eq. 2), ``image`` (Eq. 1), ``text``
    (Eq. 7) or ``image-text`` (the difference ``s_image − s_text``). Images may be PIL images,
    paths, or preprocessed tensors (3, H, W); PIL images and paths are preprocessed with
    :func:`ttd.images.preprocess` at ``image_size`` (the model's own by default).
    """

    def __init__(self, model, selection: TagSelection | None = None, image_size: int | None = None, **settings):
        self.model = model
        self.selection = replace(selection or TagSelection(), **settings)
        check_scorings([self.selection.scorer])
        self.image_size = image_size or model.config.image_size

    # --- images ---
    def _pixels(self, images) -> tuple[torch.Tensor, list[int]]:
        """Images → (U, 3, H, W) distinct preprocessed images and, per input, its row in them.

        The same path (or the same object) given twice is encoded once."""
        from PIL import Image

        from ..images import load_image, preprocess

        if isinstance(images, torch.Tensor):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[1] != 3:
                raise TTDError(f"an image tensor must be (3, H, W) or (B, 3, H, W), got {tuple(images.shape)}")
            return images, list(range(len(images)))
        rows: dict[object, int] = {}
        tensors, index = [], []
        for image in images:
            if isinstance(image, (str, os.PathLike)):
                key = ("path", str(Path(image).resolve()))
            elif isinstance(image, (Image.Image, torch.Tensor)):
                key = ("object", id(image))
            else:
                raise TTDError(f"an image must be a PIL image, a path or a (3, H, W) tensor, got {type(image).__name__}")
            if key not in rows:
                rows[key] = len(tensors)
                if isinstance(image, torch.Tensor):
                    if image.ndim != 3 or image.shape[0] != 3:
                        raise TTDError(f"a preprocessed image tensor must be (3, H, W), got {tuple(image.shape)}")
                    tensors.append(image)
                else:
                    pil = load_image(image) if key[0] == "path" else image.convert("RGB")
                    tensors.append(preprocess(pil, self.image_size))
            index.append(rows[key])
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise TTDError(f"images of one batch must share one size after preprocessing, got {sorted(shapes)}")
        return torch.stack(tensors), index

    # --- scores ---
    def score_batch(self, images, captions: Sequence[str], scorings: Iterable[str] | None = None) -> TagScores:
        """Scores of every candidate of every caption, under each of ``scorings`` (default: the
        selector's own), from one image encoding and one text encoding for the whole batch."""
        with torch.no_grad():
            return self._score_batch(images, captions, check_scorings(scorings or [self.selection.scorer]))

    def _score_batch(self, images, captions: Sequence[str], scorings: tuple[str, ...]) -> TagScores:
        captions = list(captions)
        selection = self.selection
        tags = batch_tags(captions, selection.candidates)
        needs_image = any(s != "text" for s in scorings)
        needs_caption = any(s in ("text", "image-text") for s in scorings)
        if needs_image:
            pixels, image_index = self._pixels(images)
            if len(image_index) != len(captions):
                raise TTDError(f"got {len(image_index)} images for {len(captions)} captions; give one image per caption")

        model = self.model
        context = model.config.context_length
        prompts = [selection.prompt(w) for w in tags.unique]
        if selection.template is not None:
            for p in prompts:
                _warn_if_truncated(p, "tag prompt", context)
        if needs_caption:
            for c in dict.fromkeys(captions):
                _warn_if_truncated(c, "caption", context)
        texts = list(dict.fromkeys(prompts + (captions if needs_caption else [])))
        embedded = model.encode_text(texts).float()
        row_of = {t: i for i, t in enumerate(texts)}
        prompt_rows = torch.tensor([row_of[p] for p in prompts], dtype=torch.long)
        index, valid = prompt_rows[tags.index].to(embedded.device), tags.valid.to(embedded.device)
        tag_emb = embedded[index]  # (B, N, C)

        inputs = SelectionInputs(captions, tags, None, tag_emb, None, selection.normalize)
        if needs_image:
            param = model.clip.text_projection
            global_emb, dense = model.encode_image(pixels.to(param.device, param.dtype))
            rows = torch.tensor(image_index, device=global_emb.device)
            inputs.global_emb, dense = global_emb[rows].float(), dense[rows].float()
            if any(s not in ("image", "text", "image-text") for s in scorings):
                inputs.tag_cosines = model.similarity(dense, tag_emb).float()
        if needs_caption:
            inputs.caption_emb = embedded[torch.tensor([row_of[c] for c in captions], device=embedded.device)]
        scores = {name: TAG_SCORERS[name](inputs).cpu() for name in scorings}
        return TagScores(words=tags.words, valid=valid.cpu(), scores=scores)  # all on the CPU, like the words

    def select_batch(self, images, captions: Sequence[str], batch_size: int = 32) -> list[list[TagScore]]:
        """:meth:`select` for many image-caption pairs, ``batch_size`` pairs per model call."""
        if isinstance(images, torch.Tensor) and images.ndim == 3:
            images = images[None]
        if len(images) != len(captions):
            raise TTDError(f"got {len(images)} images for {len(captions)} captions; give one image per caption")
        results: list[list[TagScore]] = []
        for start in range(0, len(captions), batch_size):
            batch = self.score_batch(images[start : start + batch_size], captions[start : start + batch_size])
            scores = batch.scores[self.selection.scorer]
            chosen = self.selection.decide(scores, batch.valid)
            for i, ws in enumerate(batch.words):
                results.append([TagScore(w, float(scores[i, k]), bool(chosen[i, k])) for k, w in enumerate(ws)])
        return results

    def select(self, image, caption: str) -> list[TagScore]:
        """Every candidate of ``caption`` with its score on ``image`` and whether it is selected."""
        return self.select_batch([image], [caption])[0]


def check_scorings(scorings: Iterable[str]) -> tuple[str, ...]:
    """Validate scoring names (one-line error naming the bad one); duplicates removed."""
    names = tuple(dict.fromkeys(s.strip() for s in scorings))
    for name in names:
        if name not in TAG_SCORERS:
            raise TTDError(f"unknown tag scoring {name!r}; choose from {', '.join(TAG_SCORERS)}")
    if not names:
        raise TTDError(f"no tag scoring given; choose from {', '.join(TAG_SCORERS)}")
    return names
