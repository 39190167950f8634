"""The ``ttd`` command: parses arguments and calls the Python API; nothing else lives here."""

from __future__ import annotations

import argparse
import json
import platform
import sys

from .errors import TTDError


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="versions, device, known weights and dense variants")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    import torch

    from . import __version__
    from .io import default_device
    from .models.dense import DENSE_VARIANTS
    from .models.weights import KNOWN_WEIGHTS

    info = {
        "ttd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(default_device()),
        "cuda": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "weights": sorted(KNOWN_WEIGHTS),
        "dense_variants": list(DENSE_VARIANTS),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            value = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:<{width}}  {value}")
    return 0


DEFAULT_MODEL = "ViT-B-16/openai"


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags every command that runs a model shares."""
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"weights name or local file (default {DEFAULT_MODEL})")
    p.add_argument("--dense", default="maskclip", help="dense variant: clip, maskclip, sclip, clearclip, naclip")
    p.add_argument("--adapter", default=None, help="a TTD adapter (safetensors) trained with `ttd train`")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when present)")
    p.add_argument(
        "--quick-gelu",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="activation of a local weights file (named weights know theirs)",
    )


def load_model_from_args(args):
    """The dense model (plus adapter) the shared model flags describe, in eval mode."""
    from .models import load_model

    model = load_model(args.model, dense=args.dense, device=args.device, quick_gelu=args.quick_gelu)
    if args.adapter:
        from .models.lora import load_adapter

        model = load_adapter(model, args.adapter)
    return model.eval()


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate the paper's tasks: tags, caption, seg")
    eval_sub = p.add_subparsers(dest="task", required=True)
    for add in (_add_eval_seg, _add_eval_caption):
        add(eval_sub)


# --- segmentation: `ttd segment`, `ttd eval seg`, `ttd eval caption` ---------------------------
CAPTION_THRESHOLD = 0.40  # the paper's text-level segmentation threshold


def _add_protocol_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--protocol", default=default, help=f"preset (tcl, ttd, sclip) or a YAML file (default {default})")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KNOB=VALUE",
                   help="override protocol knobs, e.g. --set pamr=true scales=1,0.5 (see --print-protocol)")
    p.add_argument("--print-protocol", action="store_true", help="print the resolved protocol as YAML and exit")
    p.add_argument("--window-batch", type=int, default=16,
                   help="windows per forward (default 16; lower it to save memory)")


def _add_eval_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="output folder: results.json, results.md, figures/")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--figures", type=int, default=4, help="prediction figures to write (default 4)")
    p.add_argument("--method", default=None, help="row label in the results table (default: variant and model)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore checkpoints of an earlier run")
    add_model_args(p)


def _add_eval_seg(sub) -> None:
    p = sub.add_parser("seg", help="open-vocabulary semantic segmentation on a benchmark (mIoU, mFPR, mFNR)")
    p.add_argument("--dataset", required=True,
                   help="voc21 voc20 context60 context59 coco_object coco_stuff171 cityscapes ade20k, or generic")
    p.add_argument("--root", help="dataset folder (mmsegmentation layout; generic: images/, masks/, classes.txt)")
    _add_protocol_args(p, "ttd")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", help="do not read or write the text cache")
    _add_eval_run_args(p)
    p.set_defaults(run=_run_eval_seg)


def _add_eval_caption(sub) -> None:
    p = sub.add_parser("caption", help="caption-level segmentation on a JSONL manifest (CaptionIoU, mFPR, mFNR)")
    p.add_argument("--data", help="JSONL manifest whose records have image, caption and caption_mask")
    p.add_argument("--threshold", type=float, default=CAPTION_THRESHOLD, help="heatmap threshold (default 0.40)")
    _add_protocol_args(p, "tcl")
    _add_eval_run_args(p)
    p.set_defaults(run=_run_eval_caption)


def _method_label(args) -> str:
    return args.method or f"{args.dense} ({args.model}{' + ' + args.adapter if args.adapter else ''})"


def _resolve_protocol(args, dataset: str | None = None, extra: dict | None = None):
    from .protocols import load_protocol, parse_overrides

    overrides = {**(extra or {}), **parse_overrides(args.overrides)}
    protocol = load_protocol(args.protocol, dataset, overrides)
    if args.print_protocol:
        print(protocol.to_yaml(), end="")
    return protocol


def _require(args, *names: str) -> None:
    for name in names:
        if not getattr(args, name):
            raise TTDError(f"--{name} is required (unless --print-protocol)")


def _start_eval(args):
    """Join torchrun's process group (if any) and load the model on this process's device."""
    from .evaluate.runtime import init_distributed

    ctx = init_distributed(args.device)
    if ctx.world_size > 1 and args.device is None:
        import torch

        args.device = f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu"
    return ctx, load_model_from_args(args)


def _finish_eval(ctx) -> None:
    import torch.distributed as dist

    if ctx.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def _run_eval_seg(args) -> int:
    from .data.segmentation import load_segmentation_dataset
    from .evaluate.segmentation import evaluate_segmentation, segmentation_markdown

    protocol = _resolve_protocol(args, args.dataset)
    if args.print_protocol:
        return 0
    _require(args, "root", "out")
    dataset = load_segmentation_dataset(args.dataset, args.root)
    ctx, model = _start_eval(args)
    try:
        result = evaluate_segmentation(
            model, dataset, protocol, args.out, method=_method_label(args), limit=args.limit, figures=args.figures,
            window_batch=args.window_batch, use_cache=args.use_cache, resume=args.resume, workers=args.workers, ctx=ctx,
        )
    finally:
        _finish_eval(ctx)
    if ctx.is_main:
        print(segmentation_markdown(result), end="")
        print(f"results written to {args.out}")
    return 0


def _run_eval_caption(args) -> int:
    from .evaluate.caption import CaptionMaskDataset, caption_markdown, evaluate_captions

    protocol = _resolve_protocol(args)
    if args.print_protocol:
        return 0
    _require(args, "data", "out")
    dataset = CaptionMaskDataset.from_manifest(args.data)
    ctx, model = _start_eval(args)
    try:
        result = evaluate_captions(
            model, dataset, protocol, args.out, threshold=args.threshold, method=_method_label(args), limit=args.limit,
            figures=args.figures, window_batch=args.window_batch, resume=args.resume, workers=args.workers, ctx=ctx,
        )
    finally:
        _finish_eval(ctx)
    if ctx.is_main:
        print(caption_markdown(result), end="")
        print(f"results written to {args.out}")
    return 0


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment one image by class names or by a caption; writes an overlay PNG")
    p.add_argument("image", help="image file")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--classes",
                      help='comma-separated names ("cat,dog,grass") or a classes.txt file (synonyms per line)')
    what.add_argument("--text", help="one free-form caption: its heatmap thresholded into a mask")
    p.add_argument("--no-background", dest="background", action="store_false",
                   help="do not add a background class in front of --classes names")
    p.add_argument("--scales", help="comma-separated image scales, e.g. 1,0.5,1.5 (overrides the protocol)")
    p.add_argument("--flip", action="store_true", default=None, help="also average the mirrored image")
    p.add_argument("--pamr", action="store_true", default=None, help="refine with PAMR")
    p.add_argument("--threshold", type=float, default=None,
                   help="background threshold for --classes (default: the protocol's), "
                   "caption threshold for --text (default 0.40)")
    p.add_argument("--out", default="overlay.png", help="overlay PNG to write (default overlay.png)")
    p.add_argument("--heatmaps", default=None, help="also write a grid of per-class (or caption) heatmaps here")
    _add_protocol_args(p, "tcl")
    add_model_args(p)
    p.set_defaults(run=_run_segment)


def _run_segment(args) -> int:
    from pathlib import Path

    from .images import load_image
    from .segment import Segmenter
    from .viz import heatmap_grid, overlay, palette, with_legend
    from .vocabulary import Vocabulary

    extra = {"scales": args.scales, "flip": args.flip, "pamr": args.pamr}
    if args.classes:
        extra["background_threshold"] = args.threshold
    protocol = _resolve_protocol(args, extra={k: v for k, v in extra.items() if v is not None})
    if args.print_protocol:
        return 0
    image = load_image(args.image)
    segmenter = Segmenter(load_model_from_args(args), protocol, window_batch=args.window_batch)
    if args.text:
        threshold = CAPTION_THRESHOLD if args.threshold is None else args.threshold
        result = segmenter.predict_caption(image, args.text, threshold)
        labels, colors, skip = result.mask.long(), [(0, 0, 0), (255, 60, 60)], (0,)
        legend_names, legend_colors = [args.text], colors[1:]
        heat, titles = result.heatmap[None], [args.text]
        share = 100.0 * result.mask.float().mean().item()
        print(f"{args.text!r}: {share:.1f}% of the image above {result.threshold:.2f}")
    else:
        if Path(args.classes).is_file():
            vocabulary = Vocabulary.from_file(args.classes)
        else:
            vocabulary = Vocabulary.from_names(args.classes, background=args.background)
        segmenter.set_vocabulary(vocabulary)
        result = segmenter.predict(image)
        labels, colors = result.labels, palette(len(vocabulary), vocabulary.has_background)
        skip = (0,) if vocabulary.has_background else ()
        shown = sorted(labels.unique().tolist())
        legend_names, legend_colors = [result.classes[k] for k in shown], [colors[k] for k in shown]
        first = 1 if vocabulary.has_background else 0  # the background channel is not a heatmap
        heat, titles = result.scores[first:], result.classes[first:]
        for k in shown:
            print(f"{result.classes[k]:<24} {100.0 * (labels == k).float().mean().item():5.1f}%")
    figure = with_legend(overlay(image, labels, colors, skip=skip), legend_names, legend_colors)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out)
    print(f"overlay written to {args.out}")
    if args.heatmaps:
        heatmap_grid(image, heat.clamp(0, 1), titles).save(args.heatmaps)
        print(f"heatmaps written to {args.heatmaps}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttd", description="Text-Tag Self-Distillation for CLIP dense models")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_eval, _add_segment):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (TTDError, FileNotFoundError) as err:
        print(f"ttd {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ttd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
