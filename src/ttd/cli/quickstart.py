"""ttd quickstart: the offline first look at single tag bias and TTD."""

from __future__ import annotations

from ..protocols import CAPTION_NORMALIZATIONS
from . import common


def add(sub) -> None:
    p = sub.add_parser(
        "quickstart",
        help="single tag bias and TTD's fix on a few mini-world images, offline: a Markdown report and a PNG figure",
        description="Runs an embedded mini-world CLIP (default: the TCL-like miniworld) with and without its "
        "TTD adapter on committed sample images: caption heatmaps and per-object coverage before/after, selected "
        "tags, tag and caption figures.",
    )
    p.add_argument("--out", default="ttd-quickstart", help="output folder (default ttd-quickstart/)")
    p.add_argument("--model", default=None, help="CLIP weights (default: the embedded MaskCLIP-like 'miniworld-clip'; 'miniworld' is the TCL-like one)")
    p.add_argument("--adapter", default=None, help="TTD adapter (default: the one shipped for an embedded --model)")
    p.add_argument("--dense", default=None, help="dense variant the adapter was trained for (default: the embedded model's)")
    p.add_argument("--samples", default=None, help="manifest with tags and caption masks (default: the embedded samples)")
    p.add_argument("--images", type=int, default=4, help="images shown in the figure (default 4)")
    p.add_argument("--tau", type=float, default=0.5, help="tag selection threshold (default 0.5)")
    p.add_argument("--caption-normalize", choices=CAPTION_NORMALIZATIONS, default=None,
                   help="min-max normalise each caption map per image before the threshold, or not (default: the "
                        "embedded model's: minmax for 'miniworld-clip', whose raw maps are dark at the default "
                        "calibration; none otherwise)")
    p.add_argument("--device", default=None, help="cpu, cuda … (default: cuda when present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_quickstart)


def _run_quickstart(args) -> int:
    from ..evaluate.miniworld import EMBEDDED_MODEL, SAMPLES_MANIFEST
    from ..quickstart import run_quickstart

    common.check(0 <= args.tau <= 1, "tau", args.tau, "in [0, 1]")
    common.check(args.images >= 1, "images", args.images, "at least 1")

    result = run_quickstart(
        out=args.out,
        model=args.model or EMBEDDED_MODEL,
        adapter=args.adapter,
        samples=args.samples or SAMPLES_MANIFEST,
        images=args.images,
        dense=args.dense,
        device=args.device,
        tau=args.tau,
        caption_normalize=args.caption_normalize,
        progress=not args.quiet,
    )
    for stage in ("before", "after"):
        s = result.summary[stage]
        print(f"{stage:>6} TTD: tag F1 {100 * s['tags']['f1']:.1f}, CaptionIoU {s['caption']['CaptionIoU']:.1f}")
    print(f"report: {result.report}\nfigure: {result.figure}")
    return 0
