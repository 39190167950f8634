"""Open-vocabulary segmentation with any dense model of the contract, under a :class:`Protocol`.

One image goes through: short-side resize at every scale (and its mirror when ``flip``), sliding
windows clamped inside each resized image, ALL windows of the image run through the model in as
few batched forwards as their shapes allow, per-window query scores upsampled to the window and
averaged where windows overlap, every view brought back to the original size (bilinear) and
averaged, optional PAMR, then the protocol's background rule turns query scores into class ids.

Query scores are the calibrated heatmaps ``sigmoid(w·cos + b)`` under the threshold rule (and for
captions) and raw cosines under the softmax rule, which applies ``logit_scale`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from .cache import class_embeddings
from .errors import TTDError
from .images import normalize, resize_short_side, to_tensor
from .pamr import pamr
from .protocols import CAPTION_THRESHOLD, Protocol, load_protocol
from .vocabulary import Vocabulary

__all__ = [
    "Segmentation",
    "CaptionSegmentation",
    "Segmenter",
    "SegmentationFigure",
    "segment_figure",
    "window_boxes",
    "apply_background_rule",
]



@dataclass
class Segmentation:
    labels: torch.Tensor  # (H, W) int64 class ids
    scores: torch.Tensor | None  # (K, H, W) per-class scores; labels is their argmax after the rule
    classes: list[str]


@dataclass
class CaptionSegmentation:
    mask: torch.Tensor  # (H, W) bool: heatmap > threshold
    heatmap: torch.Tensor  # (H, W) in [0, 1]
    caption: str
    threshold: float


def window_boxes(height: int, width: int, crop: int | None, stride: int | None) -> list[tuple[int, int, int, int]]:
    """Sliding windows ``(y1, y2, x1, x2)`` covering the image, the last row/column of windows
    moved back inside the image (mmsegmentation's slide inference); no crop: the whole image."""
    if crop is None:
        return [(0, height, 0, width)]
    stride = stride or crop
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


def apply_background_rule(
    query_scores: torch.Tensor, owners: Sequence[int], vocabulary: Vocabulary, protocol: Protocol
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query scores (Q, H, W) → (class ids (H, W), class scores (K, H, W)).

    threshold: class score = max over its synonyms' heatmaps; a background class is a constant
    channel at ``background_threshold``. softmax: probabilities softmax(logit_scale·cos) over all
    queries, max over synonyms, SCLIP's optional area filter, and pixels whose best probability is
    under ``prob_threshold`` go to the background class.
    """
    num_classes = len(vocabulary)
    if protocol.background == "softmax":
        query_scores = (protocol.logit_scale * query_scores).softmax(dim=0)
    index = torch.as_tensor(owners, device=query_scores.device).view(-1, 1, 1).expand_as(query_scores)
    fill = 0.0 if protocol.background == "softmax" else float("-inf")
    scores = query_scores.new_full((num_classes, *query_scores.shape[1:]), fill)
    scores.scatter_reduce_(0, index, query_scores, "amax")
    if protocol.background == "threshold" and vocabulary.has_background:
        scores[0] = protocol.background_threshold
    labels = scores.argmax(dim=0)
    if protocol.background == "softmax" and vocabulary.has_background:
        if protocol.area_threshold is not None:
            area = torch.bincount(labels.flatten(), minlength=num_classes)[1:].to(scores.dtype)
            keep = area > protocol.area_threshold * area.sum()
            scores[1:] *= keep.view(-1, 1, 1)
            labels = scores.argmax(dim=0)
        labels[scores.amax(dim=0) < protocol.prob_threshold] = 0
    return labels, scores


class Segmenter:
    """A dense model, a protocol and a vocabulary → per-pixel class ids and score maps.

    Text embeddings of the vocabulary are computed once (and cached on disk, see
    :mod:`ttd.cache`); every image then costs only its image forwards.
    """

    def __init__(
        self,
        model,
        protocol: Protocol | str = "tcl",
        vocabulary: Vocabulary | Sequence[str] | str | None = None,
        *,
        use_cache: bool = True,
        window_batch: int = 16,
    ):
        self.model = model.eval()
        self.protocol = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
        self.use_cache = use_cache
        self.window_batch = max(1, int(window_batch))
        self.vocabulary: Vocabulary | None = None
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    # --- vocabulary ---------------------------------------------------------------------------
    def set_vocabulary(self, vocabulary: Vocabulary | Sequence[str] | str) -> None:
        if not isinstance(vocabulary, Vocabulary):
            vocabulary = Vocabulary.from_names(vocabulary)
        queries, owners = vocabulary.queries(self.protocol.synonyms, self.protocol.background)
        self.vocabulary, self.queries, self.owners = vocabulary, queries, owners
        self.query_embeddings = class_embeddings(
            self.model, queries, self.protocol.template_list(), use_cache=self.use_cache
        )

    # --- images -------------------------------------------------------------------------------
    def _as_tensor(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            x = to_tensor(image)
        elif isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3:
            x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        else:
            raise TTDError("expected a PIL image or a (3, H, W) tensor in [0, 1] (or uint8)")
        return x.to(self.model.device)

    def _resized(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        p = self.protocol
        short = (p.short_side or min(x.shape[-2:])) * scale
        max_long = p.max_long_side * scale if p.max_long_side and p.short_side else None
        if short == min(x.shape[-2:]) and max_long is None:
            return x
        return resize_short_side(x, short, max_long, mode=p.resize_interpolation)

    def _score_windows(self, crops: torch.Tensor, text: torch.Tensor, calibrated: bool) -> torch.Tensor:
        with torch.no_grad():
            _, dense = self.model.encode_image(crops)
            scores = self.model.heatmap(dense, text) if calibrated else self.model.similarity(dense, text)
        return F.interpolate(scores.float(), size=crops.shape[-2:], mode="bilinear", align_corners=False)

    def _views(self, x: torch.Tensor) -> list[tuple[torch.Tensor, bool]]:
        """(normalised resized image, mirrored?) for every scale, each followed by its mirror."""
        p, views = self.protocol, []
        for scale in p.scales:
            resized = normalize(self._resized(x, scale), p.pixel_mean, p.pixel_std)
            views += [(resized, False)] + ([(resized.flip(-1), True)] if p.flip else [])
        return views

    def _batches(self, tiles: list[tuple[int, tuple[int, int, int, int]]]):
        """Consecutive windows of one shape, at most ``window_batch`` of them, share a forward."""
        batch: list = []
        for tile in tiles:
            y1, y2, x1, x2 = tile[1]
            if batch and (len(batch) == self.window_batch or (y2 - y1, x2 - x1) != batch[0][2]):
                yield batch
                batch = []
            batch.append((*tile, (y2 - y1, x2 - x1)))
        if batch:
            yield batch

    def query_scores(self, image: Image.Image | torch.Tensor, text: torch.Tensor, calibrated: bool) -> torch.Tensor:
        """Per-query scores (Q, H, W) at the image's own size, averaged over windows, scales and
        flips, refined by PAMR when the protocol asks for it."""
        x = self._as_tensor(image)
        size = tuple(x.shape[-2:])
        views = self._views(x)
        crop, stride = self.protocol.crop_size, self.protocol.stride
        tiles = [(v, box) for v, (img, _) in enumerate(views) for box in window_boxes(*img.shape[-2:], crop, stride)]
        pending = [sum(1 for v, _ in tiles if v == view) for view in range(len(views))]
        canvases: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # views in progress: (sum, count)
        total = x.new_zeros((len(text), *size))
        for batch in self._batches(tiles):
            crops = torch.stack([views[v][0][:, y1:y2, x1:x2] for v, (y1, y2, x1, x2), _ in batch])
            for (v, (y1, y2, x1, x2), _), window in zip(batch, self._score_windows(crops, text, calibrated)):
                if v not in canvases:
                    shape = views[v][0].shape[-2:]
                    canvases[v] = (x.new_zeros((len(text), *shape)), x.new_zeros((1, *shape)))
                canvas, count = canvases[v]
                canvas[:, y1:y2, x1:x2] += window
                count[:, y1:y2, x1:x2] += 1
                pending[v] -= 1
                if pending[v] == 0:  # view complete: back to the original size, then freed
                    canvas, count = canvases.pop(v)
                    merged = F.interpolate((canvas / count)[None], size=size, mode="bilinear", align_corners=False)[0]
                    total += merged.flip(-1) if views[v][1] else merged
        scores = total / len(views)
        if self.protocol.pamr and self.protocol.pamr_iterations > 0:
            scores = self._refine(x, scores)
        return scores

    def _refine(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """PAMR at ``pamr_scale`` × the resized (scale 1.0) image size, then back to the original."""
        p = self.protocol
        original = tuple(x.shape[-2:])
        factor = (p.short_side or min(original)) / min(original)
        if p.short_side and p.max_long_side:
            factor = min(factor, p.max_long_side / max(original))
        size = tuple(max(1, round(s * factor * p.pamr_scale)) for s in original)
        if size != original:
            image = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)
            small = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False, antialias=True)
        else:
            image, small = x[None], scores[None]
        refined = pamr(image, small, p.pamr_iterations, p.pamr_dilations)
        if size != original:
            refined = F.interpolate(refined, size=original, mode="bilinear", align_corners=False)
        return refined[0]

    # --- predictions --------------------------------------------------------------------------
    def predict(self, image: Image.Image | torch.Tensor, keep_scores: bool = True) -> Segmentation:
        """Class ids (H, W) and class scores (K, H, W) for the current vocabulary, on the CPU
        (``keep_scores=False`` skips copying the scores, e.g. when only evaluating labels)."""
        if self.vocabulary is None:
            raise TTDError("no vocabulary: call set_vocabulary(...) or pass classes to Segmenter")
        calibrated = self.protocol.background == "threshold"
        scores = self.query_scores(image, self.query_embeddings, calibrated)
        labels, class_scores = apply_background_rule(scores, self.owners, self.vocabulary, self.protocol)
        return Segmentation(labels.cpu(), class_scores.cpu() if keep_scores else None, self.vocabulary.display_names)

    __call__ = predict

    def predict_caption(
        self, image: Image.Image | torch.Tensor, caption: str, threshold: float | None = None
    ) -> CaptionSegmentation:
        """The caption's calibrated heatmap over the image, thresholded (default: the protocol's
        ``background_threshold``) into a binary mask. The caption is used as written (no templates)."""
        if not caption or not caption.strip():
            raise TTDError("the caption is empty")
        threshold = self.protocol.background_threshold if threshold is None else float(threshold)
        with torch.no_grad():
            text = self.model.encode_text([caption])
        heat = self.query_scores(image, text, calibrated=True)[0].clamp(0, 1)
        return CaptionSegmentation((heat > threshold).cpu(), heat.cpu(), caption, threshold)


# --- one image, shown: `ttd segment` ------------------------------------------------------------
@dataclass
class SegmentationFigure:
    """One image segmented and drawn: the overlay with its legend, the heatmap grid (when asked
    for), the share of the image (%) of every region shown and, for a caption, its threshold."""

    overlay: Image.Image
    heatmaps: Image.Image | None
    shares: list[tuple[str, float]]
    threshold: float | None = None


def segment_figure(
    segmenter: Segmenter,
    image: Image.Image,
    *,
    classes: str | None = None,
    text: str | None = None,
    background: bool = True,
    threshold: float | None = None,
    heatmaps: bool = False,
) -> SegmentationFigure:
    """Segment ``image`` by ``classes`` (comma-separated names, or a classes.txt file; a background
    class in front unless ``background`` is False) or by one caption ``text`` (its heatmap above
    ``threshold``, :data:`CAPTION_THRESHOLD` by default), and draw the result."""
    from .viz import heatmap_grid, overlay, palette, with_legend

    if text:
        result = segmenter.predict_caption(image, text, CAPTION_THRESHOLD if threshold is None else threshold)
        labels, colors, skip = result.mask.long(), [(0, 0, 0), (255, 60, 60)], (0,)
        legend_names, legend_colors = [text], colors[1:]
        heat, titles = result.heatmap[None], [text]
        shares = [(text, 100.0 * result.mask.float().mean().item())]
        used = result.threshold
    else:
        vocabulary = Vocabulary.from_spec(classes, background=background)
        segmenter.set_vocabulary(vocabulary)
        result = segmenter.predict(image)
        labels, colors = result.labels, palette(len(vocabulary), vocabulary.has_background)
        skip = (0,) if vocabulary.has_background else ()
        shown = sorted(labels.unique().tolist())
        legend_names, legend_colors = [result.classes[k] for k in shown], [colors[k] for k in shown]
        first = 1 if vocabulary.has_background else 0  # the background channel is not a heatmap
        heat, titles = result.scores[first:], result.classes[first:]
        shares = [(result.classes[k], 100.0 * (labels == k).float().mean().item()) for k in shown]
        used = None
    figure = with_legend(overlay(image, labels, colors, skip=skip), legend_names, legend_colors)
    grid = heatmap_grid(image, heat.clamp(0, 1), titles) if heatmaps else None
    return SegmentationFigure(figure, grid, shares, used)
