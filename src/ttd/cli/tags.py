"""ttd tags: score the candidate tags of one caption on one image."""

from __future__ import annotations

import json

from . import common


def add(sub) -> None:
    p = sub.add_parser("tags", help="score the candidate tags of a caption on an image and select the depicted ones")
    p.add_argument("image", help="image file")
    p.add_argument("caption", help="the caption, quoted")
    p.add_argument(
        "--scoring", default="pixel,image,text,image-text", help="comma list of pixel, image, text, image-text (default: all)"
    )
    common.add_tag_selection_args(p)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_model_args(p)
    p.set_defaults(run=_run_tags)


def _run_tags(args) -> int:
    from ..method.tags import TagSelector, check_scorings

    scorings = check_scorings(common.comma_list(args.scoring))
    model = common.load_model_from_args(args)
    selection = common.tag_selection(args, scorings[0])
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
