"""``ttd quickstart``: single tag bias and TTD's fix, on a few mini-world images, offline.

The embedded default is ``miniworld-clip``, the MaskCLIP-like mini CLIP (plain InfoNCE) pretrained
on the mini-world, with its dense readout, its caption-map normalisation and its committed TTD
adapter (``--model miniworld``: the TCL-like one, pretrained with a dense loss); both go through
the normal loaders. The committed samples are held-out test images
(clip art no embedded model was trained on), where its caption maps show single tag bias. For the first few committed samples
whose caption names at least two depicted objects (a fixed rule, no hand-picking) it shows the
caption's heatmap before and after TTD, how much of each depicted object the caption map covers,
and which caption words pixel scoring (Eq. 2) selects; then it scores all committed samples with
the same evaluators as ``ttd eval tags`` and ``ttd eval caption`` (with the single-tag-bias
figures). It writes ``report.md``, ``figure.png`` and ``quickstart.json`` into ``out``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .data.manifest import ManifestRecord, read_manifest
from .errors import TTDError
from .evaluate.miniworld import EMBEDDED_MODEL, SAMPLES_MANIFEST, miniworld_protocol
from .io import atomic_write_bytes, markdown_table, save_image, save_json
from .method.tags import TagSelection, TagSelector, clean_word
from .protocols import CAPTION_THRESHOLD

__all__ = ["QuickstartResult", "pick_samples", "run_quickstart"]

CELL = 192  # pixels per figure cell: the 64 px images enlarged (nearest) so each object is visible


@dataclass
class QuickstartResult:
    out: Path
    report: Path
    figure: Path
    summary: dict  # tags and caption figures over every sample, before / after
    examples: list[dict]  # per shown image: caption, depicted, selected before / after, IoU
    seconds: float


def pick_samples(records: Sequence[ManifestRecord], count: int) -> list[ManifestRecord]:
    """The first ``count`` records that depict at least two caption words (where single tag bias
    can show), topped up with the others in file order."""
    if count < 1:
        raise TTDError(f"--images must be at least 1, got {count}")
    several = [r for r in records if r.tags is not None and len(r.tags) >= 2]
    rest = [r for r in records if r not in several]
    return (several + rest)[:count]


def _load(model: str, dense: str, device: str | None, adapter: str | os.PathLike | None):
    from .models import load_model
    from .models.lora import load_adapter

    m = load_model(model, dense=dense, device=device)
    return (load_adapter(m, adapter) if adapter is not None else m).eval()


def _foreground_iou(mask: torch.Tensor, target: torch.Tensor) -> float:
    keep = target != 255
    pred, truth = mask.bool() & keep, (target != 0) & keep
    union = (pred | truth).sum().item()
    return 100.0 * (pred & truth).sum().item() / union if union else 100.0


def _coverage(mask: torch.Tensor, record: ManifestRecord) -> dict[str, float]:
    """Share of each depicted tag's mask that the thresholded caption map covers."""
    from .data.segmentation import read_label

    out = {}
    for word, path in (record.tag_masks or {}).items():
        tag = read_label(path)
        tag = (tag != 0) & (tag != 255)
        out[word] = round(mask[tag].float().mean().item(), 3) if tag.any() else float("nan")
    return out


def _example_rows(picked, selections: dict, heatmaps: dict, targets) -> list[dict]:
    rows = []
    for i, record in enumerate(picked):
        depicted = sorted({clean_word(t) for t in record.tags or ()})
        row = {"image": str(record.image), "caption": record.caption, "depicted": depicted}
        for stage in ("before", "after"):
            row[f"selected_{stage}"] = [t.word for t in selections[stage][i] if t.selected]
            row[f"scores_{stage}"] = {t.word: round(t.score, 3) for t in selections[stage][i]}
            row[f"caption_iou_{stage}"] = round(_foreground_iou(heatmaps[stage][i].mask, targets[i]), 1)
            row[f"coverage_{stage}"] = _coverage(heatmaps[stage][i].mask, record)
        rows.append(row)
    return rows


