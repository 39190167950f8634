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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttd", description="Text-Tag Self-Distillation for CLIP dense models")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info,):
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
