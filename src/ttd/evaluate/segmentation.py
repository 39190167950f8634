"""Open-vocabulary semantic segmentation on a benchmark: mIoU / mFPR / mFNR under a protocol.

Writes ``results.json``, ``results.md`` (laid out like the paper's tables) and a few figures of
predictions beside ground truth into ``out_dir``; runs sharded under torchrun and resumes an
interrupted run from its checkpoints.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from PIL import Image

from ..data.segmentation import IGNORE_INDEX, SegmentationDataset
from ..distributed import Distributed, owns_process_group
from ..io import files_digest, markdown_table
from ..metrics import ConfusionMatrix
from ..protocols import Protocol
from ..segment import Segmenter
from ..viz import IGNORE_COLOR, overlay, palette, panels, with_legend
from ..vocabulary import Vocabulary
from .runtime import evaluation_loop, open_checkpoint, write_result

__all__ = ["DATASET_TITLES", "evaluate_segmentation", "prediction_figure"]

DATASET_TITLES = {
    "voc21": "VOC21",
    "voc20": "VOC20",
    "context60": "Context60",
    "context59": "Context59",
    "coco_object": "Object",
    "coco_stuff171": "Stuff",
    "cityscapes": "City",
    "ade20k": "ADE",
}


def prediction_figure(
    image: Image.Image, prediction: torch.Tensor, target: torch.Tensor, vocabulary: Vocabulary
) -> Image.Image:
    """[image | prediction | ground truth] with a legend of the classes either one shows."""
    colors = palette(len(vocabulary), vocabulary.has_background)
    skip = (0,) if vocabulary.has_background else ()
    shown = sorted(set(prediction.unique().tolist()) | (set(target.unique().tolist()) - {IGNORE_INDEX}))
    figure = panels(
        [image, overlay(image, prediction, colors, skip=skip), overlay(image, target, colors, skip=skip)],
        ["image", "prediction", "ground truth"],
    )
    names, swatches = [vocabulary.display_names[k] for k in shown], [colors[k] for k in shown]
    if (target == IGNORE_INDEX).any():
        names, swatches = names + ["ignored"], swatches + [IGNORE_COLOR]
    return with_legend(figure, names, swatches)


def _percent(x: float) -> float:
    return round(100.0 * x, 2) if not math.isnan(x) else float("nan")


@owns_process_group
def evaluate_segmentation(
    model,
    dataset: SegmentationDataset,
    protocol: Protocol,
    out_dir: str | os.PathLike | None = None,
    *,
    method: str = "model",
    limit: int | None = None,
    figures: int = 4,
    window_batch: int = 16,
    batch_size: int = 32,
    use_cache: bool = True,
    resume: bool = True,
    checkpoint_every: int = 25,
    workers: int = 0,
    ctx: Distributed | None = None,
    progress: bool = True,
) -> dict:
    """Segment every image of ``dataset`` (the first ``limit``) and score it against its labels.

    Without sliding windows (``crop_size: null``), images of one size go through the model up to
    ``batch_size`` at a time; with windows, one image at a time (its windows batched by
    ``window_batch``).

    Returns the result dict (also written to ``out_dir`` by the main process): ``mIoU``,
    ``mFPR``, ``mFNR``, ``aAcc`` in percent / fractions, per-class values, the protocol used.
    """
    vocabulary = dataset.vocabulary
    if ctx.main:  # the main process fills the text cache; the others then read it
        segmenter = Segmenter(model, protocol, vocabulary, use_cache=use_cache, window_batch=window_batch)
    ctx.barrier()
    if not ctx.main:
        segmenter = Segmenter(model, protocol, vocabulary, use_cache=use_cache, window_batch=window_batch)

    metric = ConfusionMatrix(len(vocabulary))
    key = {"task": "seg", "dataset": dataset.name, "images": len(dataset), "limit": limit,
           "protocol": protocol.to_dict(), "classes": dataset.vocabulary.names,
           "data": files_digest(path for _, *paths in dataset.items for path in paths)}
    checkpoint = open_checkpoint(out_dir, key, model, ctx, resume)

    def predict(sample):
        return segmenter.predict(sample.image, keep_scores=False).labels, sample.label

    def predict_batch(samples):
        predictions = segmenter.predict_batch([s.image for s in samples], keep_scores=False, batch_size=batch_size)
        return [(p.labels, s.label) for p, s in zip(predictions, samples)]

    def figure(sample, prediction):
        return prediction_figure(sample.image, prediction, sample.label, vocabulary)

    seconds = evaluation_loop(
        dataset, predict, metric, ctx=ctx, checkpoint=checkpoint, limit=limit,
        desc=f"{dataset.name} [{protocol.name}]", progress=progress, workers=workers,
        checkpoint_every=checkpoint_every, figure=figure, figures=figures,
        figure_dir=Path(out_dir) / "figures" if out_dir is not None else None,
        predict_batch=predict_batch if protocol.crop_size is None else None, batch_size=batch_size,
    )
    scores = metric.reduce().compute()
    names = vocabulary.display_names
    result = {
        "task": "semantic segmentation",
        "method": method,
        "dataset": dataset.name,
        "images": min(len(dataset), limit) if limit is not None else len(dataset),
        "processes": ctx.world,
        "mIoU": _percent(scores["mIoU"]),
        "mFPR": round(scores["mFPR"], 4),
        "mFNR": round(scores["mFNR"], 4),
        "aAcc": _percent(scores["aAcc"]),
        "per_class": [
            {"class": n, "IoU": _percent(i), "FPR": round(f, 4), "FNR": round(r, 4)}
            for n, i, f, r, present in zip(names, scores["IoU"], scores["FPR"], scores["FNR"], scores["present"])
            if present
        ],
        "seconds": round(seconds, 1),
        "protocol": protocol.to_dict(),
        "confusion_matrix": metric.matrix.tolist(),
    }
    write_result(result, segmentation_markdown(result), out_dir, ctx)
    return result


def segmentation_markdown(result: dict) -> str:
    """The paper's layout (method × dataset mIoU %), then the error split and per-class rows."""
    title = DATASET_TITLES.get(result["dataset"], result["dataset"])
    p = result["protocol"]
    lines = [
        f"## Open-vocabulary segmentation: {title} ({result['images']} images, protocol `{p['name']}`)\n",
        markdown_table(["method", title], [[result["method"], result["mIoU"]]]),
        markdown_table(["mIoU (%)", "mFPR", "mFNR", "aAcc (%)"],
                       [[result["mIoU"], f"{result['mFPR']:.3f}", f"{result['mFNR']:.3f}", result["aAcc"]]]),
        markdown_table(["class", "IoU (%)", "FPR", "FNR"],
                       [[c["class"], c["IoU"], f"{c['FPR']:.3f}", f"{c['FNR']:.3f}"] for c in result["per_class"]]),
    ]
    return "\n".join(lines)
