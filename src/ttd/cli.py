"""The ``ttd`` command: parses arguments and calls the Python API; nothing else lives here."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from .config import DEFAULT_MODEL
from .errors import TTDError
from .protocols import CAPTION_NORMALIZATIONS


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="versions, device, known weights and dense variants")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    import torch

    from . import __version__
    from .io import default_device
    from .models.registry import DENSE_VARIANTS
    from .models.weights import KNOWN_WEIGHTS, embedded_models

    info = {
        "ttd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(default_device()),
        "cuda": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "weights": sorted(KNOWN_WEIGHTS),
        "dense_variants": list(DENSE_VARIANTS),
        "embedded": [{"name": name, "adapter": spec.adapter, "kind": spec.kind, "dense": spec.dense}
                     for name, spec in embedded_models().items()],
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            if key == "embedded":
                value = "; ".join(f"{e['name']} ({e['kind']}, {e['dense']}, adapter {e['adapter']})" for e in value)
            value = ", ".join(value) if isinstance(value, list) else value
            print(f"{key:<{width}}  {value}")
    return 0


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
    from .distributed import process_device
    from .models import load_model

    device = process_device(args.device)  # under torchrun: this process's GPU
    model = load_model(args.model, dense=args.dense, device=str(device), quick_gelu=args.quick_gelu)
    if args.adapter:
        from .models.lora import load_adapter

        model = load_adapter(model, args.adapter)
    return model.eval()


def _output_lock(folder, args):
    """The lock of an output folder this command writes (held by the main process of a torchrun)."""
    from .distributed import is_main_process
    from .locks import output_lock

    return output_lock(folder, " ".join(filter(None, (args.command, getattr(args, "task", None)))), is_main_process())


def _check(ok: bool, flag: str, value, need: str) -> None:
    """A flag's value outside its range is a one-line usage error before any work starts."""
    if not ok:
        raise TTDError(f"--{flag} must be {need}, got {value}")


def _check_image_out(flag: str, path: str) -> None:
    """An image output must be a file name Pillow can write (not a folder, not ``.txt``)."""
    from PIL import Image

    if Path(path).is_dir():
        raise TTDError(f"--{flag} {path} is a folder; give an image file name such as {Path(path) / 'overlay.png'}")
    if Path(path).suffix.lower() not in Image.registered_extensions():
        raise TTDError(f"--{flag} {path}: not an image file name; end it in .png or .jpg")


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _add_tag_selection_args(p: argparse.ArgumentParser) -> None:
    """Options of TTD step 1 shared by `ttd tags` and `ttd eval tags`."""
    p.add_argument("--tau", type=float, default=0.5, help="select a tag when its score >= tau (default 0.5)")
    p.add_argument("--normalize", default="softmax", choices=["softmax", "minmax", "none"], help="score normalisation across tags")
    p.add_argument("--keep-argmax", action="store_true", help="always select the best-scoring tag")
    p.add_argument("--stopwords", action="store_true", help="drop English stop words from the candidates")
    p.add_argument("--template", default=None, help="prompt for each tag, e.g. 'a photo of a {}.' (default: the raw word)")


def _tag_selection(args, scorer: str):
    from .method.tags import TagSelection

    _check(0 <= args.tau <= 1, "tau", args.tau, "in [0, 1]")
    return TagSelection(scorer, args.tau, args.normalize, args.keep_argmax, args.stopwords, args.template)


def _add_tags(sub) -> None:
    p = sub.add_parser("tags", help="score the candidate tags of a caption on an image and select the depicted ones")
    p.add_argument("image", help="image file")
    p.add_argument("caption", help="the caption, quoted")
    p.add_argument(
        "--scoring", default="pixel,image,text,image-text", help="comma list of pixel, image, text, image-text (default: all)"
    )
    _add_tag_selection_args(p)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_model_args(p)
    p.set_defaults(run=_run_tags)


