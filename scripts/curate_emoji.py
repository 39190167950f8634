"""Curate mini-world II's vocabulary: concrete nouns drawn by eight freely licensed emoji sets.

Provenance: the iconify packages of eight emoji sets, fetched from the npm registry with
``npm pack @iconify-json/NAME`` (one ``.tgz`` each; docs/miniworld.md lists the commands). Only
these eight sets are used, with their licences (recorded again, per drawing, in every build.json):

    noto, noto-v1 (Google, Apache-2.0)        twemoji (Twitter, CC-BY-4.0)
    openmoji (OpenMoji, CC-BY-SA-4.0)         fluent-emoji, fluent-emoji-flat (Microsoft, MIT)
    emojione (Emoji One, CC-BY-4.0)           streamline-emojis (Streamline, CC-BY-4.0)

How the vocabulary was made (re-run this script to reproduce it):
1. ``NOUNS`` below maps each noun (one lower-case word, the caption word) to its synonyms and the
   CLDR icon name the sets share (``red-apple`` for apple, ``ewe`` for sheep …); ``RENAMED`` gives a
   set's own name where it differs, ``EXCLUDED`` drops one set's glyph of a noun.
2. Every PASCAL VOC class a set draws is in (aeroplane → airplane, motorbike → motorcycle,
   pottedplant → plant, tvmonitor → television, sheep → ewe, boat → sailboat, train → locomotive,
   bottle → baby bottle, person → person standing); diningtable and sofa have no single-object
   glyph. Whole-body glyphs are used where the noun is the animal (``dog``, not ``dog-face``); nouns
   whose sets draw only a face (lion, bear, frog) are left out.
3. By eye, on the montage (``--montage``, one row per noun, one column per set; committed as
   ``docs/images/miniworld-emoji-montage.png``): glyphs that show several objects, text, a
   different object, or a face where the body is meant are listed in ``EXCLUDED``.

Usage::

    python scripts/curate_emoji.py --emoji /path/to/npm-packs --check        # styles per noun
    python scripts/curate_emoji.py --emoji /path/to/npm-packs --montage docs/images/miniworld-emoji-montage.png
    python scripts/curate_emoji.py --emoji /path/to/npm-packs --write        # the vocabulary file
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ttd.data.drawings import find_icon_sets

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "src/ttd/assets/miniworld/vocabulary-emoji.json"
SETS = ("noto", "noto-v1", "twemoji", "openmoji", "fluent-emoji", "fluent-emoji-flat", "emojione", "streamline-emojis")
# never in a training image: test/ draws only these (docs/miniworld.md says why these two)
HELDOUT_STYLES = ("twemoji", "openmoji")

# noun: (synonyms, icon name shared by the sets)
NOUNS: dict[str, tuple[list[str], str]] = {
    # animals
    "dog": (["puppy"], "dog"),
    "cat": (["kitten"], "cat"),
    "horse": (["pony"], "horse"),
    "cow": (["cattle"], "cow"),
    "sheep": (["lamb"], "ewe"),
    "pig": (["piglet"], "pig"),
    "goat": ([], "goat"),
    "camel": ([], "camel"),
    "elephant": ([], "elephant"),
    "rhinoceros": (["rhino"], "rhinoceros"),
    "mouse": ([], "mouse"),
    "rabbit": (["bunny"], "rabbit"),
    "tiger": ([], "tiger"),
    "deer": ([], "deer"),
    "monkey": (["ape"], "monkey"),
    "bird": ([], "bird"),
    "rooster": (["hen"], "rooster"),
    "turkey": ([], "turkey"),
    "penguin": ([], "penguin"),
    "eagle": ([], "eagle"),
    "duck": (["duckling"], "duck"),
    "owl": ([], "owl"),
    "crocodile": (["alligator"], "crocodile"),
    "turtle": (["tortoise"], "turtle"),
    "snake": (["serpent"], "snake"),
    "whale": ([], "whale"),
    "dolphin": ([], "dolphin"),
    "fish": ([], "fish"),
    "shark": ([], "shark"),
    "octopus": ([], "octopus"),
    "crab": ([], "crab"),
    "snail": ([], "snail"),
    "butterfly": ([], "butterfly"),
    "caterpillar": (["worm"], "bug"),
    "ant": ([], "ant"),
    "bee": (["honeybee"], "honeybee"),
    "ladybug": (["ladybird"], "lady-beetle"),
    "spider": ([], "spider"),
    # food
    "apple": ([], "red-apple"),
    "pear": ([], "pear"),
    "orange": (["tangerine"], "tangerine"),
    "lemon": ([], "lemon"),
    "banana": ([], "banana"),
    "watermelon": ([], "watermelon"),
    "grapes": (["grape"], "grapes"),
    "strawberry": ([], "strawberry"),
    "pineapple": ([], "pineapple"),
    "tomato": ([], "tomato"),
    "eggplant": (["aubergine"], "eggplant"),
    "carrot": ([], "carrot"),
    "corn": (["maize"], "ear-of-corn"),
    "pepper": (["chili"], "hot-pepper"),
    "mushroom": ([], "mushroom"),
    "bread": (["loaf"], "bread"),
    "hamburger": (["burger"], "hamburger"),
    "pizza": ([], "pizza"),
    "egg": ([], "egg"),
    "doughnut": (["donut"], "doughnut"),
    "cookie": (["biscuit"], "cookie"),
    "cake": ([], "birthday-cake"),
    # vehicles
    "airplane": (["plane", "aeroplane"], "airplane"),
    "car": (["automobile"], "automobile"),
    "bus": ([], "bus"),
    "bicycle": (["bike"], "bicycle"),
    "motorcycle": (["motorbike"], "motorcycle"),
    "boat": (["sailboat"], "sailboat"),
    "train": (["locomotive"], "locomotive"),
    "ambulance": ([], "ambulance"),
    "truck": (["lorry"], "delivery-truck"),
    "tractor": ([], "tractor"),
    "helicopter": ([], "helicopter"),
    "rocket": ([], "rocket"),
    # things
    "guitar": ([], "guitar"),
    "violin": (["fiddle"], "violin"),
    "trumpet": ([], "trumpet"),
    "drum": ([], "drum"),
    "microphone": (["mic"], "microphone"),
    "headphones": (["headset"], "headphone"),
    "television": (["tv"], "television"),
    "laptop": ([], "laptop"),
    "telephone": (["phone"], "telephone"),
    "camera": ([], "camera"),
    "clock": ([], "alarm-clock"),
    "lightbulb": (["bulb"], "light-bulb"),
    "candle": ([], "candle"),
    "book": ([], "closed-book"),
    "pencil": ([], "pencil"),
    "scissors": ([], "scissors"),
    "hammer": ([], "hammer"),
    "key": ([], "key"),
    "bell": ([], "bell"),
    "umbrella": ([], "closed-umbrella"),
    "crown": ([], "crown"),
    "hat": (["tophat"], "top-hat"),
    "shoe": (["sneaker"], "running-shoe"),
    "tshirt": (["shirt"], "t-shirt"),
    "jeans": (["trousers"], "jeans"),
    "dress": ([], "dress"),
    "backpack": (["rucksack"], "backpack"),
    "cup": (["coffee"], "hot-beverage"),
    "bottle": ([], "baby-bottle"),
    "chair": ([], "chair"),
    "bed": ([], "bed"),
    "plant": (["houseplant"], "potted-plant"),
    "tree": ([], "deciduous-tree"),
    "pine": (["fir"], "evergreen-tree"),
    "cactus": ([], "cactus"),
    "tulip": ([], "tulip"),
    "rose": ([], "rose"),
    "leaf": ([], "maple-leaf"),
    "house": (["home", "cottage"], "house"),
    "castle": ([], "castle"),
    "ball": (["football"], "soccer-ball"),
    "balloon": ([], "balloon"),
    "teddy": (["teddybear"], "teddy-bear"),
    "anchor": ([], "anchor"),
    "moon": ([], "crescent-moon"),
    "sun": ([], "sun"),
    "star": ([], "star"),
    "snowman": ([], "snowman"),
    "bomb": ([], "bomb"),
    "pumpkin": (["lantern"], "jack-o-lantern"),
    "ghost": ([], "ghost"),
    "trophy": ([], "trophy"),
    "gift": (["present"], "wrapped-gift"),
    "dice": (["die"], "game-die"),
    "person": (["pedestrian"], "person-standing"),
}

# (set, noun) → that set's icon name for the noun
RENAMED: dict[tuple[str, str], str] = {
    ("streamline-emojis", "sheep"): "ewe-1",
}

# (set, noun) left out after a look at the montage, and why
EXCLUDED: dict[tuple[str, str], str] = {
    ("streamline-emojis", "turkey"): "its 'turkey' is the country's flag",
    ("streamline-emojis", "castle"): "a framed picture of a castle on a square background",
}


def drawings(icon_sets: dict) -> dict[str, list[str]]:
    """noun → its drawing references (``SET:NAME``), in the order of ``SETS``."""
    out = {}
    for noun, (_, name) in NOUNS.items():
        refs = []
        for prefix in SETS:
            if (prefix, noun) in EXCLUDED or prefix not in icon_sets:
                continue
            icon = RENAMED.get((prefix, noun), name)
            s = icon_sets[prefix]
            if icon in s.icons or icon in s.aliases:
                refs.append(f"{prefix}:{icon}")
        out[noun] = refs
    return out


def montage(icon_sets: dict, path: Path, cell: int = 40, columns: int = 2) -> None:
    """One row per noun, one column per set, on a checkerboard (so white glyphs show)."""
    table = drawings(icon_sets)
    nouns = list(NOUNS)
    rows = -(-len(nouns) // columns)
    label, gap = 96, 16
    panel = label + cell * len(SETS)
    sheet = Image.new("RGB", (columns * panel + (columns - 1) * gap, (rows + 1) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    checker = (np.indices((cell, cell)).sum(0) // 8 % 2 * 40 + 200).astype(np.uint8)
    checker = Image.fromarray(np.dstack([checker] * 3))
    for c in range(columns):
        x0 = c * (panel + gap)
        for j, prefix in enumerate(SETS):
            draw.text((x0 + label + j * cell + 2, 4), prefix[:7], fill="black")
            draw.text((x0 + label + j * cell + 2, 16), prefix[7:14], fill="black")
    for i, noun in enumerate(nouns):
        c, r = divmod(i, rows)
        x0, y0 = c * (panel + gap), (r + 1) * cell
        draw.text((x0 + 2, y0 + cell // 2 - 6), noun, fill="black")
        refs = {ref.split(":")[0]: ref for ref in table[noun]}
        for j, prefix in enumerate(SETS):
            x = x0 + label + j * cell
            sheet.paste(checker, (x, y0))
            if prefix not in refs:
                draw.line((x, y0, x + cell, y0 + cell), fill="red")
                continue
            rgba = icon_sets[prefix].render(refs[prefix].split(":", 1)[1], cell - 4)
            glyph = Image.fromarray(rgba, "RGBA")
            sheet.paste(glyph, (x + 2, y0 + 2), glyph)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)


def vocabulary(icon_sets: dict) -> dict:
    table = drawings(icon_sets)
    sources = {}
    for prefix in SETS:
        s = icon_sets[prefix]
        sources[prefix] = {"package": f"@iconify-json/{prefix}", "version": s.version, "licence": s.licence, "author": s.author}
    return {
        "source": {
            "name": "iconify emoji sets",
            "install": " && ".join(f"npm pack @iconify-json/{p}" for p in SETS),
            "sets": sources,
        },
        "heldout_styles": list(HELDOUT_STYLES),
        "curation": "scripts/curate_emoji.py (noun table, renames, exclusions by eye on docs/images/miniworld-emoji-montage.png)",
        "nouns": {noun: {"synonyms": NOUNS[noun][0], "files": table[noun]} for noun in NOUNS},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emoji", required=True, help="folder of the eight `npm pack @iconify-json/NAME` archives")
    parser.add_argument("--check", action="store_true", help="print the styles each noun has")
    parser.add_argument("--montage", type=Path, help="write the noun × set montage here")
    parser.add_argument("--write", action="store_true", help=f"write {OUT.relative_to(ROOT)}")
    args = parser.parse_args()
    icon_sets = find_icon_sets(args.emoji, set(SETS))
    missing = [p for p in SETS if p not in icon_sets]
    if missing:
        print(f"missing sets under {args.emoji}: {', '.join(missing)}", file=sys.stderr)
        return 2
    table = drawings(icon_sets)
    if args.check:
        for noun, refs in sorted(table.items(), key=lambda kv: len(kv[1])):
            have = {r.split(":")[0] for r in refs}
            print(f"{len(refs)} {noun:12s} missing: {', '.join(p for p in SETS if p not in have)}")
        counts = [len(r) for r in table.values()]
        print(f"{len(table)} nouns; {sum(c >= 8 for c in counts)} with 8 styles, {sum(c >= 7 for c in counts)} with ≥ 7")
        trained = [sum(r.split(':')[0] not in HELDOUT_STYLES for r in refs) for refs in table.values()]
        print(f"training styles per noun: min {min(trained)}, median {int(np.median(trained))}")
    if args.montage:
        montage(icon_sets, args.montage)
        print(f"wrote {args.montage}")
    if args.write:
        OUT.write_text(json.dumps(vocabulary(icon_sets), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
