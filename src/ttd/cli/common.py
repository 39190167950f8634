"""What several ``ttd`` commands share: the model flags, output locks, range checks, protocols."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from ..config import DEFAULT_MODEL
from ..errors import TTDError
from ..io import REFUSED

RERUN = "rerun the same command to resume"  # the hint of an interrupted command that resumes by itself


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The flags every command that runs a model shares."""
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"weights name or local file (default {DEFAULT_MODEL})")
    p.add_argument("--dense", default=None,
                   help="dense variant: clip, maskclip, sclip, clearclip, naclip, tcl (default: tcl for TCL's checkpoint, else maskclip)")
    p.add_argument("--adapter", default=None, help="a TTD adapter (safetensors) trained with `ttd train`")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when present)")
    p.add_argument(
        "--quick-gelu",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="force QuickGELU / GELU (default: what the weights say, else QuickGELU)",
    )


def load_model_from_args(args):
    """The dense model (plus adapter) the shared model flags describe, in eval mode."""
    from ..distributed import process_device
    from ..models import load_model

    device = process_device(args.device)  # under torchrun: this process's GPU
    model = load_model(args.model, dense=args.dense, device=str(device), quick_gelu=args.quick_gelu)
    if args.adapter:
        from ..models.lora import load_adapter

        model = load_adapter(model, args.adapter)
    return model.eval()


def output_lock(folder, args) -> contextlib.ExitStack:
    """The lock of an output folder this command writes (held by the main process of a torchrun),
    taken before any work: a folder the OS refuses to write is a usage error then, not at the end."""
    from ..distributed import is_main_process
    from ..locks import output_lock

    lock = contextlib.ExitStack()
    with writable("out", folder):
        lock.enter_context(output_lock(folder, " ".join(filter(None, (args.command, getattr(args, "task", None)))),
                                       is_main_process()))
    return lock


@contextlib.contextmanager
def writable(flag: str, path):
    """The OS refusing to write an output (a read-only disk, no permission) is a one-line usage
    error naming the flag; other OS errors (a full disk) stay failures."""
    try:
        yield
    except OSError as err:
        if err.errno not in REFUSED:
            raise
        raise TTDError(f"--{flag} {path}: {err.strerror}; choose a writable --{flag}") from None


def check(ok: bool, flag: str, value, need: str) -> None:
    """A flag's value outside its range is a one-line usage error before any work starts."""
    if not ok:
        raise TTDError(f"--{flag} must be {need}, got {value}")


def check_image_out(flag: str, path: str) -> None:
    """An image output must be a file name Pillow can write (not a folder, not ``.txt``)."""
    from PIL import Image

    if Path(path).is_dir():
        raise TTDError(f"--{flag} {path} is a folder; give an image file name such as {Path(path) / 'overlay.png'}")
    if Path(path).suffix.lower() not in Image.registered_extensions():
        raise TTDError(f"--{flag} {path}: not an image file name; end it in .png or .jpg")


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def add_tag_selection_args(p: argparse.ArgumentParser) -> None:
    """Options of TTD step 1 shared by `ttd tags` and `ttd eval tags`."""
    p.add_argument("--tau", type=float, default=0.5, help="select a tag when its score >= tau (default 0.5)")
    p.add_argument("--normalize", default="softmax", choices=["softmax", "minmax", "none"], help="score normalisation across tags")
    p.add_argument("--keep-argmax", action="store_true", help="always select the best-scoring tag")
    p.add_argument("--stopwords", action="store_true", help="drop English stop words from the candidates")
    p.add_argument("--template", default=None, help="prompt for each tag, e.g. 'a photo of a {}.' (default: the raw word)")


def tag_selection(args, scorer: str):
    from ..method.tags import TagSelection

    check(0 <= args.tau <= 1, "tau", args.tau, "in [0, 1]")
    return TagSelection(scorer, args.tau, args.normalize, args.keep_argmax, args.stopwords, args.template)


def add_run_flags(p: argparse.ArgumentParser, skip: tuple) -> None:
    """The flags `ttd train` and `ttd pretrain` share, then one flag per config key not in ``skip``."""
    from ..config import add_config_flags

    p.add_argument("--config", default=None, help="YAML file of config keys (flags win)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP", help="stop with a checkpoint at this step")
    p.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true",
                   help="no progress bar (logs still go to log.jsonl)")
    add_config_flags(p, skip=skip)
    p.set_defaults(resume_hint="rerun with --resume to continue from the newest checkpoint")


def add_protocol_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--protocol", default=None,
                   help=f"preset (tcl, ttd, sclip, miniworld) or a YAML file (default: the one the model recommends, "
                        f"e.g. miniworld for the embedded mini CLIPs; otherwise {default})")
    p.set_defaults(protocol_default=default)
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KNOB=VALUE",
                   help="override protocol knobs, e.g. --set pamr=true scales=1,0.5 (see --print-protocol)")
    p.add_argument("--print-protocol", "--print", action="store_true", help="print the resolved protocol as YAML and exit")
    p.add_argument("--window-batch", type=int, default=16,
                   help="windows per forward (default 16; lower it to save memory)")


def resolve_protocol(args, dataset: str | None = None, extra: dict | None = None):
    from ..models.weights import default_readout, recommended_protocol
    from ..protocols import load_protocol, parse_overrides

    overrides = {**(extra or {}), **parse_overrides(args.overrides)}
    recommended = None if args.protocol else recommended_protocol(args.model)
    if recommended:  # the model's own way of showing caption maps comes with its protocol; --set still wins
        overrides = {"caption_normalize": default_readout(args.model)[1], **overrides}
    name = args.protocol or recommended or args.protocol_default
    protocol = load_protocol(name, dataset, overrides)
    if args.print_protocol:
        print(protocol.to_yaml(), end="")
    else:
        why = "given" if args.protocol else f"recommended for {args.model}" if recommended else "the default; --protocol to change"
        scale = "; caption maps min-max normalised per image" if protocol.caption_normalize == "minmax" else ""
        print(f"protocol: {protocol.name} ({why}{scale})")
    return protocol
