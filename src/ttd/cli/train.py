"""ttd train and ttd pretrain: TTD fine-tuning and pretraining runs."""

from __future__ import annotations

from . import common


def add(sub) -> None:
    _add_train(sub)
    _add_pretrain(sub)


def _add_train(sub) -> None:
    from ..config import PRETRAIN_ONLY

    p = sub.add_parser(
        "train",
        help="fine-tune a dense CLIP with TTD (LoRA adapters); torchrun for many processes",
        description="Text-Tag Self-Distillation. Every setting is a config key: defaults, then --config "
        "YAML, then these flags. Many processes/machines: torchrun --nproc_per_node N -m ttd train …",
    )
    common.add_run_flags(p, skip=PRETRAIN_ONLY)
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from ..config import config_overrides, resolve_config
    from ..train import train

    config = resolve_config(args.config, config_overrides(args), resume=args.resume)
    with common.output_lock(config.out, args):
        result = train(config, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress)
    if result.adapter is not None:
        print(f"adapter: {result.adapter}")
    else:
        print(f"stopped at step {result.step}/{config.steps}; continue with: ttd train --out {config.out} --resume")
    return _exit_code(result)


def _add_pretrain(sub) -> None:
    from ..config import TTD_ONLY

    p = sub.add_parser(
        "pretrain",
        help="pretraining: a CLIP from random weights (InfoNCE), or TCL's masker on a frozen CLIP (--objective tcl)",
        description="--objective infonce (default) trains every weight of a randomly initialised CLIP with InfoNCE "
        "over the global batch and writes OUT/model.safetensors; --objective tcl --dense tcl --init CLIP trains TCL's "
        "masker from captions alone on that frozen CLIP and writes OUT/tcl.pth in the layout of TCL's released "
        "checkpoint. Same data, config, checkpoints and torchrun support as `ttd train`.",
    )
    p.add_argument("--clip-config", default=None, help="YAML/JSON file of CLIPConfig fields (default: ViT-B/16)")
    common.add_run_flags(p, skip=TTD_ONLY)
    p.set_defaults(run=_run_pretrain)


def _run_pretrain(args) -> int:
    from ..config import config_overrides, resolve_config
    from ..models import CLIPConfig
    from ..train import pretrain

    config = resolve_config(args.config, config_overrides(args), resume=args.resume, defaults={"out": "runs/pretrain"})
    clip_config = CLIPConfig.from_file(args.clip_config) if args.clip_config else None
    with common.output_lock(config.out, args):
        result = pretrain(config, clip_config, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress)
    if result.stopped_early:
        print(f"stopped at step {result.step}/{config.steps}; continue with: ttd pretrain --out {config.out} --resume")
    else:
        print(f"weights: {config.out}/{'tcl.pth' if config.objective == 'tcl' else 'model.safetensors'}")
    return _exit_code(result)


def _exit_code(result) -> int:
    """0, or 128 + the signal that stopped the run after its checkpoint (130 Ctrl-C, 143 SIGTERM)."""
    return 128 + result.signal if result.signal else 0
