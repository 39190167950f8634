"""ttd eval tags | seg | caption: the paper's three evaluations."""

from __future__ import annotations

import argparse

from ..errors import TTDError
from . import common


def add(sub) -> None:
    p = sub.add_parser("eval", help="evaluate the paper's tasks: tags, caption, seg")
    eval_sub = p.add_subparsers(dest="task", required=True)
    for add_task in (_add_eval_tags, _add_eval_seg, _add_eval_caption):
        add_task(eval_sub)


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
    common.add_tag_selection_args(p)
    common.add_model_args(p)
    p.set_defaults(run=_run_eval_tags)


def _run_eval_tags(args) -> int:
    from ..data.layouts import read_records
    from ..evaluate.tags import evaluate_tags, tags_table, write_tags_report
    from ..method.tags import check_scorings
    from ..taggers import create_tagger

    scorers = check_scorings(common.comma_list(args.scorers)) if common.comma_list(args.scorers) else ()
    options = {"llm": {"base_url": args.llm_url, "model": args.llm_model, "timeout": args.llm_timeout}}
    taggers = [create_tagger(name, **options.get(name, {})) for name in common.comma_list(args.taggers)]
    records = read_records(args.data)
    model = common.load_model_from_args(args) if scorers else None
    with common.output_lock(args.out, args):
        result = evaluate_tags(
            records, model, scorers, taggers, common.tag_selection(args, "pixel"), args.batch_size, manifest=args.data,
            progress=not args.quiet,
        )
        json_path, md_path = write_tags_report(result, args.out)
    print(tags_table(result), end="")
    print(f"wrote {json_path} and {md_path}")
    return 0


def _add_eval_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="output folder: results.json, results.md, figures/")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--figures", type=int, default=4, help="prediction figures to write (default 4)")
    p.add_argument("--method", default=None, help="row label in the results table (default: variant and model)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore checkpoints of an earlier run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(resume_hint=common.RERUN)
    common.add_model_args(p)


def _add_eval_seg(sub) -> None:
    p = sub.add_parser("seg", help="open-vocabulary semantic segmentation on a benchmark (mIoU, mFPR, mFNR)")
    p.add_argument("--dataset", help="voc21 voc20 context60 context59 coco_object coco_stuff171 cityscapes ade20k, "
                                     "or generic (required unless --print-protocol: the protocol without a dataset's own knobs)")
    p.add_argument("--root", help="dataset folder (mmsegmentation or TTD layout; generic: images/, masks/, classes.txt)")
    p.add_argument("--layout", default="auto", choices=["auto", "mmseg", "ttd"],
                   help="folder layout: mmseg (VOCdevkit/…), ttd (the TTD authors' VOC2012/validation/{image,mask}/ …), "
                        "auto (default: ttd when an image/ folder is there)")
    common.add_protocol_args(p, "ttd")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", help="do not read or write the text cache")
    _add_eval_run_args(p)
    p.set_defaults(run=_run_eval_seg)


def _add_eval_caption(sub) -> None:
    from ..protocols import CAPTION_THRESHOLD

    p = sub.add_parser("caption", help="caption-level segmentation on a JSONL manifest (CaptionIoU, mFPR, mFNR)")
    p.add_argument("--data", help="JSONL manifest whose records have image, caption and caption_mask, "
                                  "or the TTD authors' cc3m_for_evaluation/ folder")
    p.add_argument("--threshold", type=float, default=CAPTION_THRESHOLD, help="heatmap threshold (default 0.40)")
    common.add_protocol_args(p, "tcl")
    _add_eval_run_args(p)
    p.set_defaults(run=_run_eval_caption)


def _method_label(args, model) -> str:
    return args.method or f"{model.name} ({args.model}{' + ' + args.adapter if args.adapter else ''})"


def _require(args, *names: str) -> None:
    for name in names:
        if not getattr(args, name):
            raise TTDError(f"--{name} is required (unless --print-protocol)")


def _run_evaluation(args, protocol, required: tuple[str, ...], load_dataset, evaluate, markdown, **options) -> int:
    """What `ttd eval seg` and `ttd eval caption` share: the flags of every evaluation, then the
    main process prints the table (the evaluator runs on every process of a torchrun)."""
    from ..distributed import is_main_process

    if args.print_protocol:
        return 0
    _require(args, *required)
    common.check(args.limit is None or args.limit >= 1, "limit", args.limit, "at least 1")
    common.check(args.workers >= 0, "workers", args.workers, "0 or more")
    common.check(args.figures >= 0, "figures", args.figures, "0 or more")
    common.check(args.window_batch >= 1, "window-batch", args.window_batch, "at least 1")
    dataset = load_dataset()  # a bad dataset fails before any model is loaded
    with common.output_lock(args.out, args):
        model = common.load_model_from_args(args)
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
    from ..data.layouts import load_dataset
    from ..evaluate.segmentation import evaluate_segmentation, segmentation_markdown

    return _run_evaluation(
        args, common.resolve_protocol(args, args.dataset), ("dataset", "root", "out"),
        lambda: load_dataset(args.dataset, args.root, args.layout), evaluate_segmentation, segmentation_markdown,
        use_cache=args.use_cache,
    )


def _run_eval_caption(args) -> int:
    from ..data.layouts import read_records
    from ..evaluate.caption import CaptionMaskDataset, caption_markdown, evaluate_captions

    common.check(0 <= args.threshold <= 1, "threshold", args.threshold, "in [0, 1]")

    return _run_evaluation(
        args, common.resolve_protocol(args), ("data", "out"),
        lambda: CaptionMaskDataset(read_records(args.data, masks=True), str(args.data)),
        evaluate_captions, caption_markdown, threshold=args.threshold,
    )
