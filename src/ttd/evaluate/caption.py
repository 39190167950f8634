"""Caption-level (text-level) segmentation: the whole caption is one query.

For each manifest record, the caption's calibrated heatmap over the image (windows, scales, flips
and PAMR of the protocol, brought to the image size) is thresholded at the background threshold
(0.40 by default) into a binary mask and compared with the record's ``caption_mask`` (the union
of the objects the caption depicts; 255 = ignore).

Metric (the TTD paper's): one 2×2 confusion matrix over the whole dataset with the classes
{0 = background, 1 = caption}; for each class c, ``IoU_c = TP/(TP+FP+FN)``,
``FPR_c = FP/(TP+FP+FN)``, ``FNR_c = FN/(TP+FP+FN)``; CaptionIoU, mFPR and mFNR are their means
over the two classes (so CaptionIoU + mFPR + mFNR = 1). The caption class's own IoU / FPR / FNR
are reported beside the means.

Single tag bias (:class:`ttd.metrics.TagCoverage`), over the captions with ≥ 2 depicted tags
whose masks the manifest gives (``tag_masks``): coverage of the best-covered and of the other
tags, their ratio, the threshold-free contrast, and the caption mFNR on these captions alone.

Every figure is computed twice in the same pass: on the raw caption map and on the map min-max
normalised per image (``caption_normalize``); the protocol's setting gives the headline figures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..data.manifest import ManifestRecord, read_manifest
from ..data.segmentation import IGNORE_INDEX, read_label
from ..distributed import Distributed, owns_process_group
from ..errors import TTDError
from ..images import load_image
from ..io import files_digest, inputs_digest, markdown_table
from ..metrics import ConfusionMatrix, TagCoverage
from ..protocols import CAPTION_NORMALIZATIONS, CAPTION_THRESHOLD, Protocol
from ..segment import Segmenter, normalize_caption_map
from ..viz import overlay, panels, with_legend
from .runtime import evaluation_loop, open_checkpoint, write_result

__all__ = ["CaptionMaskDataset", "evaluate_captions", "caption_markdown"]

CLASSES = ("background", "caption")
COLORS = [(0, 0, 0), (255, 60, 60)]


@dataclass
class CaptionSample:
    image: Image.Image
    caption: str
    target: torch.Tensor  # (H, W) int64: 0 background, 1 caption, 255 ignore
    name: str
    tag_masks: list[torch.Tensor]  # (H, W) bool per depicted tag with a mask (may be empty)


class CaptionMaskDataset(torch.utils.data.Dataset):
    """Manifest records with a ``caption_mask``: non-zero = depicted by the caption, 255 = ignore."""

    def __init__(self, records: list[ManifestRecord], source: str = "manifest"):
        for record in records:
            record.require("caption_mask", source)
        self.records = records

    @classmethod
    def from_manifest(cls, path: str | os.PathLike) -> CaptionMaskDataset:
        return cls(read_manifest(path), str(path))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> CaptionSample:
        record = self.records[index]
        image = load_image(record.image)
        mask = read_label(record.caption_mask, image=record.image)
        if tuple(mask.shape) != (image.height, image.width):
            raise TTDError(
                f"caption mask {record.caption_mask} is {mask.shape[1]}×{mask.shape[0]} but image {record.image} "
                f"is {image.width}×{image.height}"
            )
        target = torch.where(mask == IGNORE_INDEX, IGNORE_INDEX, (mask != 0).long())
        tags = [self._tag_mask(record, path, target.shape) for path in (record.tag_masks or {}).values()]
        return CaptionSample(image, record.caption, target, f"{record.line:06d}_{record.image.stem}", tags)

    @staticmethod
    def _tag_mask(record: ManifestRecord, path, shape) -> torch.Tensor:
        mask = read_label(path, image=record.image)
        if tuple(mask.shape) != tuple(shape):
            raise TTDError(f"tag mask {path} is {mask.shape[1]}×{mask.shape[0]} but image {record.image} is {shape[1]}×{shape[0]}")
        return (mask != 0) & (mask != IGNORE_INDEX)


class CaptionMetrics:
    """Everything the caption evaluation accumulates, for the raw and the min-max normalised map:
    the 2×2 confusion matrix over all captions, the same over multi-tag captions only, and the
    tag coverage (:class:`TagCoverage`)."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.parts = {
            mode: (ConfusionMatrix(len(CLASSES)), ConfusionMatrix(len(CLASSES)), TagCoverage())
            for mode in CAPTION_NORMALIZATIONS
        }

    def update(self, heatmap: torch.Tensor, sample: CaptionSample) -> None:
        target = sample.target
        multi = sum(bool(m.any()) for m in sample.tag_masks) >= 2
        for mode, (everything, multi_tag, coverage) in self.parts.items():
            heat = normalize_caption_map(heatmap, mode)
            prediction = (heat > self.threshold).long()
            everything.update(prediction, target)
            if multi:
                multi_tag.update(prediction, target)
                coverage.update(heat, prediction.bool(), sample.tag_masks, target == 0)

    def update_batch(self, pairs: list[tuple[torch.Tensor, CaptionSample]]) -> None:
        """:meth:`update` for several (heatmap, sample) pairs: the same counts, with the
        confusion matrices of maps of one size updated in one call."""
        if len({tuple(h.shape) for h, _ in pairs}) != 1:
            for heatmap, sample in pairs:
                self.update(heatmap, sample)
            return
        heatmaps = torch.stack([h for h, _ in pairs])
        targets = torch.stack([sample.target for _, sample in pairs])
        multi = [sum(bool(m.any()) for m in sample.tag_masks) >= 2 for _, sample in pairs]
        for mode, (everything, multi_tag, coverage) in self.parts.items():
            heat = normalize_caption_map(heatmaps, mode)  # map by map
            predictions = (heat > self.threshold).long()
            everything.update(predictions, targets)
            if any(multi):
                chosen = torch.tensor(multi)
                multi_tag.update(predictions[chosen], targets[chosen])
                for (_, sample), h, prediction, m in zip(pairs, heat, predictions, multi):
                    if m:
                        coverage.update(h, prediction.bool(), sample.tag_masks, sample.target == 0)

    def state(self) -> torch.Tensor:
        return torch.cat([m.state().double().flatten() for parts in self.parts.values() for m in parts])

    def load_state(self, state: torch.Tensor) -> None:
        offset = 0
        for parts in self.parts.values():
            for m in parts:
                n = m.state().numel()
                m.load_state(state[offset : offset + n])
                offset += n

    def compute(self) -> dict:
        """Per normalisation: the caption-segmentation figures, the caption class's own, and the bias figures."""
        figures = {}
        for mode, (everything, multi_tag, coverage) in self.parts.items():
            scores = everything.reduce().compute()
            multi = multi_tag.reduce().compute()
            figures[mode] = {
                "CaptionIoU": round(100.0 * scores["mIoU"], 2),
                "mFPR": round(scores["mFPR"], 4),
                "mFNR": round(scores["mFNR"], 4),
                "caption_class": {"IoU": round(100.0 * scores["IoU"][1], 2), "FPR": round(scores["FPR"][1], 4),
                                  "FNR": round(scores["FNR"][1], 4)},
                "per_class": [
                    {"class": c, "IoU": round(100.0 * i, 2), "FPR": round(f, 4), "FNR": round(r, 4)}
                    for c, i, f, r in zip(CLASSES, scores["IoU"], scores["FPR"], scores["FNR"])
                ],
                "bias": {**{k: round(v, 4) if isinstance(v, float) else v for k, v in coverage.compute().items()},
                         "mFNR": round(multi["mFNR"], 4), "caption_FNR": round(multi["FNR"][1], 4)},
                "confusion_matrix": everything.matrix.tolist(),
            }  # fmt: skip
        return figures


