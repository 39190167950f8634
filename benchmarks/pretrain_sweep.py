"""Which pretraining recipe gives a mini-world CLIP that localises, generalises and shows single tag bias?

    python benchmarks/pretrain_sweep.py --world mw64 --tune mw64-tune --runs runs/sweep [--build --source DIR]

Trains every variant of :data:`VARIANTS` (one process each, ``--parallel`` at a time; on a GPU when
there is one) from the shipped recipes in ``ttd/assets/miniworld`` with a few keys changed, all at
the budget of the CPU recipe (2,400 steps × 128 unless the variant says otherwise). Then, per
variant, with the evaluation of ``benchmarks/reproduce_miniworld.py``:

* the base on the TUNING build: tags, caption map (with the bias figures) and segmentation on its
  val split, and segmentation on its test / test-seen splits (held-out / training drawings), whose
  mIoU ratio is the generalisation figure;
* TTD with the paper's defaults (500 steps × 64) on top of it, on the same tuning splits;
* the base's segmentation on the REPORTED build's test / test-seen, printed beside, never used to
  choose.

Recipes are chosen on the tuning build only (``--tune``: another seed, so other scenes and wording,
though the same held-out drawings). ``--build`` first builds both worlds from ``--source`` (the
clip-art root). Everything lands in ``RUNS/<variant>/`` and ``RUNS/sweep.json``; finished parts are
reused, so a rerun only does what is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[1] / "src" / "ttd" / "assets" / "miniworld"
RECIPES = {"maskclip-like": ("pretrain-infonce.yaml", "clip-config-infonce.yaml"), "tcl-like": ("pretrain.yaml", "clip-config.yaml")}

# name → (kind, dense readout, training keys changed, architecture keys changed, training shards: first N or all)
VARIANTS = {
    "m-avg": ("maskclip-like", "clip", {}, {"pool": "avg"}, 6),
    "m-max": ("maskclip-like", "clip", {}, {"pool": "max"}, 6),
    "m-cls": ("maskclip-like", "maskclip", {}, {"pool": "cls"}, 6),
    "m-max-120k": ("maskclip-like", "clip", {}, {"pool": "max"}, None),
    "m-max-2x": ("maskclip-like", "clip", {"steps": 4800}, {"pool": "max"}, None),
    "t-cls": ("tcl-like", "maskclip", {}, {}, 6),
    "t-cls-120k": ("tcl-like", "maskclip", {}, {}, None),
    "t-max-120k": ("tcl-like", "clip", {"dense": "clip"}, {"pool": "max"}, None),
}


def _reproduce():
    """benchmarks/reproduce_miniworld.py as a module: its evaluation and TTD runs, not a copy."""
    path = Path(__file__).with_name("reproduce_miniworld.py")
    spec = importlib.util.spec_from_file_location("reproduce_miniworld", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def build_worlds(args) -> None:
    from ttd.data.miniworld import MiniWorldConfig, build_miniworld

    builds = ((args.world, MiniWorldConfig(train=args.train, val=1000, test=1000, size=64, train_masks=False)),
              (args.tune, MiniWorldConfig(seed=1, train=0, val=600, test=600, size=64)))
    for out, config in builds:
        if not (out / "build.json").is_file():
            print(f"== building {out}", flush=True)
            build_miniworld(out, config, source=args.source, workers=args.build_workers, overwrite=True, progress=False)


def shard_folder(args, first: int | None) -> Path:
    """The reported world's training shards, or a folder linking only the first ``first`` of them."""
    shards = args.world / "train" / "shards"
    if first is None:
        return shards
    folder = args.runs / f"shards-first{first}"
    folder.mkdir(parents=True, exist_ok=True)
    for tar in sorted(shards.glob("*.tar"))[:first]:
        link = folder / tar.name
        if not link.exists():
            link.symlink_to(tar.resolve())
    return folder


