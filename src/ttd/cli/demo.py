"""ttd demo: the local web page."""

from __future__ import annotations




def add(sub) -> None:
    p = sub.add_parser("demo", help="a local web page: tags, heatmaps and segmentation before / after TTD (needs ttd[demo])")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link (off by default)")
    p.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from ..demo import run_demo

    run_demo(args.host, args.port, args.share)
    return 0
