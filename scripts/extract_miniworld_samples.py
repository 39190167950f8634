"""Copy a few dozen images of a mini-world build, with captions and masks, into the package
(``src/ttd/assets/miniworld/samples``) so that ``ttd quickstart`` and ``ttd demo`` need no build.

    python scripts/extract_miniworld_samples.py --world data/mw64 --count 32

By default from the ``test`` split: drawings in held-out styles that no embedded model was
trained on, 2–4 objects, the held-out caption wording (docs/miniworld.md). Deterministic: the
records of ``WORLD/SPLIT/tags.jsonl`` are taken in file order, preferring
captions with several depicted words (where single tag bias shows) and, among those, nouns not
yet covered; ties keep file order. Output: ``images/KEY.jpg``, ``masks/KEY_caption.png``,
``masks/KEY_WORD.png`` (copied byte for byte), ``tags.jsonl`` (the manifest format of
``ttd.data.manifest``, paths relative to it; each record also lists its ``drawings``: set, icon
name, author and licence of every object, for attribution) and ``build.json`` (the build's
options, for provenance).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
from pathlib import Path

from ttd.data.manifest import write_manifest

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "ttd" / "assets" / "miniworld" / "samples"


def choose(records: list[dict], count: int) -> list[dict]:
    """Multi-object captions first, greedily maximising new nouns; file order breaks ties."""
    chosen: list[dict] = []
    seen: set[str] = set()
    pool = list(records)
    while pool and len(chosen) < count:
        best = max(pool, key=lambda r: (min(len(r["tags"]), 3), len(set(r["tags"]) - seen), -pool.index(r)))
        chosen.append(best)
        seen.update(best["tags"])
        pool.remove(best)
    return sorted(chosen, key=records.index)


def drawings_of(world: Path, split: str, keys: set[str]) -> dict[str, list[dict]]:
    """key → the drawings its objects are (from the shards' KEY.json and build.json's licences)."""
    info = json.loads((world / "build.json").read_text(encoding="utf-8")).get("drawings", {})
    found: dict[str, list[dict]] = {}
    for shard in sorted((world / split / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key = member.name.rsplit(".", 1)[0]
                if member.name.endswith(".json") and key in keys:
                    meta = json.loads(tar.extractfile(member).read())
                    found[key] = [info.get(o["file"], {"name": o["file"]}) for o in meta["objects"]]
    return found


def extract(world: Path, out: Path, count: int, split: str = "test") -> Path:
    manifest = world / split / "tags.jsonl"
    records = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    chosen = choose(records, count)
    drawings = drawings_of(world, split, {Path(r["image"]).stem for r in chosen})
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    written = []
    for record in chosen:
        entry = dict(record, drawings=drawings.get(Path(record["image"]).stem, []))
        for field, rel in [("image", record["image"]), ("caption_mask", record["caption_mask"])]:
            target = f"{'images' if field == 'image' else 'masks'}/{Path(rel).name}"
            shutil.copyfile(manifest.parent / rel, out / target)
            entry[field] = target
        entry["tag_masks"] = {}
        for word, rel in record["tag_masks"].items():
            shutil.copyfile(manifest.parent / rel, out / "masks" / Path(rel).name)
            entry["tag_masks"][word] = f"masks/{Path(rel).name}"
        written.append(entry)
    shutil.copyfile(world / "build.json", out / "build.json")
    return write_manifest(written, out / "tags.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="a `ttd data miniworld` build")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--split", default="test", help="the split to copy from (default test: held-out styles)")
    args = parser.parse_args()
    path = extract(args.world, args.out, args.count, args.split)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{path}: {args.count} samples, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