def _figure(sample: CaptionSample, prediction: torch.Tensor) -> Image.Image:
    figure = panels(
        [
            sample.image,
            overlay(sample.image, prediction, COLORS, skip=(0,)),
            overlay(sample.image, sample.target, COLORS, skip=(0,)),
        ],
        ["image", "prediction", "caption mask"],
    )
    return with_legend(figure, [sample.caption], [COLORS[1]])


@owns_process_group
def evaluate_captions(
    model,
    dataset: CaptionMaskDataset,
    protocol: Protocol,
    out_dir: str | os.PathLike | None = None,
    *,
    threshold: float = CAPTION_THRESHOLD,
    method: str = "model",
    limit: int | None = None,
    figures: int = 4,
    window_batch: int = 16,
    batch_size: int = 32,
    resume: bool = True,
    checkpoint_every: int = 25,
    workers: int = 0,
    ctx: Distributed | None = None,
    progress: bool = True,
) -> dict:
    """CaptionIoU (%), mFPR and mFNR of the thresholded caption heatmaps over ``dataset``, the
    caption class's own figures and the single-tag-bias figures, on the raw and on the min-max
    normalised map (headline: the protocol's ``caption_normalize``). Without sliding windows,
    images of one size go through the model up to ``batch_size`` at a time."""
    segmenter = Segmenter(model, protocol.replace(caption_normalize="none"), window_batch=window_batch)
    metric = CaptionMetrics(threshold)
    key = {"task": "caption", "records": len(dataset), "limit": limit, "threshold": threshold,
           "protocol": protocol.to_dict(), "captions": inputs_digest([r.caption for r in dataset.records]),
           "data": files_digest(path for r in dataset.records for path in (r.image, r.caption_mask))}
    checkpoint = open_checkpoint(out_dir, key, model, ctx, resume)

    def predict(sample: CaptionSample):
        return segmenter.predict_caption(sample.image, sample.caption, threshold).heatmap, sample

    def predict_batch(samples: list[CaptionSample]):
        predictions = segmenter.predict_caption_batch(
            [s.image for s in samples], [s.caption for s in samples], threshold, batch_size=batch_size
        )
        return [(p.heatmap, s) for p, s in zip(predictions, samples)]

    def figure(sample: CaptionSample, heatmap: torch.Tensor) -> Image.Image:
        return _figure(sample, (normalize_caption_map(heatmap, protocol.caption_normalize) > threshold).long())

    seconds = evaluation_loop(
        dataset, predict, metric, ctx=ctx, checkpoint=checkpoint, limit=limit, desc=f"captions [{protocol.name}]",
        progress=progress, workers=workers, checkpoint_every=checkpoint_every, figure=figure, figures=figures,
        figure_dir=Path(out_dir) / "figures" if out_dir is not None else None,
        predict_batch=predict_batch if protocol.crop_size is None else None, batch_size=batch_size,
    )
    figures_by_mode = metric.compute()
    headline = figures_by_mode[protocol.caption_normalize]
    result = {
        "task": "caption segmentation",
        "method": method,
        "records": min(len(dataset), limit) if limit is not None else len(dataset),
        "processes": ctx.world,
        "threshold": threshold,
        "caption_normalize": protocol.caption_normalize,
        **{k: v for k, v in headline.items() if k != "confusion_matrix"},
        "normalizations": {mode: {k: v for k, v in f.items() if k not in ("per_class", "confusion_matrix")}
                           for mode, f in figures_by_mode.items()},
        "seconds": round(seconds, 1),
        "protocol": protocol.to_dict(),
        "confusion_matrix": headline["confusion_matrix"],
    }  # fmt: skip
    write_result(result, caption_markdown(result), out_dir, ctx)
    return result