def _figure(picked, heatmaps: dict, targets, rows: list[dict]) -> Image.Image:
    from .images import load_image
    from .viz import heatmap_grid, text_block

    blocks = []
    for i, record in enumerate(picked):
        maps = torch.stack([(targets[i] == 1).float(), heatmaps["before"][i].heatmap, heatmaps["after"][i].heatmap])
        grid = heatmap_grid(load_image(record.image), maps, ["caption mask", "caption heatmap, before TTD", "after TTD"],
                            columns=4, cell=CELL)
        r = rows[i]
        coverage = ", ".join(f"{w} {100 * r['coverage_before'][w]:.0f} % -> {100 * r['coverage_after'][w]:.0f} %"
                             for w in r["coverage_before"])
        lines = [
            f"\"{record.caption}\"",
            f"covered by the caption map (before -> after TTD): {coverage or '-'}",
            f"selected before TTD: {', '.join(r['selected_before']) or '-'}   (object IoU {r['caption_iou_before']:.0f})",
            f"selected after TTD:  {', '.join(r['selected_after']) or '-'}   (object IoU {r['caption_iou_after']:.0f})",
        ]
        text = text_block(lines, grid.width)
        block = Image.new("RGB", (grid.width, grid.height + text.height), (255, 255, 255))
        block.paste(grid, (0, 0))
        block.paste(text, (0, grid.height))
        blocks.append(block)
    out = Image.new("RGB", (max(b.width for b in blocks), sum(b.height + 8 for b in blocks)), (255, 255, 255))
    y = 0
    for block in blocks:
        out.paste(block, (0, y))
        y += block.height + 8
    return out


def _report(result: QuickstartResult, settings: dict) -> str:
    s = result.summary

    def bias(stage: str, key: str) -> str:
        value = s[stage]["caption"]["bias"].get(key)
        return "–" if value is None else f"{value:.3f}"

    lines = [
        "# ttd quickstart: single tag bias and Text-Tag Self-Distillation on the mini-world",
        "",
        "**Single tag bias**: a CLIP model reads a caption that names several things as if it named only",
        "one of them, so the caption's heatmap lights one object and leaves the others dark. TTD selects",
        "the caption words that are really depicted (pixel-tag scoring) and trains the caption's heatmap to",
        "cover all of them (the union of their own heatmaps).",
        "",
        f"Model `{settings['model']}` ({settings['dense']} readout), TTD adapter `{settings['adapter']}`.",
        "Tags are the caption's words; pixel scoring (Eq. 2) selects those scoring ≥ "
        f"{settings['tau']}. The caption heatmap is thresholded at {settings['caption_threshold']}"
        + (" after min-max normalisation per image" if settings["caption_normalize"] == "minmax" else "")
        + "; an object is",
        "*covered* where the thresholded caption map lies on it.",
        "",
        "![before / after](figure.png)",
        "",
        f"## All {s['images']} sample images",
        "",
        markdown_table(
            ["", "tag P", "tag R", "tag F1", "CaptionIoU", "caption FNR", "best-tag coverage", "other-tag coverage",
             "other / best", "background on"],
            [
                [label, *(f"{100.0 * s[stage]['tags'][k]:.1f}" for k in ("precision", "recall", "f1")),
                 s[stage]["caption"]["CaptionIoU"], f"{s[stage]['caption']['caption_class']['FNR']:.3f}",
                 bias(stage, "best_coverage"), bias(stage, "other_coverage"), bias(stage, "ratio"), bias(stage, "background_on")]
                for stage, label in (("before", "before TTD"), ("after", "after TTD"))
            ],
        ),
        "Coverage figures over the samples whose caption names ≥ 2 depicted objects "
        "(docs/segmentation.md#single-tag-bias).",
        "",
        "## The images of the figure",
        "",
        markdown_table(
            ["caption", "coverage before TTD", "coverage after TTD", "selected before", "selected after"],
            [
                [r["caption"], ", ".join(f"{w} {100 * c:.0f} %" for w, c in r["coverage_before"].items()),
                 ", ".join(f"{w} {100 * c:.0f} %" for w, c in r["coverage_after"].items()),
                 ", ".join(r["selected_before"]) or "–", ", ".join(r["selected_after"]) or "–"]
                for r in result.examples
            ],
        ),
        f"Done in {result.seconds:.1f} s. Scores per word: `quickstart.json`.",
        "",
    ]
    return "\n".join(lines)