def _run_tags(args) -> int:
    from .method.tags import TagSelector, check_scorings

    scorings = check_scorings(_comma_list(args.scoring))
    model = load_model_from_args(args)
    selection = _tag_selection(args, scorings[0])
    scored = TagSelector(model, selection).score_batch([args.image], [args.caption], scorings)
    words = scored.words[0]
    scores = {name: scored.row(name, 0).tolist() for name in scorings}
    chosen = {name: selection.decide(scored.row(name, 0)).tolist() for name in scorings}
    selected = {name: [w for w, keep in zip(words, chosen[name]) if keep] for name in scorings}
    if args.json:
        candidates = [
            {"word": w, "scores": {n: scores[n][k] for n in scorings}, "selected": {n: chosen[n][k] for n in scorings}}
            for k, w in enumerate(words)
        ]
        print(json.dumps({"image": args.image, "caption": args.caption, "candidates": candidates, "selected": selected}, indent=2))
        return 0
    width = max([len("word"), *map(len, words)])
    print(f"{'word':<{width}}  " + "  ".join(f"{n:>10}" for n in scorings))
    for k, w in enumerate(words):
        cells = (f"{scores[n][k]:>9.4f}{'*' if chosen[n][k] else ' '}" for n in scorings)
        print(f"{w:<{width}}  " + "  ".join(cells))
    for name in scorings:
        print(f"selected ({name}, threshold {args.tau:g}): {', '.join(selected[name]) or '(none)'}")
    return 0


