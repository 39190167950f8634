"""Open-vocabulary segmentation with any dense model of the contract, under a :class:`Protocol`.

One image goes through: short-side resize at every scale (and its mirror when ``flip``), sliding
windows clamped inside each resized image, ALL windows of the image run through the model in as
few batched forwards as their shapes allow, per-window query scores upsampled to the window and
averaged where windows overlap, every view brought back to the original size (bilinear) and
averaged, optional PAMR, then the protocol's background rule turns query scores into class ids.
Without sliding windows, images of one size go through all of this together
(:meth:`Segmenter.predict_batch`, :meth:`Segmenter.predict_caption_batch`).

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

BATCH_SCORE_ELEMENTS = 1 << 26  # predict_batch: at most this many query-score values (256 MB float32) per group

__all__ = [
    "Segmentation",
    "CaptionSegmentation",
    "Segmenter",
    "SegmentationFigure",
    "segment_figure",
    "window_boxes",
    "apply_background_rule",
    "normalize_caption_map",
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
    """Query scores (Q, H, W) → (class ids (H, W), class scores (K, H, W)); a batch (B, Q, H, W)
    → (B, H, W) and (B, K, H, W), each image ruled on its own.

    threshold: class score = max over its synonyms' heatmaps; a background class is a constant
    channel at ``background_threshold``. softmax: probabilities softmax(logit_scale·cos) over all
    queries, max over synonyms, SCLIP's optional area filter, and pixels whose best probability is
    under ``prob_threshold`` go to the background class.
    """
    if query_scores.ndim == 4 and protocol.background == "softmax" and protocol.area_threshold is not None:
        ruled = [apply_background_rule(q, owners, vocabulary, protocol) for q in query_scores]  # per-image areas
        return torch.stack([r[0] for r in ruled]), torch.stack([r[1] for r in ruled])
    num_classes = len(vocabulary)
    if protocol.background == "softmax":
        query_scores = (protocol.logit_scale * query_scores).softmax(dim=-3)
    fill = 0.0 if protocol.background == "softmax" else float("-inf")
    scores = query_scores.new_full((*query_scores.shape[:-3], num_classes, *query_scores.shape[-2:]), fill)
    owner_index = torch.as_tensor(owners, device=query_scores.device)
    if len(set(owners)) == len(owners):  # one query per class: the max over synonyms is a copy
        # exact: probabilities are >= the fill 0, heatmaps > the fill -inf
        scores.index_copy_(-3, owner_index, query_scores)
    else:
        index = owner_index.view(-1, 1, 1).expand_as(query_scores)
        scores.scatter_reduce_(-3, index, query_scores, "amax")
    if protocol.background == "threshold" and vocabulary.has_background:
        scores[..., 0, :, :] = protocol.background_threshold
    labels = scores.argmax(dim=-3)
    if protocol.background == "softmax" and vocabulary.has_background:
        if protocol.area_threshold is not None:
            area = torch.bincount(labels.flatten(), minlength=num_classes)[1:].to(scores.dtype)
            keep = area > protocol.area_threshold * area.sum()
            scores[1:] *= keep.view(-1, 1, 1)
            labels = scores.argmax(dim=0)
        labels[scores.amax(dim=-3) < protocol.prob_threshold] = 0
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
        self.model = model.eval() if model.training else model  # no flip of a model other threads share
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

    def _mixes_kp(self, calibrated: bool) -> bool:
        """Whether TCL's MaskCLIP map is mixed in (protocol ``kp_weight``; TCL models only)."""
        return calibrated and self.protocol.kp_weight > 0 and hasattr(self.model, "heatmaps_with_kp")

    def _score_windows(self, crops: torch.Tensor, text: torch.Tensor, calibrated: bool) -> torch.Tensor:
        """Window scores at the crops' size; with TCL's kp mix, its masks and its MaskCLIP map
        side by side along the query axis (2Q), mixed once PAMR has refined the masks."""
        with torch.no_grad():
            if self._mixes_kp(calibrated):
                scores = torch.cat(self.model.heatmaps_with_kp(crops, text), dim=-3)
            else:
                _, dense = self.model.encode_image(crops)
                scores = self.model.heatmap(dense, text) if calibrated else self.model.similarity(dense, text)
        return F.interpolate(scores.float(), size=crops.shape[-2:], mode="bilinear", align_corners=False)

    def _views(self, x: torch.Tensor) -> list[tuple[torch.Tensor, bool]]:
        """(normalised resized images (B, 3, h, w), mirrored?) for every scale, each followed by its mirror."""
        p, views = self.protocol, []
        for scale in p.scales:
            resized = normalize(self._resized(x, scale), p.pixel_mean, p.pixel_std)
            views += [(resized, False)] + ([(resized.flip(-1), True)] if p.flip else [])
        return views

    def _batches(self, tiles: list[tuple[int, tuple[int, int, int, int]]], images: int = 1):
        """Consecutive windows of one shape share a forward: at most ``window_batch`` crops (all
        ``images`` images of a window always go together)."""
        per_forward = max(1, self.window_batch // images)
        batch: list = []
        for tile in tiles:
            y1, y2, x1, x2 = tile[1]
            if batch and (len(batch) == per_forward or (y2 - y1, x2 - x1) != batch[0][2]):
                yield batch
                batch = []
            batch.append((*tile, (y2 - y1, x2 - x1)))
        if batch:
            yield batch

    def query_scores(self, image: Image.Image | torch.Tensor, text: torch.Tensor, calibrated: bool) -> torch.Tensor:
        """Per-query scores (Q, H, W) at the image's own size, averaged over windows, scales and
        flips, refined by PAMR when the protocol asks for it."""
        return self.query_scores_batch(self._as_tensor(image)[None], text, calibrated)[0]

    def query_scores_batch(self, x: torch.Tensor, text: torch.Tensor, calibrated: bool) -> torch.Tensor:
        """:meth:`query_scores` of B images of one size at once: ``x`` (B, 3, H, W) in [0, 1] on the
        model's device; ``text`` (Q, C) shared or (B, Q, C) per image → (B, Q, H, W). Every window
        forward takes the same window of all B images; the result equals B separate calls (up to
        the float rounding of a batched matrix product)."""
        batch, size = x.shape[0], tuple(x.shape[-2:])
        views = self._views(x)
        crop, stride = self.protocol.crop_size, self.protocol.stride
        tiles = [(v, box) for v, (img, _) in enumerate(views) for box in window_boxes(*img.shape[-2:], crop, stride)]
        pending = [sum(1 for v, _ in tiles if v == view) for view in range(len(views))]
        canvases: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # views in progress: (sum, count)
        kp = self._mixes_kp(calibrated)
        queries = text.shape[-2] * (2 if kp else 1)
        total = None
        for group in self._batches(tiles, batch):
            crops = torch.cat([views[v][0][:, :, y1:y2, x1:x2] for v, (y1, y2, x1, x2), _ in group])
            group_text = text if text.ndim == 2 else text.repeat(len(group), 1, 1)
            windows = self._score_windows(crops, group_text, calibrated)
            windows = windows.view(len(group), batch, queries, *crops.shape[-2:])
            for (v, (y1, y2, x1, x2), _), window in zip(group, windows):
                shape = tuple(views[v][0].shape[-2:])
                if pending[v] == 1 and v not in canvases and (y2 - y1, x2 - x1) == shape:
                    merged = window  # the view's only window covers it: its average is itself
                else:
                    if v not in canvases:
                        canvases[v] = (x.new_zeros((batch, queries, *shape)), x.new_zeros((1, 1, *shape)))
                    canvas, count = canvases[v]
                    canvas[:, :, y1:y2, x1:x2] += window
                    count[:, :, y1:y2, x1:x2] += 1
                    if pending[v] > 1:
                        pending[v] -= 1
                        continue
                    canvas, count = canvases.pop(v)
                    merged = canvas / count
                pending[v] = 0  # view complete: back to the original size, then freed
                if shape != size:
                    merged = F.interpolate(merged, size=size, mode="bilinear", align_corners=False)
                merged = merged.flip(-1) if views[v][1] else merged
                total = merged if total is None else total + merged
        scores = total / len(views) if len(views) > 1 else total
        if kp:
            scores, kp_map = scores.chunk(2, dim=-3)
        if self.protocol.pamr and self.protocol.pamr_iterations > 0:
            scores = self._refine(x, scores)
        if kp:  # as TCL's generate_masks: refine its masks, then mix the unrefined MaskCLIP map in
            w = self.protocol.kp_weight
            scores = w * kp_map + (1 - w) * scores
        return scores

    def _refine(self, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """PAMR at ``pamr_scale`` × the resized (scale 1.0) image size, then back to the original;
        ``x`` (B, 3, H, W), ``scores`` (B, Q, H, W)."""
        p = self.protocol
        original = tuple(x.shape[-2:])
        factor = (p.short_side or min(original)) / min(original)
        if p.short_side and p.max_long_side:
            factor = min(factor, p.max_long_side / max(original))
        size = tuple(max(1, round(s * factor * p.pamr_scale)) for s in original)
        if size != original:
            image = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            small = F.interpolate(scores, size=size, mode="bilinear", align_corners=False, antialias=True)
        else:
            image, small = x, scores
        refined = pamr(image, small, p.pamr_iterations, p.pamr_dilations)
        if size != original:
            refined = F.interpolate(refined, size=original, mode="bilinear", align_corners=False)
        return refined

    # --- predictions --------------------------------------------------------------------------
    def predict(self, image: Image.Image | torch.Tensor, keep_scores: bool = True) -> Segmentation:
        """Class ids (H, W) and class scores (K, H, W) for the current vocabulary, on the CPU
        (``keep_scores=False`` skips copying the scores, e.g. when only evaluating labels)."""
        return self.predict_batch([image], keep_scores)[0]

    __call__ = predict

    def predict_batch(
        self, images: Sequence[Image.Image | torch.Tensor], keep_scores: bool = True, batch_size: int | None = None
    ) -> list[Segmentation]:
        """:meth:`predict` for several images: images of one size go through the model together
        (at most ``batch_size`` at a time, default ``window_batch``) when the protocol has no
        sliding windows; the predictions equal one :meth:`predict` per image (up to the rounding
        of batched matrix products)."""
        if self.vocabulary is None:
            raise TTDError("no vocabulary: call set_vocabulary(...) or pass classes to Segmenter")
        calibrated = self.protocol.background == "threshold"
        results: list[Segmentation | None] = [None] * len(images)
        for indices, x in self._groups(images, batch_size):
            scores = self.query_scores_batch(x, self.query_embeddings, calibrated)
            if not keep_scores and self._labels_alone():
                labels, class_scores = self._threshold_labels(scores), [None] * len(indices)
            else:
                labels, class_scores = apply_background_rule(scores, self.owners, self.vocabulary, self.protocol)
                class_scores = class_scores.cpu() if keep_scores else [None] * len(indices)
            labels = labels.cpu()
            for i, lab, sc in zip(indices, labels, class_scores):
                results[i] = Segmentation(lab, sc, self.vocabulary.display_names)
        return results

    def _labels_alone(self) -> bool:
        """Whether :meth:`_threshold_labels` gives the background rule's labels: threshold rule,
        one query per class, in class order."""
        return self.protocol.background == "threshold" and all(a < b for a, b in zip(self.owners, self.owners[1:]))

    def _threshold_labels(self, scores: torch.Tensor) -> torch.Tensor:
        """The threshold rule's class ids straight from query scores (…, Q, H, W), without the
        (…, K, H, W) class-score tensor: the best query's class where it beats the background
        channel (which wins ties, being class 0), else the background. Equal to
        ``apply_background_rule(...)[0]`` under :meth:`_labels_alone` (argmax takes the first maximum)."""
        best = scores.argmax(dim=-3)
        labels = torch.as_tensor(self.owners, device=scores.device)[best]
        if self.vocabulary.has_background:
            top = scores.gather(-3, best.unsqueeze(-3)).squeeze(-3)
            labels = labels.masked_fill_(~(top > self.protocol.background_threshold), 0)
        return labels

    def _groups(self, images: Sequence, batch_size: int | None):
        """(indices, (B, 3, H, W) tensor) of images of one size, B ≤ ``batch_size`` and B·Q·H·W ≤
        :data:`BATCH_SCORE_ELEMENTS`; one image per group when the protocol slides windows (their
        canvases would multiply the memory)."""
        tensors = [self._as_tensor(image) for image in images]
        limit = 1 if self.protocol.crop_size is not None else max(1, batch_size or self.window_batch)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(tensors):
            by_size.setdefault(tuple(t.shape[-2:]), []).append(i)
        queries = len(self.queries) if self.vocabulary is not None else 1
        for (h, w), indices in by_size.items():
            step = min(limit, max(1, BATCH_SCORE_ELEMENTS // (queries * h * w)))  # score maps of a group bounded
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                yield chunk, torch.stack([tensors[i] for i in chunk])

    def predict_caption(
        self, image: Image.Image | torch.Tensor, caption: str, threshold: float | None = None
    ) -> CaptionSegmentation:
        """The caption's calibrated heatmap over the image, thresholded (default: the protocol's
        ``background_threshold``) into a binary mask. The caption is used as written (no templates)."""
        return self.predict_caption_batch([image], [caption], threshold)[0]

    def predict_caption_batch(
        self,
        images: Sequence[Image.Image | torch.Tensor],
        captions: Sequence[str],
        threshold: float | None = None,
        batch_size: int | None = None,
    ) -> list[CaptionSegmentation]:
        """:meth:`predict_caption` for pairs (image, caption), batched like :meth:`predict_batch`;
        every image is scored against its own caption."""
        if len(images) != len(captions):
            raise TTDError(f"{len(images)} images but {len(captions)} captions")
        if any(not c or not c.strip() for c in captions):
            raise TTDError("the caption is empty")
        threshold = self.protocol.background_threshold if threshold is None else float(threshold)
        with torch.no_grad():
            text = self.model.encode_text(list(captions))  # one cache look-up for the whole batch
        results: list[CaptionSegmentation | None] = [None] * len(images)
        for indices, x in self._groups(images, batch_size):
            own = text[indices][:, None] if len(indices) > 1 else text[indices]  # (B, 1, C); one image: (1, C)
            heat = self.query_scores_batch(x, own, calibrated=True)[:, 0].clamp(0, 1)
            heat = normalize_caption_map(heat, self.protocol.caption_normalize)
            heat = heat.cpu()
            for i, h in zip(indices, heat):
                results[i] = CaptionSegmentation(h > threshold, h, captions[i], threshold)
        return results


def normalize_caption_map(heatmap: torch.Tensor, mode: str) -> torch.Tensor:
    """A caption map as the protocol's ``caption_normalize`` wants it before the threshold:
    unchanged (``none``), or min-max normalised over the image (``minmax``, the
    weakly-supervised-segmentation convention: the map's own peak becomes 1). A batch (B, H, W)
    is normalised map by map."""
    if mode == "none":
        return heatmap
    low, high = heatmap.amin(dim=(-2, -1), keepdim=True), heatmap.amax(dim=(-2, -1), keepdim=True)
    return (heatmap - low) / (high - low).clamp(min=1e-6)


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
