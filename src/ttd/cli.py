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


def _add_train(sub) -> None:
    from .train_config import add_config_flags

    p = sub.add_parser(
        "train",
        help="fine-tune a dense CLIP with TTD (LoRA adapters); torchrun for many processes",
        description="Text-Tag Self-Distillation. Every setting is a config key: defaults, then --config "
        "YAML, then these flags. Many processes/machines: torchrun --nproc_per_node N -m ttd train …",
    )
    p.add_argument("--config", default=None, help="YAML file of config keys (flags win)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP", help="stop with a checkpoint at this step")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to log.jsonl)")
    add_config_flags(p)
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from .train import resolve_config, train
    from .train_config import config_overrides

    config = resolve_config(args.config, config_overrides(args), resume=args.resume)
    result = train(config, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress)
    if result.adapter is not None:
        print(f"adapter: {result.adapter}")
    else:
        print(f"stopped at step {result.step}/{config.steps}; continue with: ttd train --out {config.out} --resume")
    return 0


def _add_pretrain(sub) -> None:
    from .train_config import TTD_ONLY, add_config_flags

    p = sub.add_parser(
        "pretrain",
        help="CLIP contrastive pretraining from random weights (InfoNCE) on the same data formats",
        description="Trains every weight of a randomly initialised CLIP with InfoNCE over the global batch; "
        "same data, config, checkpoints and torchrun support as `ttd train`. Writes OUT/model.safetensors.",
    )
    p.add_argument("--config", default=None, help="YAML file of config keys (flags win)")
    p.add_argument("--clip-config", default=None, help="YAML/JSON file of CLIPConfig fields (default: ViT-B/16)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP", help="stop with a checkpoint at this step")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to log.jsonl)")
    add_config_flags(p, skip=TTD_ONLY)
    p.set_defaults(run=_run_pretrain)


def _run_pretrain(args) -> int:
    from .train import pretrain, resolve_config
    from .train_config import config_overrides

    config = resolve_config(args.config, config_overrides(args), resume=args.resume, defaults={"out": "runs/pretrain"})
    clip_config = _read_clip_config(args.clip_config) if args.clip_config else None
    result = pretrain(config, clip_config, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress)
    if result.stopped_early:
        print(f"stopped at step {result.step}/{config.steps}; continue with: ttd pretrain --out {config.out} --resume")
    else:
        print(f"weights: {config.out}/model.safetensors")
    return 0


def _read_clip_config(path: str):
    import dataclasses

    import yaml

    from .models import CLIPConfig

    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except OSError as err:
        raise TTDError(f"cannot read the CLIP config {path}: {err.strerror}") from None
    known = {f.name for f in dataclasses.fields(CLIPConfig)}
    unknown = sorted(set(values) - known) if isinstance(values, dict) else ["<not a mapping>"]
    if unknown:
        raise TTDError(f"CLIP config {path}: unknown field {unknown[0]!r}; fields: {', '.join(sorted(known))}")
    return CLIPConfig(**values)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="dataset tools: prune image-text pairs")
    data_sub = p.add_subparsers(dest="data_command", required=True)
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
    add_model_args(q)
    q.set_defaults(run=_run_prune)


def _run_prune(args) -> int:
    from .data.prune import check_prune_args, prune

    check_prune_args(args.data, args.keep_fraction, args.batch_size)
    result = prune(
        args.data,
        args.out,
        load_model_from_args(args),
        keep_fraction=args.keep_fraction,
        batch_size=args.batch_size,
        workers=args.workers,
        image_size=args.image_size,
    )
    print(f"kept {result.kept:,} of {result.scored:,} scored pairs (score ≥ {result.threshold:.4f}); "
          f"{result.skipped:,} unreadable skipped → {result.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttd", description="Text-Tag Self-Distillation for CLIP dense models")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_eval, _add_train, _add_pretrain, _add_data):
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