def _add_eval_tags(eval_sub) -> None:
    p = eval_sub.add_parser("tags", help="multi-tag selection (the paper's Table 2): P, R, F1, Acc, mAP")
    p.add_argument("--data", required=True,
                   help="JSONL manifest with image, caption and tags per line, or the TTD authors' cc3m_for_evaluation/ folder")
    p.add_argument("--scorers", default="pixel,image,text,image-text", help="comma list of pixel, image, text, image-text ('' for none)")
    p.add_argument("--taggers", default="", help="comma list of caption-only taggers: nouns, llm")
    p.add_argument("--llm-url", default=None, help="OpenAI-compatible endpoint for the llm tagger (or TTD_LLM_URL)")
    p.add_argument("--llm-model", default=None, help="model name the endpoint serves (or TTD_LLM_MODEL)")
    p.add_argument("--llm-timeout", type=float, default=60.0, help="seconds per LLM request (default 60)")
    p.add_argument("--out", required=True, help="folder for tags.json and tags.md")
    p.add_argument("--batch-size", type=int, default=32, help="captions per model call (default 32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_tag_selection_args(p)
    add_model_args(p)
    p.set_defaults(run=_run_eval_tags)


def _run_eval_tags(args) -> int:
    from .data.layouts import read_records
    from .evaluate.tags import evaluate_tags, tags_table, write_tags_report
    from .method.tags import check_scorings
    from .taggers import create_tagger

    scorers = check_scorings(_comma_list(args.scorers)) if _comma_list(args.scorers) else ()
    options = {"llm": {"base_url": args.llm_url, "model": args.llm_model, "timeout": args.llm_timeout}}
    taggers = [create_tagger(name, **options.get(name, {})) for name in _comma_list(args.taggers)]
    records = read_records(args.data)
    model = load_model_from_args(args) if scorers else None
    with _output_lock(args.out, args):
        result = evaluate_tags(
            records, model, scorers, taggers, _tag_selection(args, "pixel"), args.batch_size, manifest=args.data,
            progress=not args.quiet,
        )
        json_path, md_path = write_tags_report(result, args.out)
    print(tags_table(result), end="")
    print(f"wrote {json_path} and {md_path}")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate the paper's tasks: tags, caption, seg")
    eval_sub = p.add_subparsers(dest="task", required=True)
    for add in (_add_eval_tags, _add_eval_seg, _add_eval_caption):
        add(eval_sub)


def _add_run_flags(p: argparse.ArgumentParser, skip: tuple) -> None:
    """The flags `ttd train` and `ttd pretrain` share, then one flag per config key not in ``skip``."""
    from .config import add_config_flags

    p.add_argument("--config", default=None, help="YAML file of config keys (flags win)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP", help="stop with a checkpoint at this step")
    p.add_argument("--quiet", "--no-progress", dest="no_progress", action="store_true",
                   help="no progress bar (logs still go to log.jsonl)")
    add_config_flags(p, skip=skip)


def _add_train(sub) -> None:
    from .config import PRETRAIN_ONLY

    p = sub.add_parser(
        "train",
        help="fine-tune a dense CLIP with TTD (LoRA adapters); torchrun for many processes",
        description="Text-Tag Self-Distillation. Every setting is a config key: defaults, then --config "
        "YAML, then these flags. Many processes/machines: torchrun --nproc_per_node N -m ttd train …",
    )
    _add_run_flags(p, skip=PRETRAIN_ONLY)
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from .config import config_overrides, resolve_config
    from .train import train

    config = resolve_config(args.config, config_overrides(args), resume=args.resume)
    with _output_lock(config.out, args):
        result = train(config, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress)
    if result.adapter is not None:
        print(f"adapter: {result.adapter}")
    else:
        print(f"stopped at step {result.step}/{config.steps}; continue with: ttd train --out {config.out} --resume")
    return 0


def _add_pretrain(sub) -> None:
    from .config import TTD_ONLY

    p = sub.add_parser(
        "pretrain",
        help="pretraining: a CLIP from random weights (InfoNCE), or TCL's masker on a frozen CLIP (--objective tcl)",
        description="--objective infonce (default) trains every weight of a randomly initialised CLIP with InfoNCE "
        "over the global batch and writes OUT/model.safetensors; --objective tcl --dense tcl --init CLIP trains TCL's "
        "masker from captions alone on that frozen CLIP and writes OUT/tcl.pth in the layout of TCL's released "
        "checkpoint. Same data, config, checkpoints and torchrun support as `ttd train`.",
    )
    p.add_argument("--clip-config", default=None, help="YAML/JSON file of CLIPConfig fields (default: ViT-B/16)")
    _add_run_flags(p, skip=TTD_ONLY)
    p.set_defaults(run=_run_pretrain)


def _run_pretrain(args) -> int:
    from .config import config_overrides, resolve_config
    from .models import CLIPConfig
    from .train import pretrain

    config = resolve_config(args.config, config_overrides(args), resume=args.resume, defaults={"out": "runs/pretrain"})
    clip_config = CLIPConfig.from_file(args.clip_config) if args.clip_config else None
    with _output_lock(config.out, args):
        result = pretrain(config, clip_config, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress)
    if result.stopped_early:
        print(f"stopped at step {result.step}/{config.steps}; continue with: ttd pretrain --out {config.out} --resume")
    else:
        print(f"weights: {config.out}/{'tcl.pth' if config.objective == 'tcl' else 'model.safetensors'}")
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="dataset tools: build the mini-world, prune image-text pairs")
    data_sub = p.add_subparsers(dest="task", required=True)
    for add in (_add_data_miniworld, _add_data_prune):
        add(data_sub)


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
    from .data.miniworld import DEFAULT_SOURCE, MiniWorldConfig, build_miniworld, parse_objects, parse_scale, parse_styles

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
    with _output_lock(args.out, args):
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
    add_model_args(q)
    q.set_defaults(run=_run_prune)


def _run_prune(args) -> int:
    from .data.prune import check_prune_args, prune, scores_dir

    check_prune_args(args.data, args.keep_fraction, args.batch_size, args.image_size, args.workers)
    with _output_lock(scores_dir(Path(args.out)), args):
        result = prune(
            args.data,
            args.out,
            load_model_from_args(args),
            keep_fraction=args.keep_fraction,
            batch_size=args.batch_size,
            workers=args.workers,
            image_size=args.image_size,
            progress=not args.quiet,
        )
    print(f"kept {result.kept:,} of {result.scored:,} scored pairs (score ≥ {result.threshold:.4f}); "
          f"{result.skipped:,} unreadable skipped → {result.out}")
    return 0