def caption_markdown(result: dict) -> str:
    """The paper's caption-segmentation table: CaptionIoU (%), mFPR, mFNR and the caption class's
    own figures, for both map normalisations; then the single-tag-bias table and the per-class rows."""
    header = (
        f"## Caption-level segmentation ({result['records']} captions, threshold {result['threshold']:.2f}, "
        f"protocol `{result['protocol']['name']}`, headline map: {result['caption_normalize']})\n"
    )
    modes = result["normalizations"]
    bias = {mode: f["bias"] for mode, f in modes.items()}
    captions = next(iter(bias.values())).get("captions", 0)

    def fmt(value, digits=3):
        return "–" if value is None else f"{value:.{digits}f}"

    return "\n".join([
        header,
        markdown_table(["method", "CaptionIoU", "mFPR", "mFNR", "caption IoU", "caption FPR", "caption FNR", "map"],
                       [[result["method"], f["CaptionIoU"], fmt(f["mFPR"]), fmt(f["mFNR"]), f["caption_class"]["IoU"],
                         fmt(f["caption_class"]["FPR"]), fmt(f["caption_class"]["FNR"]), mode] for mode, f in modes.items()]),
        f"\n### Single tag bias ({captions} captions with ≥ 2 depicted tags; docs/segmentation.md#single-tag-bias)\n",
        markdown_table(["method", "map", "best-tag coverage", "other-tag coverage", "other / best", "contrast",
                        "background on", "mFNR", "caption FNR"],
                       [[result["method"], mode, fmt(b.get("best_coverage")), fmt(b.get("other_coverage")), fmt(b.get("ratio")),
                         fmt(b.get("contrast")), fmt(b.get("background_on")), fmt(b.get("mFNR")), fmt(b.get("caption_FNR"))]
                        for mode, b in bias.items()]),
        "",
        markdown_table(["class", "IoU (%)", "FPR", "FNR"],
                       [[c["class"], c["IoU"], fmt(c["FPR"]), fmt(c["FNR"])] for c in result["per_class"]]),
    ])  # fmt: skip