def pretrain_variant(name: str, args) -> Path:
    import yaml

    from ttd.checkpoints import latest_checkpoint
    from ttd.config import load_config
    from ttd.models import CLIPConfig
    from ttd.train import pretrain

    kind, _, keys, arch_keys, first = VARIANTS[name]
    recipe, arch = RECIPES[kind]
    out = args.runs / name / "pretrain"
    weights = out / "model.safetensors"
    if weights.is_file():
        return weights
    settings = {**yaml.safe_load((ASSETS / recipe).read_text()), **keys, "workers": args.workers, "precision": "fp32"}
    if args.pretrain_steps:  # smoke tests only: the figures are meaningless at another budget
        settings.update(steps=args.pretrain_steps, warmup_steps=min(settings["warmup_steps"], args.pretrain_steps // 2))
    config = load_config(**settings, data=str(shard_folder(args, first)), out=str(out), device=args.device)
    clip_config = CLIPConfig(**{**yaml.safe_load((ASSETS / arch).read_text()), **arch_keys})
    start = time.perf_counter()
    pretrain(config, clip_config, resume=latest_checkpoint(out) is not None, progress=False)
    (out / "wall.json").write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))
    return weights


def run_variant(name: str, args) -> dict:
    """Pretrain one variant, train TTD on it, evaluate both; results cached in RUNS/name/result.json."""
    rm = _reproduce()
    path = args.runs / name / "result.json"
    if path.is_file():
        return json.loads(path.read_text())
    kind, dense, *_ = VARIANTS[name]
    weights = pretrain_variant(name, args)
    base = rm.Base(name, kind, dense, str(weights))
    ns = argparse.Namespace(world=args.world, runs=args.runs / name, steps=args.ttd_steps, batch_size=64, lr=1e-4, image_size=64,
                            workers=args.workers, seed=0, threshold=0.40, limit=args.limit, eval_batch=64, device=args.device,
                            quiet=True)
    ev: dict = {}

    def measure(key: str, adapter, world: Path, split: str, **kw) -> None:
        try:  # one failing evaluation must not lose the others
            ev[key] = rm.evaluate(base, adapter, world, split, ns, **kw)
        except Exception as error:  # noqa: BLE001 - recorded in the results, the sweep goes on
            ev[key] = {"error": repr(error)}

    measure("tune/val", None, args.tune, "val", scorers=("pixel", "image"))
    measure("tune/test", None, args.tune, "test", tasks=("caption", "seg"))
    measure("tune/test-seen", None, args.tune, "test-seen", tasks=("seg",))
    measure("world/test", None, args.world, "test", tasks=("seg",))
    measure("world/test-seen", None, args.world, "test-seen", tasks=("seg",))
    trained = rm.train_run(base, rm.TUNING[0], ns)
    measure("ttd/tune/val", trained["adapter"], args.tune, "val")
    measure("ttd/tune/test", trained["adapter"], args.tune, "test", tasks=("tags", "caption", "seg"))
    wall = json.loads((args.runs / name / "pretrain" / "wall.json").read_text())["seconds"]
    result = {"name": name, "kind": kind, "dense": dense, "weights": str(weights), "pretrain_seconds": wall,
              "ttd_seconds": trained["seconds"], "evaluations": ev}
    path.write_text(json.dumps(result, indent=1))
    return result


def _get(e: dict, *keys, default=float("nan")):
    for k in keys:
        if not isinstance(e, dict) or k not in e:
            return default
        e = e[k]
    return e