def _add_quickstart(sub) -> None:
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
    from .evaluate.miniworld import EMBEDDED_MODEL, SAMPLES_MANIFEST
    from .quickstart import run_quickstart

    _check(0 <= args.tau <= 1, "tau", args.tau, "in [0, 1]")
    _check(args.images >= 1, "images", args.images, "at least 1")

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


# --- segmentation: `ttd segment`, `ttd eval seg`, `ttd eval caption` ---------------------------
def _add_protocol_args(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--protocol", default=None,
                   help=f"preset (tcl, ttd, sclip, miniworld) or a YAML file (default: the one the model recommends, "
                        f"e.g. miniworld for the embedded mini CLIPs; otherwise {default})")
    p.set_defaults(protocol_default=default)
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KNOB=VALUE",
                   help="override protocol knobs, e.g. --set pamr=true scales=1,0.5 (see --print-protocol)")
    p.add_argument("--print-protocol", "--print", action="store_true", help="print the resolved protocol as YAML and exit")
    p.add_argument("--window-batch", type=int, default=16,
                   help="windows per forward (default 16; lower it to save memory)")


def _add_eval_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="output folder: results.json, results.md, figures/")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--figures", type=int, default=4, help="prediction figures to write (default 4)")
    p.add_argument("--method", default=None, help="row label in the results table (default: variant and model)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore checkpoints of an earlier run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_args(p)


def _add_eval_seg(sub) -> None:
    p = sub.add_parser("seg", help="open-vocabulary semantic segmentation on a benchmark (mIoU, mFPR, mFNR)")
    p.add_argument("--dataset", required=True,
                   help="voc21 voc20 context60 context59 coco_object coco_stuff171 cityscapes ade20k, or generic")
    p.add_argument("--root", help="dataset folder (mmsegmentation or TTD layout; generic: images/, masks/, classes.txt)")
    p.add_argument("--layout", default="auto", choices=["auto", "mmseg", "ttd"],
                   help="folder layout: mmseg (VOCdevkit/…), ttd (the TTD authors' VOC2012/validation/{image,mask}/ …), "
                        "auto (default: ttd when an image/ folder is there)")
    _add_protocol_args(p, "ttd")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", help="do not read or write the text cache")
    _add_eval_run_args(p)
    p.set_defaults(run=_run_eval_seg)


def _add_eval_caption(sub) -> None:
    from .protocols import CAPTION_THRESHOLD

    p = sub.add_parser("caption", help="caption-level segmentation on a JSONL manifest (CaptionIoU, mFPR, mFNR)")
    p.add_argument("--data", help="JSONL manifest whose records have image, caption and caption_mask, "
                                  "or the TTD authors' cc3m_for_evaluation/ folder")
    p.add_argument("--threshold", type=float, default=CAPTION_THRESHOLD, help="heatmap threshold (default 0.40)")
    _add_protocol_args(p, "tcl")
    _add_eval_run_args(p)
    p.set_defaults(run=_run_eval_caption)


def _method_label(args, model) -> str:
    return args.method or f"{model.name} ({args.model}{' + ' + args.adapter if args.adapter else ''})"


def _resolve_protocol(args, dataset: str | None = None, extra: dict | None = None):
    from .models.weights import default_readout, recommended_protocol
    from .protocols import load_protocol, parse_overrides

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


def _require(args, *names: str) -> None:
    for name in names:
        if not getattr(args, name):
            raise TTDError(f"--{name} is required (unless --print-protocol)")


def _run_evaluation(args, protocol, required: tuple[str, ...], load_dataset, evaluate, markdown, **options) -> int:
    """What `ttd eval seg` and `ttd eval caption` share: the flags of every evaluation, then the
    main process prints the table (the evaluator runs on every process of a torchrun)."""
    from .distributed import is_main_process

    if args.print_protocol:
        return 0
    _require(args, *required)
    _check(args.limit is None or args.limit >= 1, "limit", args.limit, "at least 1")
    _check(args.workers >= 0, "workers", args.workers, "0 or more")
    _check(args.figures >= 0, "figures", args.figures, "0 or more")
    _check(args.window_batch >= 1, "window-batch", args.window_batch, "at least 1")
    dataset = load_dataset()  # a bad dataset fails before any model is loaded
    with _output_lock(args.out, args):
        model = load_model_from_args(args)
        result = evaluate(
            model, dataset, protocol, args.out, method=_method_label(args, model), limit=args.limit,
            figures=args.figures, window_batch=args.window_batch, resume=args.resume, workers=args.workers,
            progress=not args.quiet, **options,
        )
    if is_main_process():
        print(markdown(result), end="")
        print(f"results written to {args.out}")
    return 0


def _run_eval_seg(args) -> int:
    from .data.layouts import load_dataset
    from .evaluate.segmentation import evaluate_segmentation, segmentation_markdown

    return _run_evaluation(
        args, _resolve_protocol(args, args.dataset), ("root", "out"),
        lambda: load_dataset(args.dataset, args.root, args.layout), evaluate_segmentation, segmentation_markdown,
        use_cache=args.use_cache,
    )


def _run_eval_caption(args) -> int:
    from .data.layouts import read_records
    from .evaluate.caption import CaptionMaskDataset, caption_markdown, evaluate_captions

    _check(0 <= args.threshold <= 1, "threshold", args.threshold, "in [0, 1]")

    return _run_evaluation(
        args, _resolve_protocol(args), ("data", "out"),
        lambda: CaptionMaskDataset(read_records(args.data, masks=True), str(args.data)),
        evaluate_captions, caption_markdown, threshold=args.threshold,
    )


def _add_segment(sub) -> None:
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
    _add_protocol_args(p, "tcl")
    add_model_args(p)
    p.set_defaults(run=_run_segment)


def _run_segment(args) -> int:
    from .images import load_image
    from .segment import Segmenter, segment_figure

    extra = {"scales": args.scales, "flip": args.flip, "pamr": args.pamr}
    if args.classes:
        extra["background_threshold"] = args.threshold
    protocol = _resolve_protocol(args, extra={k: v for k, v in extra.items() if v is not None})
    if args.print_protocol:
        return 0
    if args.text is not None and not args.text.strip():
        raise TTDError("--text is empty; give a caption such as --text 'a cat on a sofa'")
    _check(args.window_batch >= 1, "window-batch", args.window_batch, "at least 1")
    for flag in ("out", "heatmaps"):
        if getattr(args, flag):
            _check_image_out(flag, getattr(args, flag))
    image = load_image(args.image)
    segmenter = Segmenter(load_model_from_args(args), protocol, window_batch=args.window_batch)
    shown = segment_figure(segmenter, image, classes=args.classes, text=args.text, background=args.background,
                           threshold=args.threshold, heatmaps=bool(args.heatmaps))
    for name, share in shown.shares:
        if args.text:
            print(f"{name!r}: {share:.1f}% of the image above {shown.threshold:.2f}")
        else:
            print(f"{name:<24} {share:5.1f}%")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    shown.overlay.save(args.out)
    print(f"overlay written to {args.out}")
    if args.heatmaps:
        shown.heatmaps.save(args.heatmaps)
        print(f"heatmaps written to {args.heatmaps}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="a local web page: tags, heatmaps and segmentation before / after TTD (needs ttd[demo])")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link (off by default)")
    p.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.host, args.port, args.share)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, like every other error of ``ttd`` (the usage
    block it prints by default buries the message); subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ttd", description="Text-Tag Self-Distillation for CLIP dense models")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_tags, _add_segment, _add_eval, _add_train, _add_pretrain, _add_data, _add_quickstart, _add_demo):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 success, 1 a failure while running (disk full, a diverged run), 2 bad input;
    every error is one line on stderr, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (TTDError, FileNotFoundError) as err:
        print(f"ttd {args.command}: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)
    except OSError as err:  # disk full, read-only, a name the OS refuses: the file and the reason
        where = f"{err.filename}: " if err.filename else ""
        print(f"ttd {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"ttd {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ttd info | head`: the reader left; end quietly, as coreutils do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
