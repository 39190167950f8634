"""ttd segment: one image by class names or by a caption, as an overlay PNG."""

from __future__ import annotations

from ..errors import TTDError
from . import common


def add(sub) -> None:
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
    common.add_protocol_args(p, "tcl")
    common.add_model_args(p)
    p.set_defaults(run=_run_segment)


def _run_segment(args) -> int:
    from ..images import load_image
    from ..io import save_image
    from ..segment import Segmenter, segment_figure

    extra = {"scales": args.scales, "flip": args.flip, "pamr": args.pamr}
    if args.classes:
        extra["background_threshold"] = args.threshold
    protocol = common.resolve_protocol(args, extra={k: v for k, v in extra.items() if v is not None})
    if args.print_protocol:
        return 0
    if args.text is not None and not args.text.strip():
        raise TTDError("--text is empty; give a caption such as --text 'a cat on a sofa'")
    common.check(args.window_batch >= 1, "window-batch", args.window_batch, "at least 1")
    for flag in ("out", "heatmaps"):
        if getattr(args, flag):
            common.check_image_out(flag, getattr(args, flag))
    image = load_image(args.image)
    segmenter = Segmenter(common.load_model_from_args(args), protocol, window_batch=args.window_batch)
    shown = segment_figure(segmenter, image, classes=args.classes, text=args.text, background=args.background,
                           threshold=args.threshold, heatmaps=bool(args.heatmaps))
    for name, share in shown.shares:
        if args.text:
            print(f"{name!r}: {share:.1f}% of the image above {shown.threshold:.2f}")
        else:
            print(f"{name:<24} {share:5.1f}%")
    with common.writable("out", args.out):
        save_image(shown.overlay, args.out)
    print(f"overlay written to {args.out}")
    if args.heatmaps:
        with common.writable("heatmaps", args.heatmaps):
            save_image(shown.heatmaps, args.heatmaps)
        print(f"heatmaps written to {args.heatmaps}")
    return 0