def run_quickstart(
    out: str | os.PathLike = "ttd-quickstart",
    model: str = EMBEDDED_MODEL,
    adapter: str | os.PathLike | None = None,
    samples: str | os.PathLike = SAMPLES_MANIFEST,
    images: int = 4,
    dense: str | None = None,
    device: str | None = None,
    tau: float = 0.5,
    caption_threshold: float = CAPTION_THRESHOLD,
    caption_normalize: str | None = None,
    progress: bool = False,
) -> QuickstartResult:
    """Before / after TTD on ``images`` sample images (figure) and on every sample (figures).

    ``adapter``, ``dense`` and ``caption_normalize`` default to the ones shipped for an embedded
    ``model`` (:func:`ttd.models.weights.default_readout`). ``caption_normalize="minmax"``
    thresholds (and shows) each caption map after min-max normalising it per image, the protocol
    knob of the same name.
    """
    from .data.segmentation import read_label
    from .models.weights import default_readout, embedded_adapter
    from .evaluate.caption import CaptionMaskDataset, evaluate_captions
    from .evaluate.tags import evaluate_tags
    from .images import load_image
    from .segment import Segmenter

    start = time.perf_counter()
    adapter = adapter or embedded_adapter(model)
    if adapter is None:
        raise TTDError("the quickstart compares a model before and after TTD: pass --adapter")
    registered_dense, registered_normalize = default_readout(model)
    dense, caption_normalize = dense or registered_dense, caption_normalize or registered_normalize
    records = read_manifest(samples)
    for record in records:
        record.require("tags", samples)
        record.require("caption_mask", samples)
    picked = pick_samples(records, images)
    models = {"before": _load(model, dense, device, None), "after": _load(model, dense, device, adapter)}
    protocol = miniworld_protocol(background_threshold=caption_threshold, caption_normalize=caption_normalize)
    targets = [read_label(r.caption_mask) for r in picked]

    selections, heatmaps, summary = {}, {}, {"images": len(records)}
    for stage, m in models.items():
        selector = TagSelector(m, TagSelection(tau=tau))
        selections[stage] = selector.select_batch([r.image for r in picked], [r.caption for r in picked])
        segmenter = Segmenter(m, protocol, use_cache=False)
        heatmaps[stage] = [segmenter.predict_caption(load_image(r.image), r.caption) for r in picked]
        tags = evaluate_tags(records, m, scorers=["pixel"], selection=TagSelection(tau=tau), manifest=samples, progress=progress)
        caption = evaluate_captions(m, CaptionMaskDataset(records, str(samples)), protocol, threshold=caption_threshold,
                                    method=stage, figures=0, progress=progress)
        summary[stage] = {"tags": tags["rows"]["pixel"],
                          "caption": {k: caption[k] for k in ("CaptionIoU", "mFPR", "mFNR", "caption_class", "bias")}}

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TTDError(f"--out {out} is a file; give a folder")
    examples = _example_rows(picked, selections, heatmaps, targets)
    figure_path = out / "figure.png"
    save_image(_figure(picked, heatmaps, targets, examples), figure_path)
    result = QuickstartResult(out, out / "report.md", figure_path, summary, examples, time.perf_counter() - start)
    settings = {"model": model, "dense": dense, "adapter": str(adapter), "samples": str(samples), "tau": tau,
                "caption_threshold": caption_threshold, "caption_normalize": caption_normalize}
    save_json({"settings": settings, "summary": summary, "examples": examples}, out / "quickstart.json")
    atomic_write_bytes(result.report, _report(result, settings).encode("utf-8"))
    return result
