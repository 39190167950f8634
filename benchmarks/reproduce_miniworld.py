"""Single tag bias and TTD on the mini-world, in one run: both embedded bases, in-distribution and
on held-out clip-art instances.

    python benchmarks/reproduce_miniworld.py --world data/mw64 --tune data/mw64-tune --pretrain \
        --runs runs/repro --results docs/results/miniworld.md

``--pretrain`` first builds the two worlds when they are missing (``ttd data miniworld``: 60,000
training images, val 1,000, test 1,000 (+ test-seen); the tuning build: seed 1, val 600) and
pretrains both bases from the recipes shipped in ``ttd/assets/miniworld`` (``pretrain.yaml`` +
``clip-config.yaml``: 2,400 steps of 128 pairs; ``pretrain-infonce.yaml`` +
``clip-config-infonce.yaml``: 4,800 steps; about 22 and 47 minutes on 2 idle cores). Without it,
``--base NAME=WEIGHTS`` names the weights (default: the embedded ones).

Two base CLIPs pretrained on the mini-world (docs/pretraining.md): ``miniworld-clip``, plain
InfoNCE (MaskCLIP-like: a training-free dense readout of a CLIP that never saw a mask), and
``miniworld``, InfoNCE plus a dense class loss (TCL-like). For each base:

1. **tuning** (only on ``--tune``, another build's val split, never on a reported split): TTD
   variants that test why the caption map does or does not spread over the depicted tags
   (calibration frozen, L_tag balanced between selected and unselected tags, L_distill only,
   LoRA on one tower, ...); each run's figures go into the report;
2. **the reported runs**: the base and the base + TTD (the setting chosen in step 1, fixed in
   :data:`CHOSEN`) on the world's ``val`` split (in-distribution) and ``test`` split (held-out
   clip-art instances, new composition and wording): tag selection (P / R / F1 / mAP per scorer),
   caption segmentation with the single-tag-bias figures (``ttd.metrics.TagCoverage``), and
   open-vocabulary segmentation; the base's segmentation on ``test-seen`` too (the same scenes with
   training instances), for its generalisation ratio;
3. with ``--ablate BASE``, **the paper's ablations** on that base (:data:`ABLATIONS`: L_distill
   or L_tag alone; tags selected by s_image or by a POS noun tagger instead of s_pixel), reported
   on ``val`` and ``test`` beside no TTD and the paper's setting.

Every TTD run is cached in ``RUNS/<name>-<digest of its settings>`` and every evaluation in
``RUNS/eval/<digest>.json``: changing a setting trains a new run, never reuses an old one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ttd.data.manifest import read_manifest
from ttd.io import atomic_write_bytes, markdown_table, save_json

CALIBRATION_LR = 1e-2  # the calibration's own learning rate (at 1e-4 its two scalars barely move)


@dataclass(frozen=True)
class Base:
    name: str  # the registered name the embedded copy gets
    kind: str  # "maskclip-like" | "tcl-like"
    dense: str  # its dense readout
    weights: str = ""  # a file; default: the registered name


@dataclass(frozen=True)
class Run:
    """One TTD fine-tuning of a base: the config keys it changes from :func:`run_settings`."""

    name: str
    overrides: dict = field(default_factory=dict)
    label: str = ""


TUNING = (
    Run("paper", {}, "paper defaults (L_tag mean over all tags, calibration trained)"),
    Run("frozen_calibration", {"train_calibration": False}, "calibration frozen"),
    Run("balanced", {"tag_average": "balanced"}, "L_tag balanced: selected and unselected tags half each"),
    Run("balanced_frozen", {"tag_average": "balanced", "train_calibration": False}, "balanced + calibration frozen"),
    Run("distill_only", {"tag_weight": 0.0}, "L_distill only"),
    Run("text_lora", {"lora_towers": ("text",)}, "LoRA on the text tower only"),
)
# The paper's two ablations (its Table 5: loss terms; tag source), run on a base's reported
# weights and reported on its val and test splits: they measure, they choose nothing.
ABLATIONS = (
    Run("paper", {}, "both terms, s_pixel (the paper)"),
    Run("distill_only", {"tag_weight": 0.0}, "L_distill only"),
    Run("tag_only", {"distill_weight": 0.0}, "L_tag only"),
    Run("src_image", {"scorer": "image"}, "tags selected by s_image (Eq. 1)"),
    Run("src_nouns", {"scorer": "nouns"}, "tags = the caption's nouns (spaCy POS tagger)"),
)
CHOSEN: dict[str, str] = {}  # base → the tuning run whose settings are reported; filled after tuning (see the report)


RECIPES = {  # base → (training config, architecture), files in ttd/assets/miniworld
    "miniworld-clip": ("pretrain-infonce.yaml", "clip-config-infonce.yaml"),
    "miniworld": ("pretrain.yaml", "clip-config.yaml"),
}


# --- worlds and pretraining -------------------------------------------------------------------
def build_worlds(args) -> None:
    """The reported world and the tuning world, built once (a finished build has build.json)."""
    from ttd.data.miniworld import MiniWorldConfig, build_miniworld

    builds = ((args.world, MiniWorldConfig(train=60000, val=1000, test=1000, size=64, train_masks=False)),
              (args.tune, MiniWorldConfig(seed=1, train=0, val=600, test=0, size=64)))
    for out, config in builds:
        if not (out / "build.json").is_file():
            print(f"== building {out}", flush=True)
            build_miniworld(out, config, workers=2, overwrite=True, progress=not args.quiet)


def pretrain_base(name: str, args) -> str:
    """Pretrain (or resume, or reuse) one base from its shipped recipe; returns its weights file."""
    from ttd.checkpoints import latest_checkpoint
    from ttd.config import load_config
    from ttd.io import asset
    from ttd.models import CLIPConfig
    from ttd.train import pretrain

    recipe, arch = (asset("miniworld", f) for f in RECIPES[name])
    out = args.runs / f"pretrain-{name}-{digest([recipe.read_text(), arch.read_text(), str(args.world)])}"
    weights = out / "model.safetensors"
    if not weights.is_file():
        print(f"== pretraining {name} into {out}", flush=True)
        config = load_config(recipe, data=str(args.world / "train" / "shards"), out=str(out))
        pretrain(config, CLIPConfig.from_file(arch), resume=latest_checkpoint(out) is not None, progress=not args.quiet)
    return str(weights)


# --- training ---------------------------------------------------------------------------------
def run_settings(base: Base, run: Run, args) -> dict:
    settings = dict(
        data=str(args.world / "train" / "pairs.jsonl"), model=base.weights or base.name, dense=base.dense,
        image_size=args.image_size, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        calibration_lr=CALIBRATION_LR, warmup_steps=max(1, args.steps // 10), workers=args.workers,
        seed=args.seed, save_every=max(50, args.steps // 4), log_every=10, tensorboard=False,
    )
    return {**settings, **run.overrides}


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


def train_run(base: Base, run: Run, args) -> dict:
    """Train (or resume, or reuse when finished) one adapter; returns its path and wall time."""
    from ttd.checkpoints import latest_checkpoint
    from ttd.train import train
    from ttd.config import load_config

    settings = run_settings(base, run, args)
    out = args.runs / f"{base.name}-{run.name}-{digest(settings)}"
    adapter, timing = out / "adapter.safetensors", out / "wall.json"
    if adapter.is_file() and timing.is_file():
        return {**json.loads(timing.read_text()), "adapter": str(adapter), "cached": True}
    config = load_config(**settings, out=str(out))
    start = time.perf_counter()
    result = train(config, resume=latest_checkpoint(out) is not None, progress=not args.quiet)
    info = {"seconds": round(time.perf_counter() - start, 1), "steps": result.step,
            **{k: result.metrics.get(k) for k in ("loss", "selected", "candidates", "calibration_w", "calibration_b")}}
    save_json(info, timing)
    return {**info, "adapter": str(adapter), "cached": False}


# --- evaluation -------------------------------------------------------------------------------
def evaluate(base: Base, adapter: str | None, world: Path, split: str, args, tasks=("tags", "caption", "seg"),
             scorers=("pixel",)) -> dict:
    """Tags, caption (with the bias figures) and segmentation figures of one model on one split,
    cached by a digest of everything that changes them."""
    from ttd.data.segmentation import load_segmentation_dataset
    from ttd.evaluate.caption import CaptionMaskDataset, evaluate_captions
    from ttd.evaluate.miniworld import miniworld_protocol
    from ttd.evaluate.segmentation import evaluate_segmentation
    from ttd.evaluate.tags import evaluate_tags
    from ttd.models import load_model
    from ttd.models.lora import load_adapter

    key = digest([base.weights or base.name, base.dense, adapter, str(world), split, tasks, scorers, args.limit, args.threshold])
    path = args.runs / "eval" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    start = time.perf_counter()
    model = load_model(base.weights or base.name, dense=base.dense, device=args.device)
    model = (load_adapter(model, adapter) if adapter else model).eval()
    manifest = world / split / "tags.jsonl"
    records = read_manifest(manifest)[: args.limit]
    protocol = miniworld_protocol(background_threshold=args.threshold)
    result: dict = {}
    if "tags" in tasks:
        result["tags"] = evaluate_tags(records, model, scorers=list(scorers), manifest=manifest,
                                       batch_size=args.eval_batch, progress=not args.quiet)["rows"]
    if "caption" in tasks:
        caption = evaluate_captions(model, CaptionMaskDataset(records, str(manifest)), protocol, threshold=args.threshold,
                                    figures=0, progress=not args.quiet)
        result["caption"] = {k: caption[k] for k in ("CaptionIoU", "mFPR", "mFNR", "records", "caption_class", "bias",
                                                     "normalizations")}
    if "seg" in tasks:
        seg = evaluate_segmentation(model, load_segmentation_dataset("generic", world / "seg" / split), protocol,
                                    limit=args.limit, figures=0, use_cache=False, progress=not args.quiet)
        result["seg"] = {k: seg[k] for k in ("mIoU", "mFPR", "mFNR", "images")}
    result["seconds"] = round(time.perf_counter() - start, 1)
    save_json(result, path)
    return result


def readout_probe(base: Base, world: Path, args) -> dict:
    """mIoU (val segmentation, first 300 images) and bias figures of every dense readout of a base."""
    from ttd.models import DENSE_VARIANTS

    probe = argparse.Namespace(**{**vars(args), "limit": min(args.limit or 300, 300)})
    return {name: evaluate(Base(base.name, base.kind, name, base.weights), None, world, "val", probe, tasks=("caption", "seg"))
            for name in DENSE_VARIANTS if name != "tcl"}


# --- the report -------------------------------------------------------------------------------
def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def bias_cells(e: dict, normalize: str | None = None) -> list[str]:
    figures = e["caption"]["normalizations"][normalize] if normalize else e["caption"]
    b, c = figures["bias"], figures["caption_class"]
    return [_f(b.get("best_coverage")), _f(b.get("other_coverage")), _f(b.get("ratio")), _f(b.get("contrast")),
            _f(b.get("background_on")), _f(c["FNR"]), f"{figures['CaptionIoU']:.1f}"]


BIAS_HEADERS = ["best-tag cov.", "other-tag cov.", "other / best", "contrast", "background on", "caption FNR", "CaptionIoU"]


def main_row(label: str, e: dict, normalize: str | None = None) -> list[str]:
    t = e["tags"]["pixel"]
    mfnr = (e["caption"]["normalizations"][normalize] if normalize else e["caption"])["mFNR"]
    return [label, _pct(t["precision"]), _pct(t["recall"]), _pct(t["f1"]), *bias_cells(e, normalize),
            _f(mfnr), f"{e['seg']['mIoU']:.1f}"]


MAIN_HEADERS = ["model", "tag P", "tag R", "tag F1", *BIAS_HEADERS, "caption mFNR", "mIoU"]


def goals(kind: str, before: dict, after: dict) -> list[list[str]]:
    def met(ok: bool) -> str:
        return "**met**" if ok else "not met"

    df1 = 100 * (after["tags"]["pixel"]["f1"] - before["tags"]["pixel"]["f1"])
    dcap = after["caption"]["CaptionIoU"] - before["caption"]["CaptionIoU"]
    cov0, cov1 = before["caption"]["bias"]["other_coverage"], after["caption"]["bias"]["other_coverage"]
    rows = [["tag F1 +4", f"{df1:+.1f}", met(df1 >= 4)], ["CaptionIoU +5", f"{dcap:+.1f}", met(dcap >= 5)]]
    if kind == "maskclip-like":
        fnr0, fnr1 = before["caption"]["caption_class"]["FNR"], after["caption"]["caption_class"]["FNR"]
        rel = (fnr1 - fnr0) / fnr0 if fnr0 else float("nan")
        rows += [["other-tag coverage +0.15", f"{cov0:.3f} → {cov1:.3f} ({cov1 - cov0:+.3f})", met(cov1 - cov0 >= 0.15)],
                 ["caption-class FNR −30 % (relative)", f"{fnr0:.3f} → {fnr1:.3f} ({100 * rel:+.0f} %)", met(rel <= -0.30)]]
    else:
        dseg = after["seg"]["mIoU"] - before["seg"]["mIoU"]
        rows += [["mIoU +5", f"{dseg:+.1f}", met(dseg >= 5)],
                 ["other-tag coverage not lower", f"{cov0:.3f} → {cov1:.3f}", met(cov1 >= cov0)]]
    return rows


def report(bases, ev: dict, trained: dict, args, command: str, wall: float) -> str:
    lines = [
        "# Single tag bias and TTD on the mini-world",
        "",
        "Generated by `benchmarks/reproduce_miniworld.py` (command at the end). Two CLIPs pretrained here on",
        "the mini-world (`docs/pretraining.md`), with and without TTD, on the world's `val` split",
        "(in-distribution: training clip-art instances, training composition and wording) and its `test`",
        "split (held-out clip-art instances, 2–4 objects, repeated nouns named by plurals, held-out",
        "wording). TTD settings were chosen on `--tune` (another build's val split) only.",
        f"Every TTD run: {args.steps} steps × batch {args.batch_size}, lr {args.lr:g} (calibration {CALIBRATION_LR:g}),",
        "LoRA rank 8 on q/k/v/out of both towers, online teacher, s_pixel, τ 0.5, distance MSE unless its row says",
        f"otherwise. Protocol `miniworld` (whole 64 px image, raw-word queries), threshold {args.threshold}.",
        "Coverage: share of a depicted tag's mask where the caption map is above the threshold, for captions",
        "with ≥ 2 depicted tags (docs/segmentation.md#single-tag-bias).",
        "",
    ]
    for base in bases:
        b = base.name
        lines += [f"## `{b}` ({base.kind}, dense readout `{base.dense}`)", ""]
        if f"{b}/readouts" in ev:
            rows = [[name, f"{e['seg']['mIoU']:.1f}", *bias_cells(e)] for name, e in ev[f"{b}/readouts"].items()]
            lines += ["Dense readouts of the base (val, 300 images):", "",
                      markdown_table(["readout", "mIoU", *BIAS_HEADERS], rows)]
        if f"{b}/test-seen" in ev and f"{b}/base/test" in ev:
            seen, held = ev[f"{b}/test-seen"]["seg"]["mIoU"], ev[f"{b}/base/test"]["seg"]["mIoU"]
            lines += [f"Generalisation to held-out instances (base, open-vocabulary mIoU): test-seen {seen:.1f}, "
                      f"test {held:.1f}, ratio **{held / seen:.2f}** (goal ≥ 0.7).", ""]
        tuned = [(r, ev.get(f"{b}/tune/{r.name}")) for r in TUNING]
        if f"{b}/tune/base" in ev:
            rows = [main_row("no TTD", ev[f"{b}/tune/base"])] + [main_row(r.label, e) for r, e in tuned if e]
            lines += [f"Tuning runs (`--tune` split; chosen: `{CHOSEN.get(b, '–')}`):", "", markdown_table(MAIN_HEADERS, rows)]
        for split in ("val", "test"):
            before, after = ev.get(f"{b}/base/{split}"), ev.get(f"{b}/ttd/{split}")
            if before and after:
                rows = [main_row("base", before), main_row("+ TTD", after),
                        main_row("base, min-max map", before, "minmax"), main_row("+ TTD, min-max map", after, "minmax")]
                lines += [f"`{split}` split (the min-max rows threshold each caption map after normalising it per image):", "",
                          markdown_table(MAIN_HEADERS, rows)]
                lines += [markdown_table(["goal (issue 10)", "measured", ""], goals(base.kind, before, after))]
        if any(f"{b}/ablation/{r.name}/val" in ev for r in ABLATIONS):
            rows = []
            for label, key in [("no TTD", "base"), *((r.label, f"ablation/{r.name}") for r in ABLATIONS)]:
                cells = [[_pct(e["tags"]["pixel"]["f1"]), f"{e['caption']['CaptionIoU']:.1f}", _f(e["caption"]["mFNR"]),
                          _f(e["caption"]["bias"].get("other_coverage")), f"{e['seg']['mIoU']:.1f}"]
                         if (e := ev.get(f"{b}/{key}/{split}")) else ["–"] * 5 for split in ("val", "test")]
                rows.append([label, *(f"{v} / {t}" for v, t in zip(*cells))])
            lines += [("Ablations (the paper's Table 5 on this base; each cell `val / test`; the first two rows of the "
                       "paper's loss-term table are `no TTD` and `both terms`):"), "",
                      markdown_table(["TTD", "tag F1", "CaptionIoU", "caption mFNR", "other-tag cov.", "mIoU"], rows)]
        lines.append("")
    runs = [[k, v["steps"], f"{v['seconds']:.0f}", _f(v.get("calibration_w"), 2), _f(v.get("calibration_b"), 2)]
            for k, v in trained.items()]
    lines += [
        "## Runs and wall times",
        "",
        f"2 CPU cores; this invocation {wall / 60:.1f} min; training and evaluation summed: "
        f"{(sum(v['seconds'] for v in trained.values()) + sum(e.get('seconds', 0) for e in ev.values() if isinstance(e, dict))) / 60:.0f} min.",
        "",
        markdown_table(["run", "steps", "train s", "w", "b"], runs),
        "## Reproduce",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


NOTES_MARKER = "<!-- notes: kept when this file is regenerated -->"


def kept_notes(path: Path) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8")
    return text[text.index(NOTES_MARKER):] if NOTES_MARKER in text else ""


def parse_base(text: str) -> tuple[str, str]:
    name, _, weights = text.partition("=")
    return name, weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="a `ttd data miniworld` build with test splits")
    parser.add_argument("--tune", type=Path, required=True, help="another build (--seed 1): its val split chooses TTD settings")
    parser.add_argument("--base", action="append", default=[], metavar="NAME[=WEIGHTS]",
                        help="miniworld-clip and/or miniworld, optionally with a weights file (default: both, by name)")
    parser.add_argument("--runs", type=Path, default=Path("runs/reproduce-miniworld"))
    parser.add_argument("--results", type=Path, default=Path("docs/results/miniworld.md"))
    parser.add_argument("--pretrain", action="store_true",
                        help="build missing worlds and pretrain both bases from the shipped recipes first")
    parser.add_argument("--stage", choices=("readouts", "tune", "report"), default="report",
                        help="readouts: compare the MaskCLIP-like base's dense readouts only; tune: also the tuning runs; "
                             "report: everything (default)")
    parser.add_argument("--tune-base", action="append", default=[], metavar="NAME=WEIGHTS",
                        help="weights the tuning runs of a base use (default: its --base weights), e.g. the fp32 "
                             "pretraining output of the fp16 copy that the reported runs use")
    parser.add_argument("--chosen", action="append", default=[], metavar="BASE=RUN",
                        help="the tuning run whose settings a base's reported TTD uses (default: paper)")
    parser.add_argument("--ablate", action="append", default=[], metavar="BASE",
                        help="also run the paper's ablations (loss terms, tag source) on this base")
    parser.add_argument("--tuning", default=None, help="comma-separated tuning runs (default: all)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.40)
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images of each split only")
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    command = "PYTHONPATH=src python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    torch.set_num_threads(args.threads)
    from ttd.models.weights import embedded_models

    registry = embedded_models()  # each embedded base's kind and dense readout
    if args.pretrain:
        build_worlds(args)
    given = dict(parse_base(b) for b in args.base) or {name: "" for name in registry}
    if args.pretrain:
        given = {name: weights or pretrain_base(name, args) for name, weights in given.items()}
    readouts = dict(parse_base(b) for b in args.chosen if b.startswith("readout:"))
    bases = [Base(n, registry[n].kind, readouts.get(f"readout:{n}", registry[n].dense), w) for n, w in given.items()]
    CHOSEN.update(dict(parse_base(c) for c in args.chosen if not c.startswith("readout:")))
    tuning = [r for r in TUNING if not args.tuning or r.name in args.tuning.split(",")]
    start = time.perf_counter()
    trained: dict = {}
    ev: dict = {}

    def write() -> None:
        save_json({"trained": trained, "evaluations": ev, "command": command}, args.runs / "results.json")
        text = report(bases, ev, trained, args, command, time.perf_counter() - start) + kept_notes(args.results)
        atomic_write_bytes(args.results, text.encode("utf-8"))

    for base in bases:
        if base.kind == "maskclip-like":
            print(f"== {base.name}: dense readouts", flush=True)
            ev[f"{base.name}/readouts"] = readout_probe(base, args.world, args)
            write()
    if args.stage == "readouts":
        return
    tune_weights = dict(parse_base(b) for b in args.tune_base)
    for reported in bases:
        base = Base(reported.name, reported.kind, reported.dense, tune_weights.get(reported.name, reported.weights))
        print(f"== {base.name}: tuning on {args.tune}", flush=True)
        ev[f"{base.name}/tune/base"] = evaluate(base, None, args.tune, "val", args)
        for run in tuning:
            trained[f"{base.name}/{run.name}"] = train_run(base, run, args)
            ev[f"{base.name}/tune/{run.name}"] = evaluate(base, trained[f"{base.name}/{run.name}"]["adapter"], args.tune, "val", args)
            write()
    if args.stage == "tune":
        return
    for base in bases:
        print(f"== {base.name}: reported runs", flush=True)
        chosen = next(r for r in TUNING if r.name == CHOSEN.get(base.name, "paper"))
        trained[f"{base.name}/ttd"] = train_run(base, chosen, args)
        for split in ("val", "test"):
            ev[f"{base.name}/base/{split}"] = evaluate(base, None, args.world, split, args, scorers=("pixel", "image"))
            ev[f"{base.name}/ttd/{split}"] = evaluate(base, trained[f"{base.name}/ttd"]["adapter"], args.world, split, args)
            write()
        ev[f"{base.name}/test-seen"] = evaluate(base, None, args.world, "test-seen", args, tasks=("seg",))
        write()
    for base in (b for b in bases if b.name in args.ablate):
        print(f"== {base.name}: ablations", flush=True)
        for run in ABLATIONS:
            trained[f"{base.name}/ablation/{run.name}"] = train_run(base, run, args)
            for split in ("val", "test"):
                ev[f"{base.name}/ablation/{run.name}/{split}"] = evaluate(
                    base, trained[f"{base.name}/ablation/{run.name}"]["adapter"], args.world, split, args)
                write()
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
