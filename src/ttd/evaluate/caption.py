"""Caption-level (text-level) segmentation: the whole caption is one query.

For each manifest record, the caption's calibrated heatmap over the image (windows, scales, flips
and PAMR of the protocol, brought to the image size) is thresholded at the background threshold
(0.40 by default) into a binary mask and compared with the record's ``caption_mask`` (the union
of the objects the caption depicts; 255 = ignore).

Metric (the TTD paper's): one 2×2 confusion matrix over the whole dataset with the classes
{0 = background, 1 = caption}; for each class c, ``IoU_c = TP/(TP+FP+FN)``,
``FPR_c = FP/(TP+FP+FN)``, ``FNR_c = FN/(TP+FP+FN)``; CaptionIoU, mFPR and mFNR are their means
over the two classes (so CaptionIoU + mFPR + mFNR = 1).
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
from ..metrics import ConfusionMatrix
from ..protocols import Protocol
from ..segment import Segmenter
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
        mask = read_label(record.caption_mask)
        if tuple(mask.shape) != (image.height, image.width):
            raise TTDError(
                f"caption mask {record.caption_mask} is {mask.shape[1]}×{mask.shape[0]} but image {record.image} "
                f"is {image.width}×{image.height}"
            )
        target = torch.where(mask == IGNORE_INDEX, IGNORE_INDEX, (mask != 0).long())
        return CaptionSample(image, record.caption, target, f"{record.line:06d}_{record.image.stem}")


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
    threshold: float = 0.40,
    method: str = "model",
    limit: int | None = None,
    figures: int = 4,
    window_batch: int = 16,
    resume: bool = True,
    checkpoint_every: int = 25,
    workers: int = 0,
    ctx: Distributed | None = None,
    progress: bool = True,
) -> dict:
    """CaptionIoU (%), mFPR and mFNR of the thresholded caption heatmaps over ``dataset``."""
    segmenter = Segmenter(model, protocol, window_batch=window_batch)
    metric = ConfusionMatrix(len(CLASSES))
    key = {"task": "caption", "records": len(dataset), "limit": limit, "threshold": threshold,
           "protocol": protocol.to_dict(), "captions": inputs_digest([r.caption for r in dataset.records]),
           "data": files_digest(path for r in dataset.records for path in (r.image, r.caption_mask))}
    checkpoint = open_checkpoint(out_dir, key, model, ctx, resume)

    def predict(sample: CaptionSample):
        return segmenter.predict_caption(sample.image, sample.caption, threshold).mask.long(), sample.target

    seconds = evaluation_loop(
        dataset, predict, metric, ctx=ctx, checkpoint=checkpoint, limit=limit, desc=f"captions [{protocol.name}]",
        progress=progress, workers=workers, checkpoint_every=checkpoint_every, figure=_figure, figures=figures,
        figure_dir=Path(out_dir) / "figures" if out_dir is not None else None,
    )
    scores = metric.reduce().compute()
    result = {
        "task": "caption segmentation",
        "method": method,
        "records": min(len(dataset), limit) if limit is not None else len(dataset),
        "processes": ctx.world,
        "threshold": threshold,
        "CaptionIoU": round(100.0 * scores["mIoU"], 2),
        "mFPR": round(scores["mFPR"], 4),
        "mFNR": round(scores["mFNR"], 4),
        "per_class": [
            {"class": c, "IoU": round(100.0 * i, 2), "FPR": round(f, 4), "FNR": round(r, 4)}
            for c, i, f, r in zip(CLASSES, scores["IoU"], scores["FPR"], scores["FNR"])
        ],
        "seconds": round(seconds, 1),
        "protocol": protocol.to_dict(),
        "confusion_matrix": metric.matrix.tolist(),
    }
    write_result(result, caption_markdown(result), out_dir, ctx)
    return result


def caption_markdown(result: dict) -> str:
    """The paper's caption-segmentation table: CaptionIoU (%), mFPR, mFNR; then per class."""
    header = (
        f"## Caption-level segmentation ({result['records']} captions, threshold {result['threshold']:.2f}, "
        f"protocol `{result['protocol']['name']}`)\n"
    )
    return "\n".join([
        header,
        markdown_table(["method", "CaptionIoU", "mFPR", "mFNR"],
                       [[result["method"], result["CaptionIoU"], f"{result['mFPR']:.3f}", f"{result['mFNR']:.3f}"]]),
        markdown_table(["class", "IoU (%)", "FPR", "FNR"],
                       [[c["class"], c["IoU"], f"{c['FPR']:.3f}", f"{c['FNR']:.3f}"] for c in result["per_class"]]),
    ])