def summary_row(r: dict) -> dict:
    ev = r["evaluations"]
    seg = {k: _get(ev, k, "seg", "mIoU") for k in ("tune/val", "tune/test", "tune/test-seen", "world/test", "world/test-seen")}
    cov = lambda key: _get(ev, key, "caption", "bias", "other_coverage")
    fnr = lambda key: _get(ev, key, "caption", "caption_class", "FNR")
    f1 = lambda key: 100 * _get(ev, key, "tags", "pixel", "f1")
    return {
        "variant": r["name"], "kind": r["kind"], "readout": r["dense"], "pretrain s": r["pretrain_seconds"],
        "mIoU tune/val": seg["tune/val"], "mIoU tune/test": seg["tune/test"],
        "ratio tune": seg["tune/test"] / max(seg["tune/test-seen"], 1e-9),
        "ratio world": seg["world/test"] / max(seg["world/test-seen"], 1e-9),
        "F1 base→TTD": f"{f1('tune/val'):.1f}→{f1('ttd/tune/val'):.1f}",
        "other cov val": f"{cov('tune/val'):.3f}→{cov('ttd/tune/val'):.3f}",
        "other cov test": f"{cov('tune/test'):.3f}→{cov('ttd/tune/test'):.3f}",
        "cap FNR test": f"{fnr('tune/test'):.3f}→{fnr('ttd/tune/test'):.3f}",
        "CapIoU test": f"{_get(ev, 'tune/test', 'caption', 'CaptionIoU'):.1f}→{_get(ev, 'ttd/tune/test', 'caption', 'CaptionIoU'):.1f}",
        "mIoU TTD test": _get(ev, "ttd/tune/test", "seg", "mIoU"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--tune", type=Path, required=True)
    parser.add_argument("--runs", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--build", action="store_true", help="build missing worlds first (--source, --train)")
    parser.add_argument("--source", type=Path, default=Path("/usr/share/openclipart/png"))
    parser.add_argument("--train", type=int, default=120000, help="training images of a world --build makes")
    parser.add_argument("--build-workers", type=int, default=os.cpu_count())
    parser.add_argument("--parallel", type=int, default=len(VARIANTS))
    parser.add_argument("--workers", type=int, default=1, help="data-loading processes per variant")
    parser.add_argument("--device", default=None)
    parser.add_argument("--copy", type=Path, default=None, help="write fp16 copies of the best variants here")
    parser.add_argument("--copy-best", type=int, default=2, help="how many variants of each kind --copy writes")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="override every variant's steps (smoke tests)")
    parser.add_argument("--ttd-steps", type=int, default=500)
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images of each split only")
    parser.add_argument("--summarize", action="store_true", help="train nothing: summarise the finished variants")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.runs.mkdir(parents=True, exist_ok=True)
    if args.one:
        torch.set_num_threads(1)
        run_variant(args.one, args)
        return
    if args.build:
        build_worlds(args)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    pending, running = ([] if args.summarize else list(names)), {}
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            log = open(args.runs / f"{name}.log", "w")  # noqa: SIM115 - closed when the process ends
            running[name] = (subprocess.Popen([sys.executable, __file__, *passed, "--one", name], stdout=log, stderr=subprocess.STDOUT), log)
        time.sleep(2)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                print(f"-- {name}: exit {proc.returncode}", flush=True)
                del running[name]
    results = [json.loads((args.runs / n / "result.json").read_text()) for n in names if (args.runs / n / "result.json").is_file()]
    rows = [summary_row(r) for r in results]
    (args.runs / "sweep.json").write_text(json.dumps({"rows": rows, "results": results}, indent=1))
    for row in rows:
        print(json.dumps(row))
    if args.copy:
        copy_best(results, rows, args.copy, args.copy_best)


def copy_best(results: list[dict], rows: list[dict], folder: Path, per_kind: int) -> None:
    """fp16 copies of the ``per_kind`` best variants of each kind, best = highest base mIoU on the
    tuning build's held-out test split (the rule fixed before the sweep ran)."""
    from ttd.models import load_model
    from ttd.models.weights import save_weights

    folder.mkdir(parents=True, exist_ok=True)
    for kind in RECIPES:
        ranked = sorted((row for row in rows if row["kind"] == kind), key=lambda row: -row["mIoU tune/test"])
        for row in ranked[:per_kind]:
            weights = next(r["weights"] for r in results if r["name"] == row["variant"])
            save_weights(load_model(weights, device="cpu").half(), folder / f"{row['variant']}.safetensors", protocol="miniworld")
            print(f"copied {row['variant']} ({kind}, tune/test mIoU {row['mIoU tune/test']:.1f})")

if __name__ == "__main__":
    main()
