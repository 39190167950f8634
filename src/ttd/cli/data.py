"""ttd data miniworld | prune: build the mini-world, prune image-text pairs."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import common


def add(sub) -> None:
    p = sub.add_parser("data", help="dataset tools: build the mini-world, prune image-text pairs")
    data_sub = p.add_subparsers(dest="task", required=True)
    for add_task in (_add_data_miniworld, _add_data_prune):
        add_task(data_sub)


def _add_data_miniworld(sub) -> None:
    p = sub.add_parser(
        "miniworld",
        help="build the offline mini-world (emoji or clip-art composites, captions, masks)",
        description="Build the mini-world: mini-world II (default) from eight iconify emoji sets "
        "(`npm pack @iconify-json/NAME` into --emoji DIR, docs/miniworld.md), two styles held out for test/; "
        "mini-world I (--vocabulary openclipart) from Debian's openclipart-png. WebDataset shards, JSONL "
        "manifests, caption/tag masks and a segmentation set. Same seed, same bytes.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (must be empty, or see --overwrite)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--train", type=int, default=10000, help="training images (default 10000)")
    p.add_argument("--val", type=int, default=1000, help="validation images (default 1000)")
    p.add_argument(
        "--test", type=int, default=1000,
        help="images of each test split, test/ (held-out styles or drawings) and test-seen/ (default 1000)",
    )  # fmt: skip
    p.add_argument("--size", type=int, default=96, help="image side in pixels, 32-512 (default 96)")
    p.add_argument("--objects", default="1-3", help="objects per image: N or MIN-MAX, at most 3 (default 1-3)")
    p.add_argument(
        "--scale", default="0.45-0.9", help="size of a lone object, √(box area) / image side, MIN-MAX (default 0.45-0.9)"
    )
    p.add_argument(
        "--max-occlusion", type=float, default=0.3, help="share of an object a later one may hide (default 0.3)"
    )
    p.add_argument("--nouns", default=None, help="comma-separated subset of the vocabulary (default: all)")
    p.add_argument("--emoji", type=Path, default=None, help="folder of the iconify emoji sets (npm pack archives or icons.json files)")
    p.add_argument("--source", type=Path, default=None, help="clip-art root (default /usr/share/openclipart/png)")
    p.add_argument(
        "--vocabulary", default=None,
        help="committed vocabulary (emoji: mini-world II, the default; openclipart: mini-world I) or a JSON file",
    )  # fmt: skip
    p.add_argument(
        "--heldout-styles", default=None,
        help="comma-separated styles only test/ draws (default: the vocabulary's, twemoji,openmoji for emoji); "
        "'none' holds out drawings instead",
    )  # fmt: skip
    p.add_argument("--shard-size", type=int, default=10000, help="samples per WebDataset shard (default 10000)")
    p.add_argument(
        "--train-masks",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="write masks and the segmentation set for the training split too (default yes)",
    )
    p.add_argument(
        "--no-augment", dest="augment", action="store_false",
        help="paste training cut-outs as drawn (default: recoloured, rotated, stretched)",
    )  # fmt: skip
    p.add_argument(
        "--shape-augment", action="store_true",
        help="also repaint, blur and partly erase training cut-outs, so a model learns shapes, not drawings",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=0, help="render in this many processes (default 0 = in-process)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous build in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_data_miniworld)


def _run_data_miniworld(args) -> int:
    from ..data.miniworld import DEFAULT_SOURCE, MiniWorldConfig, build_miniworld, parse_objects, parse_scale, parse_styles

    lo, hi = parse_objects(args.objects)
    config = MiniWorldConfig(
        seed=args.seed,
        train=args.train,
        val=args.val,
        test=args.test,
        size=args.size,
        min_objects=lo,
        max_objects=hi,
        scale=parse_scale(args.scale),
        max_occlusion=args.max_occlusion,
        nouns=tuple(n.strip() for n in args.nouns.split(",") if n.strip()) if args.nouns else None,
        shard_size=args.shard_size,
        train_masks=args.train_masks,
        augment=args.augment,
        shape_augment=args.shape_augment,
        heldout_styles=parse_styles(args.heldout_styles),
    )
    with common.output_lock(args.out, args):
        summary = build_miniworld(
            args.out,
            config,
            source=args.source or DEFAULT_SOURCE,
            emoji=args.emoji,
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


def _add_data_prune(data_sub) -> None:
    q = data_sub.add_parser(
        "prune",
        help="keep the pairs whose image and caption agree best (sample-level pruning)",
        description="Scores every pair once by the cosine of its global image and caption embeddings and "
        "keeps the top fraction. A manifest gives a new manifest; shards give a keep-list of sample keys "
        "(ttd train --keep FILE). Resumable: scores are saved in chunks beside --out.",
    )
    q.add_argument("--data", required=True, help="JSONL manifest or WebDataset shards (folder, glob, {a..b})")
    q.add_argument("--out", required=True, help="the pruned manifest (.jsonl) or, for shards, the keep-list (.txt)")
    q.add_argument("--keep-fraction", type=float, default=0.5, help="fraction of pairs kept (default 0.5)")
    q.add_argument("--batch-size", type=int, default=256, help="pairs scored at once (default 256)")
    q.add_argument("--workers", type=int, default=4, help="image-decoding processes (default 4)")
    q.add_argument("--image-size", type=int, default=224, help="scoring resolution (default 224)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    common.add_model_args(q)
    q.set_defaults(run=_run_prune, resume_hint=common.RERUN)


def _run_prune(args) -> int:
    from ..data.prune import check_prune_args, prune, scores_dir

    check_prune_args(args.data, args.keep_fraction, args.batch_size, args.image_size, args.workers)
    with common.output_lock(scores_dir(Path(args.out)), args):
        result = prune(
            args.data,
            args.out,
            common.load_model_from_args(args),
            keep_fraction=args.keep_fraction,
            batch_size=args.batch_size,
            workers=args.workers,
            image_size=args.image_size,
            progress=not args.quiet,
        )
    print(f"kept {result.kept:,} of {result.scored:,} scored pairs (score ≥ {result.threshold:.4f}); "
          f"{result.skipped:,} unreadable skipped → {result.out}")
    return 0
