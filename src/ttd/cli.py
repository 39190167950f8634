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
    for add in ():
        add(eval_sub)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="build and prepare datasets: miniworld")
    data_sub = p.add_subparsers(dest="task", required=True)
    for add in (_add_data_miniworld,):
        add(data_sub)


def _add_data_miniworld(sub) -> None:
    from pathlib import Path

    p = sub.add_parser(
        "miniworld",
        help="build the offline mini-world (clip-art composites, captions, masks)",
        description="Build the mini-world from Debian's openclipart-png (apt-get install -y openclipart-png): "
        "WebDataset shards, JSONL manifests, caption/tag masks and a segmentation set. Same seed, same bytes.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (must be empty, or see --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--train", type=int, default=10000, help="training images (default 10000)")
    p.add_argument("--val", type=int, default=1000, help="validation images (default 1000)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels, 32-512 (default 64)")
    p.add_argument("--objects", default="1-3", help="objects per image: N or MIN-MAX, at most 3 (default 1-3)")
    p.add_argument(
        "--scale", default="0.45-0.9", help="size of a lone object, √(box area) / image side, MIN-MAX (default 0.45-0.9)"
    )
    p.add_argument(
        "--max-occlusion", type=float, default=0.3, help="share of an object a later one may hide (default 0.3)"
    )
    p.add_argument("--nouns", default=None, help="comma-separated subset of the vocabulary (default: all)")
    p.add_argument("--source", type=Path, default=None, help="clip-art root (default /usr/share/openclipart/png)")
    p.add_argument("--vocabulary", type=Path, default=None, help="vocabulary JSON (default: the committed one)")
    p.add_argument("--shard-size", type=int, default=10000, help="samples per WebDataset shard (default 10000)")
    p.add_argument(
        "--train-masks",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="write masks and the segmentation set for the training split too (default yes)",
    )
    p.add_argument("--workers", type=int, default=0, help="render in this many processes (default 0 = in-process)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous build in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_data_miniworld)


def _run_data_miniworld(args) -> int:
    from .data.miniworld import DEFAULT_SOURCE, MiniWorldConfig, build_miniworld, parse_objects, parse_scale

    lo, hi = parse_objects(args.objects)
    config = MiniWorldConfig(
        seed=args.seed,
        train=args.train,
        val=args.val,
        size=args.size,
        min_objects=lo,
        max_objects=hi,
        scale=parse_scale(args.scale),
        max_occlusion=args.max_occlusion,
        nouns=tuple(n.strip() for n in args.nouns.split(",") if n.strip()) if args.nouns else None,
        shard_size=args.shard_size,
        train_masks=args.train_masks,
    )
    summary = build_miniworld(
        args.out,
        config,
        source=args.source or DEFAULT_SOURCE,
        vocabulary=args.vocabulary,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(
        f"mini-world: {summary['images']} images ({summary['nouns']} nouns) in {summary['out']} "
        f"({summary['images_per_s']:.0f} images/s); see {summary['out']}/README.txt"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttd", description="Text-Tag Self-Distillation for CLIP dense models")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_eval, _add_data):
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
