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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttd", description="Text-Tag Self-Distillation for CLIP dense models")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_eval):
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
