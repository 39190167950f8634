"""The mini-world: clip-art composites with captions, tags and exact masks, built offline.

Each image pastes 1–3 public-domain clip-art cut-outs (Debian's ``openclipart-png``) on a
procedural background; the cut-outs' alpha channels give exact per-object masks, with later
pastes occluding earlier ones. Captions come from a small grammar that mixes the depicted words
with words naming nothing in the image ("a drawing of a cute bee beside an old hammer on the
beach sand"), which is what single tag bias needs to show. Everything is deterministic: sample
``i`` of a split draws from ``numpy.random.default_rng([seed, split, i])``, so the same seed
gives the same bytes in every output file, with any number of worker processes.

Layout written by :func:`build_miniworld` (see ``docs/miniworld.md`` and the ``README.txt`` it writes)::

    OUT/{train,val}/shards/NNNNN.tar        KEY.jpg + KEY.txt + KEY.json (+ KEY.seg.png), as img2dataset writes
    OUT/{train,val}/images/KEY.jpg          the same JPEGs, for the manifests
    OUT/{train,val}/pairs.jsonl             {"image", "caption"}
    OUT/{train,val}/tags.jsonl              + "tags", "caption_mask", "tag_masks" (multi-tag AND caption-mask manifest)
    OUT/{train,val}/masks/KEY_caption.png   union of the depicted objects; KEY_<word>.png per depicted word
    OUT/seg/{train,val}/                    generic segmentation layout: images/KEY.png, masks/KEY.png, classes.txt
    OUT/build.json, OUT/README.txt
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import TTDError
from ..io import asset, atomic_write_bytes, save_json
from ..locks import LOCK_NAME
from .drawings import CLIPART_STYLE, NPM_HINT, drawing_style, find_icon_sets
from .manifest import write_manifest
from .textures import random_texture

__all__ = [
    "DEFAULT_SOURCE",
    "VOCABULARIES",
    "MiniWorldConfig",
    "Noun",
    "CaptionGrammar",
    "ClipArt",
    "Scene",
    "load_vocabulary",
    "load_grammar",
    "compose_scene",
    "build_miniworld",
    "parse_objects",
]

DEFAULT_SOURCE = Path("/usr/share/openclipart/png")
ASSETS = asset("miniworld")
# the committed vocabularies by name: mini-world II (emoji styles, the default) and mini-world I (clip art)
VOCABULARIES = {"emoji": "vocabulary-emoji.json", "openclipart": "vocabulary.json"}
DEFAULT_VOCABULARY = "emoji"
INSTALL_HINT = "install it with `apt-get install -y openclipart-png` or pass --source"
PLACEMENT_TRIES = 30
HELDOUT_SHARE = 0.25  # of each noun's clip-art files, never seen in training (at least one per noun)
TEST_OBJECTS = (2, 4)  # objects per test image
RENDER_SCALE = 2  # emoji are rasterised at twice the cut-out size, then downsampled (smoother edges)
TEST_REPEAT = 0.35  # probability that a test image shows one noun twice (named by its plural)
MASK_VALUE = 1  # manifest masks: non-zero = foreground (255 would mean "ignore")
FORMAT = "ttd-miniworld/3"


@dataclass(frozen=True)
class MiniWorldConfig:
    """What the world looks like; every field is a ``ttd data miniworld`` option."""

    seed: int = 0
    train: int = 10000
    val: int = 1000
    test: int = 1000  # images of each held-out test split (test/ and test-seen/)
    size: int = 96
    min_objects: int = 1
    max_objects: int = 3
    scale: tuple[float, float] = (0.45, 0.9)  # √(box area) / image side of a lone object; × k^-0.4 for k objects
    max_occlusion: float = 0.3  # a paste may hide at most this share of an earlier object (best of 30 tries)
    nouns: tuple[str, ...] | None = None  # a subset of the vocabulary, in its order; None = all
    shard_size: int = 10000
    train_masks: bool = True  # masks and the segmentation set for the training split too
    jpeg_quality: int = 90
    augment: bool = True  # recolour, rotate and stretch training cut-outs (train and val splits)
    shape_augment: bool = False  # also repaint, blur and partly erase them (:func:`_augment_shape`)
    heldout_styles: tuple[str, ...] | None = None  # styles only test/ draws; None: the vocabulary's, (): by instance

    def validate(self, max_caption_objects: int) -> None:
        if self.seed < 0:
            raise TTDError(f"--seed must be ≥ 0, got {self.seed}")
        if min(self.train, self.val, self.test) < 0 or self.train + self.val + self.test == 0:
            raise TTDError(
                f"--train, --val and --test must be ≥ 0 and not all 0, got {self.train}, {self.val} and {self.test}"
            )
        if not 32 <= self.size <= 512:
            raise TTDError(f"--size must be between 32 and 512 pixels, got {self.size}")
        if not 1 <= self.min_objects <= self.max_objects <= max_caption_objects:
            raise TTDError(
                f"--objects must be N or MIN-MAX with 1 ≤ MIN ≤ MAX ≤ {max_caption_objects}, "
                f"got {self.min_objects}-{self.max_objects}"
            )
        lo, hi = self.scale
        if not 0.05 <= lo <= hi <= 1.0:
            raise TTDError(f"--scale must be MIN-MAX with 0.05 ≤ MIN ≤ MAX ≤ 1, got {lo}-{hi}")
        if not 0.0 <= self.max_occlusion < 1.0:
            raise TTDError(f"--max-occlusion must be in [0, 1), got {self.max_occlusion}")
        if self.shard_size < 1:
            raise TTDError(f"--shard-size must be ≥ 1, got {self.shard_size}")
        if not 1 <= self.jpeg_quality <= 100:
            raise TTDError(f"JPEG quality must be in [1, 100], got {self.jpeg_quality}")


def parse_objects(text: str) -> tuple[int, int]:
    """``"2"`` → (2, 2); ``"1-3"`` → (1, 3)."""
    return _parse_range(text, int, "--objects", "N or MIN-MAX, e.g. 1-3")


def parse_scale(text: str) -> tuple[float, float]:
    """``"0.45-0.9"`` → (0.45, 0.9)."""
    return _parse_range(text, float, "--scale", "MIN-MAX, e.g. 0.45-0.9")


def parse_styles(text: str | None) -> tuple[str, ...] | None:
    """``"twemoji,openmoji"`` → the two styles; ``"none"`` → () (hold out drawings); None → None."""
    if text is None:
        return None
    styles = tuple(s.strip() for s in str(text).split(",") if s.strip())
    return () if styles in ((), ("none",)) else styles


def _parse_range(text: str, kind, option: str, expected: str):
    parts = str(text).split("-")
    try:
        values = [kind(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise TTDError(f"{option} must be {expected}, got {text!r}")
    return values[0], values[-1]


@dataclass(frozen=True)
class Split:
    """How one split is drawn: its seed entry, which clip-art files, which scenes and captions.

    ``test`` and ``test-seen`` share seeds and composition rules: the same scenes, with held-out
    drawings in one and training drawings in the other, so the two differ only in the objects'
    drawings (what a base model's generalisation to unseen styles is measured by).
    """

    seed: int  # the second entry of every sample's seed
    instances: str  # "train": the training drawings of each noun; "heldout": the others
    test: bool  # test composition: 2-4 objects, a noun may repeat, the held-out caption wording


SPLITS = {
    "train": Split(0, "train", False),
    "val": Split(1, "train", False),
    "test": Split(2, "heldout", True),
    "test-seen": Split(2, "train", True),
}


def _split_size(config: MiniWorldConfig, split: str) -> int:
    return config.test if SPLITS[split].test else getattr(config, split)


# ----------------------------------------------------------------------------- vocabulary and grammar
WORD = re.compile(r"^[a-z]+$")


@dataclass(frozen=True)
class Noun:
    name: str
    synonyms: tuple[str, ...]
    files: tuple[str, ...]  # drawing references: clip-art paths or SET:NAME emoji (:mod:`.drawings`)

    @property
    def words(self) -> tuple[str, ...]:
        return (self.name, *self.synonyms)

    def instances(self, which: str, heldout_styles: Sequence[str] = ()) -> tuple[str, ...]:
        """The drawings of the training split (``"train"``) or the held-out ones.

        With ``heldout_styles``: held out are the drawings of those styles (whole emoji sets).
        Without: the ``max(1, round(25 %))`` files with the smallest SHA-256 of their path (none
        for a noun with a single file), a rule that depends on nothing but the file names.
        """
        if heldout_styles:
            return tuple(f for f in self.files if (drawing_style(f) in heldout_styles) == (which == "heldout"))
        if len(self.files) < 2:
            return self.files if which == "train" else ()
        ranked = sorted(self.files, key=lambda f: hashlib.sha256(f.encode()).hexdigest())
        heldout = set(ranked[: max(1, round(len(self.files) * HELDOUT_SHARE))])
        return tuple(f for f in self.files if (f in heldout) == (which == "heldout"))


IRREGULAR_PLURALS = {
    "aircraft": "aircraft", "cactus": "cacti", "cattle": "cattle", "fish": "fish", "glasses": "glasses",
    "grapes": "grapes", "loaf": "loaves", "mouse": "mice", "scissors": "scissors", "sheep": "sheep",
    "spectacles": "spectacles", "sunglasses": "sunglasses",
}  # fmt: skip


def plural(word: str) -> str:
    """English plural of a vocabulary word ("bus" → "buses", "cherry" → "cherries")."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u"):
        return word[:-1] + "ies"
    return word + "s"


def vocabulary_path(name_or_path: str | Path | None = None) -> Path:
    """A committed vocabulary by name (``emoji``, the default; ``openclipart``) or a JSON file."""
    name = str(name_or_path) if name_or_path else DEFAULT_VOCABULARY
    return ASSETS / VOCABULARIES[name] if name in VOCABULARIES else Path(name)


def vocabulary_heldout_styles(name_or_path: str | Path | None = None) -> tuple[str, ...]:
    """The styles a vocabulary holds out of training by default (its ``heldout_styles``)."""
    doc = _read_json(vocabulary_path(name_or_path), "vocabulary")
    styles = doc.get("heldout_styles", []) if isinstance(doc, dict) else []
    return tuple(str(s) for s in styles)


def load_vocabulary(path: str | Path | None = None, nouns: Sequence[str] | None = None) -> list[Noun]:
    """A committed vocabulary (by name, see :data:`VOCABULARIES`) or a JSON file, optionally
    restricted to ``nouns``.

    Every noun and synonym is one lower-case word, used by one noun only, so a caption word names
    at most one class.
    """
    path = vocabulary_path(path)
    doc = _read_json(path, "vocabulary")
    entries = doc.get("nouns") if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise TTDError(f"vocabulary {path} must hold a non-empty object 'nouns'")
    vocabulary, owner = [], {}
    for name, entry in entries.items():
        synonyms = entry.get("synonyms", []) if isinstance(entry, dict) else None
        files = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise TTDError(f"vocabulary {path}: noun {name!r} needs a non-empty list 'files'")
        if not isinstance(synonyms, list):
            raise TTDError(f"vocabulary {path}: noun {name!r}: 'synonyms' must be a list of words")
        for word in [name, *synonyms]:
            if not isinstance(word, str) or not WORD.match(word):
                raise TTDError(f"vocabulary {path}: {word!r} is not one lower-case word (a-z)")
            if word in owner:
                raise TTDError(f"vocabulary {path}: word {word!r} belongs to both {owner[word]!r} and {name!r}")
            owner[word] = name
        vocabulary.append(Noun(name, tuple(synonyms), tuple(files)))
    if nouns:
        known = {n.name for n in vocabulary}
        unknown = [n for n in nouns if n not in known]
        if unknown:
            raise TTDError(f"unknown noun(s) {', '.join(unknown)}; the vocabulary has: {', '.join(sorted(known))}")
        wanted = set(nouns)
        vocabulary = [n for n in vocabulary if n.name in wanted]
    return vocabulary


@dataclass(frozen=True)
class CaptionGrammar:
    """Templates per object count with ``{o1}``… object phrases and ``{slot}`` phrases.

    The ``mention`` slot's phrases carry a ``{noun}``: a vocabulary noun the image does NOT
    depict ("waiting for a dog"), as real captions name things that are not in the picture; a
    tag selector must then tell depicted nouns from mentioned ones, not nouns from other words.
    """

    templates: dict[int, tuple[str, ...]]
    slots: dict[str, tuple[str, ...]]
    optional: dict[str, float] = field(default_factory=dict)

    def words(self) -> set[str]:
        """Every word the grammar itself can put in a caption (none of them is depicted)."""
        phrases = [*(t for ts in self.templates.values() for t in ts), *(p for ps in self.slots.values() for p in ps)]
        text = " ".join(phrases)
        return {w for w in re.sub(r"\{[a-z0-9]+\}|[^a-z ]", " ", text.lower()).split()}

    def caption(
        self, rng: np.random.Generator, words: Sequence[str], mention: str | None = None, plurals: Sequence[str] = ()
    ) -> str:
        """A caption naming ``words`` in this order, with undepicted words around them (among
        them ``mention``, an undepicted noun, when the template's ``{mention}`` slot is used).
        A word in ``plurals`` names two objects: its phrase is ``{count} [adjective] word``."""
        template = self._pick(rng, self.templates[len(words)])

        def fill(match: re.Match) -> str:
            slot = match.group(1)
            if slot[0] == "o" and slot[1:].isdigit():
                word = words[int(slot[1:]) - 1]
                return self._object_phrase(rng, word, word in plurals)
            if slot == "mention":
                phrase = self._slot(rng, slot) if mention else ""
                return phrase.replace("{noun}", mention) if phrase else ""
            return self._slot(rng, slot)

        text = re.sub(r"\{([a-z0-9]+)\}", fill, template)
        text = " ".join(text.split()).replace(" ,", ",")
        return re.sub(r"\ba (?=[aeiou])", "an ", text)

    def _object_phrase(self, rng: np.random.Generator, word: str, several: bool = False) -> str:
        determiner = self._slot(rng, "count" if several else "determiner")
        return f"{determiner} {self._slot(rng, 'adjective')} {word}"

    def _slot(self, rng: np.random.Generator, slot: str) -> str:
        if slot in self.optional and rng.random() >= self.optional[slot]:
            return ""
        return self._pick(rng, self.slots[slot])

    @staticmethod
    def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]


def load_grammar(
    path: str | Path | None = None, vocabulary: Sequence[Noun] = (), heldout: bool = False
) -> CaptionGrammar:
    """The caption grammar (committed default or ``path``), checked against ``vocabulary``.

    ``heldout=True`` gives the test splits' wording: the file's ``heldout`` section, whose
    templates and slots replace the training ones (slots it does not list are shared).
    """
    path = Path(path) if path else ASSETS / "captions.json"
    doc = _read_json(path, "caption grammar")
    if heldout:
        section = doc.get("heldout") if isinstance(doc, dict) else None
        if not isinstance(section, dict):
            raise TTDError(f"caption grammar {path} has no 'heldout' section (templates and slots of the test splits)")
        doc = {**doc, "templates": section.get("templates"), "slots": {**doc.get("slots", {}), **section.get("slots", {})},
               "optional": {**doc.get("optional", {}), **section.get("optional", {})}}  # fmt: skip
    try:
        grammar = CaptionGrammar(
            templates={int(k): tuple(v) for k, v in doc["templates"].items()},
            slots={k: tuple(v) for k, v in doc["slots"].items()},
            optional={k: float(v) for k, v in doc.get("optional", {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise TTDError(f"caption grammar {path} needs 'templates' {{count: [..]}} and 'slots' {{name: [..]}}") from None
    for ts in grammar.templates.values():
        for t in ts:
            for slot in re.findall(r"\{([a-z0-9]+)\}", t):
                if not (slot[0] == "o" and slot[1:].isdigit()) and slot not in grammar.slots:
                    raise TTDError(f"caption grammar {path}: template {t!r} uses unknown slot {slot!r}")
    for slot in ("determiner", "adjective", *(("count",) if heldout else ())):
        if slot not in grammar.slots:
            raise TTDError(f"caption grammar {path}: slot {slot!r} is required (object phrases use it)")
    words = {w for n in vocabulary for w in n.words}
    clash = grammar.words() & (words | {plural(w) for w in words})
    if clash:
        words = ", ".join(sorted(clash))
        raise TTDError(f"caption grammar {path} uses vocabulary word(s) {words}: they would look depicted")
    return grammar


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise TTDError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TTDError(f"{what} {path} is not valid JSON ({err.msg} at line {err.lineno})") from None


# ----------------------------------------------------------------------------- drawings as cut-outs
class ClipArt:
    """Cut-outs of the vocabulary's drawings: RGBA, cropped to the alpha box, longer side ≤ ``max_side``.

    ``source``: the clip-art folder (drawings given as paths); ``emoji``: a folder of iconify sets
    (drawings given as ``SET:NAME``). ``heldout_styles``: the styles only the test split draws (see
    :meth:`Noun.instances`). Every cut-out is made once, here, so a build checks all its drawings
    before writing anything and worker processes receive them ready (rasterising SVGs and decoding
    the large clip-art PNGs would dominate otherwise).
    """

    def __init__(
        self,
        source: str | Path | None,
        vocabulary: Sequence[Noun],
        max_side: int,
        emoji: str | Path | None = None,
        heldout_styles: Sequence[str] = (),
    ):
        self.vocabulary = list(vocabulary)
        self.max_side = max_side
        self.heldout_styles = tuple(heldout_styles)
        refs = [f for noun in self.vocabulary for f in noun.files]
        styles = {drawing_style(f) for f in refs}
        unknown = set(self.heldout_styles) - styles
        if unknown:
            raise TTDError(f"held-out style(s) {', '.join(sorted(unknown))} draw no noun in use; "
                           f"the vocabulary's styles: {', '.join(sorted(styles))}")
        if self.heldout_styles and styles <= set(self.heldout_styles):
            raise TTDError("every style is held out: no drawing is left for training; hold out fewer styles")
        self.info: dict[str, dict] = {}  # reference → style, name, licence (recorded in build.json)
        self._cutouts: dict[str, np.ndarray] = {}
        if CLIPART_STYLE in styles:
            self._load_clipart(Path(source) if source else DEFAULT_SOURCE, [f for f in refs if drawing_style(f) == CLIPART_STYLE])
        if styles - {CLIPART_STYLE}:
            self._load_emoji(emoji, [f for f in refs if drawing_style(f) != CLIPART_STYLE])

    def instances(self, noun: int, which: str) -> tuple[str, ...]:
        return self.vocabulary[noun].instances(which, self.heldout_styles)

    def cutout(self, ref: str) -> np.ndarray:
        return self._cutouts[ref]

    def _load_clipart(self, source: Path, refs: list[str]) -> None:
        if not source.is_dir():
            raise TTDError(f"clip-art source folder not found: {source}; {INSTALL_HINT}")
        for ref in refs:
            path = source / ref
            if not path.is_file():
                raise TTDError(f"clip-art file not found: {path}; {INSTALL_HINT}")
            try:
                with Image.open(path) as im:
                    rgba = np.asarray(im.convert("RGBA"))
            except (OSError, Image.DecompressionBombError) as err:
                raise TTDError(f"cannot read clip-art {path}: {err}") from None
            self._cutouts[ref] = self._crop(rgba, ref)
            self.info[ref] = {"style": CLIPART_STYLE, "name": ref, "licence": "public domain (openclipart-png)"}

    def _load_emoji(self, folder: str | Path | None, refs: list[str]) -> None:
        wanted = {drawing_style(f) for f in refs}
        if folder is None:
            raise TTDError(f"the vocabulary draws emoji ({', '.join(sorted(wanted))}): pass --emoji DIR, "
                           f"the folder of their iconify sets; {NPM_HINT}")
        sets = find_icon_sets(folder, wanted)
        missing = sorted(wanted - set(sets))
        if missing:
            commands = " && ".join(f"npm pack @iconify-json/{m}" for m in missing)
            raise TTDError(f"emoji set(s) {', '.join(missing)} not found under {folder}; run `{commands}` there")
        for ref in refs:
            prefix, name = ref.split(":", 1)
            icons = sets[prefix]
            rgba = icons.render(name, self.max_side * RENDER_SCALE)
            self._cutouts[ref] = self._crop(rgba, ref)
            licence = icons.licence.get("spdx") or icons.licence.get("title") or "see the set's package"
            self.info[ref] = {"style": prefix, "name": name, "licence": licence,
                              "author": icons.author.get("name", ""), "package": f"@iconify-json/{prefix}" + (f"@{icons.version}" if icons.version else "")}

    def _crop(self, rgba: np.ndarray, ref: str) -> np.ndarray:
        im = Image.fromarray(np.ascontiguousarray(rgba), "RGBA")
        box = im.getchannel("A").getbbox()
        if box is None:
            raise TTDError(f"drawing {ref} is fully transparent; remove it from the vocabulary")
        im = im.crop(box)
        if max(im.size) > self.max_side:
            im = im.resize(_fit(im.size, self.max_side), Image.LANCZOS)
        return np.asarray(im)


def _fit(size: tuple[int, int], longer: float) -> tuple[int, int]:
    """(w, h) scaled so that the longer side is ``longer`` pixels (each side ≥ 1)."""
    w, h = size
    s = longer / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


# ----------------------------------------------------------------------------- composition
@dataclass
class PlacedObject:
    noun: int  # index into the vocabulary in use
    file: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of the pasted cut-out
    flip: bool
    solid: np.ndarray  # (S, S) bool: where its own alpha ≥ 0.5
    mask: np.ndarray  # (S, S) bool: ``solid`` minus every later paste's ``solid`` (what is visible)
    word: str = ""


@dataclass
class Scene:
    image: np.ndarray  # (S, S, 3) uint8
    objects: list[PlacedObject]  # paste order, bottom first; fully occluded ones dropped
    caption: str
    tags: list[str]  # depicted words in caption order
    background: str


def compose_scene(
    rng: np.random.Generator,
    clipart: ClipArt,
    grammar: CaptionGrammar,
    config: MiniWorldConfig,
    split: Split = SPLITS["train"],
) -> Scene:
    """One composite: background, pasted cut-outs, masks, caption.

    Training composition: 1–3 objects (``--objects``) of distinct nouns. Test composition: 2–4
    objects, and with probability :data:`TEST_REPEAT` one noun twice (two different files where
    the noun has them), named once by its plural ("two cats"). Cut-outs of the training
    composition are augmented when ``config.augment`` (:func:`_augment`).
    """
    size, vocabulary = config.size, clipart.vocabulary
    usable = [n for n in range(len(vocabulary)) if clipart.instances(n, split.instances)]
    lo, hi = TEST_OBJECTS if split.test else (config.min_objects, config.max_objects)
    k = min(int(rng.integers(lo, hi + 1)), len(usable))
    repeat = split.test and k >= 2 and rng.random() < TEST_REPEAT
    nouns = [usable[i] for i in rng.choice(len(usable), size=k - repeat, replace=False)]
    if repeat:
        nouns.append(nouns[int(rng.integers(len(nouns)))])
    background, canvas = random_texture(rng, size)
    objects: list[PlacedObject] = []
    for noun in nouns:
        pool = clipart.instances(noun, split.instances)
        files = [f for f in pool if not any(o.file == f for o in objects)] or pool
        file = files[int(rng.integers(len(files)))]
        flip = bool(rng.random() < 0.5)
        cut = clipart.cutout(file)
        if flip:
            cut = cut[:, ::-1]
        if config.augment and not split.test:
            cut = _augment(rng, cut)
        if config.shape_augment and not split.test:
            cut = _augment_shape(rng, cut)
        rgba, (x, y), solid = _place(rng, cut, objects, k, config)
        h, w = rgba.shape[:2]
        alpha = rgba[..., 3:4].astype(np.float32) / 255
        region = canvas[y : y + h, x : x + w]
        canvas[y : y + h, x : x + w] = region * (1 - alpha) + rgba[..., :3].astype(np.float32) * alpha
        for earlier in objects:
            earlier.mask &= ~solid
        objects.append(PlacedObject(noun, file, (x, y, x + w, y + h), flip, solid, solid.copy()))
    objects = [o for o in objects if o.mask.any()]
    words: dict[int, str] = {}  # noun → the word naming all of its objects
    for o in objects:
        if o.noun not in words:
            words[o.noun] = _pick_word(rng, vocabulary[o.noun])
    several = {n for n in words if sum(o.noun == n for o in objects) > 1}
    words = {n: plural(w) if n in several else w for n, w in words.items()}
    for o in objects:
        o.word = words[o.noun]
    tags = [words[n] for n in (list(words)[i] for i in rng.permutation(len(words)))]
    absent = [n for n in range(len(vocabulary)) if n not in words]
    mention = _pick_word(rng, vocabulary[absent[int(rng.integers(len(absent)))]]) if absent else None
    caption = grammar.caption(rng, tags, mention, plurals=[words[n] for n in several])
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(image, objects, caption, tags, background)


def _augment(rng: np.random.Generator, cut: np.ndarray) -> np.ndarray:
    """A recoloured, rotated, stretched copy of an RGBA cut-out (alpha follows the geometry).

    Half of the time the hue turns by a random angle, and saturation and brightness are scaled
    (×0.6–1.3, ×0.75–1.2); 10 % of the time it becomes grey; half of the time it rotates by up
    to ±20°; its aspect ratio is stretched by up to 1.25×. A model pretrained on these must
    recognise a noun by its shape rather than by one drawing's colours, which is what lets it
    recognise the noun's held-out drawings (docs/miniworld.md).
    """
    im = Image.fromarray(np.ascontiguousarray(cut), "RGBA")
    alpha = im.getchannel("A")
    if rng.random() < 0.5:
        hsv = np.asarray(im.convert("RGB").convert("HSV")).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(0, 256)) % 256
        hsv[..., 1] *= rng.uniform(0.6, 1.3)
        hsv[..., 2] *= rng.uniform(0.75, 1.2)
        rgb = Image.fromarray(np.clip(hsv, 0, 255).astype(np.uint8), "HSV").convert("RGB")
        im = Image.merge("RGBA", (*rgb.split(), alpha))
    if rng.random() < 0.1:
        grey = im.convert("L")
        im = Image.merge("RGBA", (grey, grey, grey, alpha))
    if rng.random() < 0.5:
        im = im.rotate(float(rng.uniform(-20, 20)), resample=Image.BICUBIC, expand=True)
    stretch = float(np.exp(rng.uniform(-1, 1) * np.log(1.25)))
    w, h = im.size
    im = im.resize((max(1, round(w * stretch)), max(1, round(h / stretch))), Image.BICUBIC)
    box = im.getchannel("A").getbbox()
    return np.asarray(im.crop(box) if box else im)


def _augment_shape(rng: np.random.Generator, cut: np.ndarray) -> np.ndarray:
    """A copy of an RGBA cut-out that keeps the outline and the coarse layout but not the drawing's style.

    A noun's held-out drawings differ from its training ones in palette, shading and line work
    more than in silhouette, so each of these destroys one of those cues independently: 30 % of the
    time the colours are posterised to 2–4 levels of a random palette, 20 % the channels are permuted
    and possibly inverted, 25 % the cut-out is blurred at half resolution, and 30 % a rectangle of
    10–30 % of its box is erased (alpha too, so the mask stays exact).
    """
    rgb = cut[..., :3].astype(np.float32)
    alpha = cut[..., 3].copy()
    if rng.random() < 0.3:
        levels = int(rng.integers(2, 5))
        luminance = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        index = np.minimum((luminance / 256 * levels).astype(int), levels - 1)
        rgb = rng.uniform(0, 255, size=(levels, 3)).astype(np.float32)[index]
    if rng.random() < 0.2:
        rgb = rgb[..., rng.permutation(3)]
        invert = rng.random(3) < 0.5
        rgb[..., invert] = 255 - rgb[..., invert]
    out = np.dstack([np.clip(rgb, 0, 255).astype(np.uint8), alpha])
    if rng.random() < 0.25:
        im = Image.fromarray(out, "RGBA")
        w, h = im.size
        im = im.resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR).resize((w, h), Image.BILINEAR)
        blurred = np.asarray(im).copy()
        blurred[..., 3] = alpha  # the outline stays sharp: only the drawing inside it is softened
        out = blurred
    if rng.random() < 0.3:
        h, w = alpha.shape
        share = rng.uniform(0.1, 0.3)
        eh, ew = max(1, round(h * np.sqrt(share))), max(1, round(w * np.sqrt(share)))
        y, x = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
        if out[..., 3].sum() > out[y : y + eh, x : x + ew, 3].sum():  # never the whole object
            out[y : y + eh, x : x + ew, 3] = 0  # ``out`` is this function's own array
    return out


def _pick_word(rng: np.random.Generator, noun: Noun, synonym_rate: float = 0.2) -> str:
    """The noun itself, or one of its synonyms (20 %), so captions vary like real ones."""
    if noun.synonyms and rng.random() < synonym_rate:
        return noun.synonyms[int(rng.integers(len(noun.synonyms)))]
    return noun.name


def _place(rng, cut: np.ndarray, objects: list[PlacedObject], k: int, config: MiniWorldConfig):
    """Scale and position a cut-out; keep the first try that hides ≤ ``max_occlusion`` of every
    earlier object, else the best of :data:`PLACEMENT_TRIES`."""
    size = config.size
    best, best_visible = None, -1.0
    for _ in range(PLACEMENT_TRIES):
        extent = rng.uniform(*config.scale) * size * k**-0.4  # √(box area): thin objects get as much area
        ch, cw = cut.shape[:2]
        w, h = _fit((cw, ch), max(4.0, min(extent * max(cw, ch) / (cw * ch) ** 0.5, size)))
        rgba = np.asarray(Image.fromarray(np.ascontiguousarray(cut), "RGBA").resize((w, h), Image.LANCZOS))
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        solid = np.zeros((size, size), bool)
        solid[y : y + h, x : x + w] = rgba[..., 3] >= 128
        visible = min(((o.mask & ~solid).sum() / max(o.solid.sum(), 1) for o in objects), default=1.0)
        if visible > best_visible:
            best, best_visible = (rgba, (x, y), solid), visible
        if visible >= 1 - config.max_occlusion:
            break
    return best


# ----------------------------------------------------------------------------- encoding and writing
def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _jpeg(array: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class _Sample:
    key: str
    jpeg: bytes
    caption: str
    meta: dict
    class_mask: bytes  # uint8 PNG of class ids (0 = background)
    files: dict[str, bytes]  # relative path under OUT → bytes (masks, segmentation set)
    record: dict  # tags-manifest record (paths relative to the split folder)


_WORKER: dict = {}


def _init_worker(clipart, grammars, config) -> None:
    """``grammars``: the training and the held-out caption grammar (test splits)."""
    _WORKER.update(clipart=clipart, grammars=grammars, config=config)


def _render(job: tuple[str, int]) -> _Sample:
    split, index = job
    clipart, config, spec = _WORKER["clipart"], _WORKER["config"], SPLITS[split]
    rng = np.random.default_rng([config.seed, spec.seed, index])
    scene = compose_scene(rng, clipart, _WORKER["grammars"][spec.test], config, spec)
    key = _key(index, config.shard_size)
    vocabulary = clipart.vocabulary
    class_ids = np.zeros((config.size, config.size), np.uint8)
    objects = []
    for o in scene.objects:
        class_ids[o.mask] = o.noun + 1
        objects.append(
            {
                "noun": vocabulary[o.noun].name,
                "word": o.word,
                "class_id": o.noun + 1,
                "file": o.file,
                "style": drawing_style(o.file),
                "box": list(o.box),
                "flip": o.flip,
                "visible": round(float(o.mask.sum() / max(o.solid.sum(), 1)), 4),
            }
        )
    meta = {
        "key": key,
        "caption": scene.caption,
        "status": "success",
        "width": config.size,
        "height": config.size,
        "tags": scene.tags,
        "classes": {o.word: o.noun + 1 for o in scene.objects},
        "objects": objects,
        "background": scene.background,
        "seed": [config.seed, spec.seed, index],
    }
    record = {"image": f"images/{key}.jpg", "caption": scene.caption, "tags": scene.tags}
    files: dict[str, bytes] = {}
    if _has_masks(split, config):
        record["caption_mask"] = f"masks/{key}_caption.png"
        record["tag_masks"] = {word: f"masks/{key}_{word}.png" for word in scene.tags}
        files[f"{split}/masks/{key}_caption.png"] = _png((class_ids > 0).astype(np.uint8) * MASK_VALUE)
        for word in scene.tags:  # a plural word's mask is the union of its objects
            mask = np.any([o.mask for o in scene.objects if o.word == word], axis=0)
            files[f"{split}/masks/{key}_{word}.png"] = _png(mask.astype(np.uint8) * MASK_VALUE)
        files[f"seg/{split}/images/{key}.png"] = _png(scene.image)
        files[f"seg/{split}/masks/{key}.png"] = _png(class_ids)
    return _Sample(key, _jpeg(scene.image, config.jpeg_quality), scene.caption, meta, _png(class_ids), files, record)


def _has_masks(split: str, config: MiniWorldConfig) -> bool:
    return split != "train" or config.train_masks


def _key(index: int, shard_size: int) -> str:
    """img2dataset's key: shard number (5 digits) then the index inside the shard."""
    shard, inside = divmod(index, shard_size)
    return f"{shard:05d}{inside:0{len(str(shard_size - 1))}d}"


class _ShardWriter:
    """Tar shards as img2dataset writes them, byte-reproducible (fixed mtime, owner, mode).

    A shard is written to a hidden temporary file and renamed when complete.
    """

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        self.file = self.tar = None
        self.count = self.shard = 0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, members: Sequence[tuple[str, bytes]]) -> None:
        if self.tar is None:
            prefix = f".{self.shard:05d}."
            self.file = tempfile.NamedTemporaryFile(dir=self.folder, prefix=prefix, suffix=".tmp", delete=False)
            self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self.tar.addfile(info, io.BytesIO(data))
        self.count += 1
        if self.count == self.shard_size:
            self.close()

    def close(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        self.file.close()
        os.chmod(self.file.name, 0o644)  # temporary files are private; datasets are shared
        os.replace(self.file.name, self.folder / f"{self.shard:05d}.tar")
        self.tar, self.file, self.count = None, None, 0
        self.shard += 1


def _samples(split: str, n: int, init: tuple, workers: int) -> Iterator[_Sample]:
    jobs = [(split, i) for i in range(n)]
    if workers <= 1:
        _init_worker(*init)
        yield from map(_render, jobs)
        return
    with multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=init) as pool:
        yield from pool.imap(_render, jobs, chunksize=16)


def _write_split(
    out: Path, split: str, n: int, init: tuple, config: MiniWorldConfig, workers: int, progress: bool
) -> None:
    from tqdm import tqdm

    if n == 0:
        return
    shards = _ShardWriter(out / split / "shards", config.shard_size)
    pairs, records = [], []
    folders = [f"{split}/images"]
    if _has_masks(split, config):
        folders += [f"{split}/masks", f"seg/{split}/images", f"seg/{split}/masks"]
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
    samples = _samples(split, n, init, workers)
    for sample in tqdm(samples, total=n, desc=f"miniworld {split}", unit="img", disable=not progress):
        meta = json.dumps(sample.meta, ensure_ascii=False).encode()
        shards.add([(f"{sample.key}.jpg", sample.jpeg), (f"{sample.key}.txt", sample.caption.encode()),
                    (f"{sample.key}.json", meta), (f"{sample.key}.seg.png", sample.class_mask)])  # fmt: skip
        (out / split / "images" / f"{sample.key}.jpg").write_bytes(sample.jpeg)
        for rel, data in sample.files.items():
            (out / rel).write_bytes(data)
        pairs.append({"image": sample.record["image"], "caption": sample.caption})
        records.append(sample.record)
    shards.close()
    write_manifest(pairs, out / split / "pairs.jsonl")
    write_manifest(records, out / split / "tags.jsonl")


def _classes_txt(vocabulary: Sequence[Noun]) -> str:
    return "background\n" + "".join(",".join(n.words) + "\n" for n in vocabulary)


def _clear(out: Path, overwrite: bool) -> None:
    ours = (*SPLITS, "seg", "build.json", "README.txt")
    if out.exists() and not out.is_dir():
        raise TTDError(f"--out {out} is a file; choose a folder")
    present = [p for p in out.iterdir() if p.name != LOCK_NAME] if out.is_dir() else []
    if not present:
        return
    if not overwrite:
        raise TTDError(
            f"output folder {out} is not empty; pass --overwrite to replace a previous build, or choose another --out"
        )
    foreign = [p.name for p in present if p.name not in ours]
    if foreign:
        names = ", ".join(sorted(foreign)[:3])
        raise TTDError(f"output folder {out} holds files a mini-world build did not write ({names}); choose another --out")
    for p in present:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def build_miniworld(
    out: str | Path,
    config: MiniWorldConfig = MiniWorldConfig(),
    source: str | Path = DEFAULT_SOURCE,
    vocabulary: str | Path | None = None,
    grammar: str | Path | None = None,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    emoji: str | Path | None = None,
) -> dict:
    """Build the mini-world into ``out`` and return a summary (counts, seconds, images/s).

    ``vocabulary``: a committed vocabulary by name (``emoji``, the default: mini-world II, whose
    drawings come from the iconify sets in the ``emoji`` folder; ``openclipart``: mini-world I,
    from the clip-art folder ``source``) or a JSON file. ``workers`` > 1 renders in that many
    processes; the bytes written do not depend on it. ``build.json`` is written last: its presence
    marks a complete build.
    """
    out = Path(out)
    nouns = load_vocabulary(vocabulary, config.nouns)
    caption_grammar = load_grammar(grammar, nouns)
    config.validate(max(caption_grammar.templates))
    missing = [k for k in range(config.min_objects, config.max_objects + 1) if k not in caption_grammar.templates]
    if missing:
        raise TTDError(f"caption grammar has no templates for {missing} object(s); lower --objects")
    heldout_grammar = load_grammar(grammar, nouns, heldout=True) if config.test else caption_grammar
    missing = [k for k in range(1, TEST_OBJECTS[1] + 1) if k not in heldout_grammar.templates]
    if config.test and missing:
        raise TTDError(f"caption grammar's 'heldout' section has no templates for {missing} object(s)")
    if config.min_objects > len(nouns):
        raise TTDError(f"--objects asks for at least {config.min_objects} distinct nouns but only {len(nouns)} are in use")
    if len(nouns) > 254:
        raise TTDError(f"{len(nouns)} nouns do not fit uint8 class ids (at most 254); pass --nouns")
    if config.heldout_styles is None:
        config = replace(config, heldout_styles=vocabulary_heldout_styles(vocabulary))
    clipart = ClipArt(source, nouns, config.size, emoji, config.heldout_styles)  # every drawing, before writing
    _clear(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)

    init = (clipart, (caption_grammar, heldout_grammar), config)
    start = time.perf_counter()
    for split in SPLITS:
        _write_split(out, split, _split_size(config, split), init, config, workers, progress)
    seconds = time.perf_counter() - start
    for split in SPLITS:
        if (out / "seg" / split / "images").is_dir():
            atomic_write_bytes(out / "seg" / split / "classes.txt", _classes_txt(nouns).encode())

    vocab_path = vocabulary_path(vocabulary)
    grammar_path = Path(grammar) if grammar else ASSETS / "captions.json"
    build = {
        "format": FORMAT,
        "config": asdict(config),
        "source": _read_json(vocab_path, "vocabulary").get("source", {"root": str(source)}),
        "vocabulary_sha256": hashlib.sha256(vocab_path.read_bytes()).hexdigest(),
        "grammar_sha256": hashlib.sha256(grammar_path.read_bytes()).hexdigest(),
        "nouns": [n.name for n in nouns],
        "splits": {split: _split_size(config, split) for split in SPLITS},
        "heldout_styles": list(config.heldout_styles),
        "heldout_files": {n.name: list(clipart.instances(i, "heldout")) for i, n in enumerate(nouns)},
        "drawings": {ref: clipart.info[ref] for n in nouns for ref in n.files},
    }
    atomic_write_bytes(out / "README.txt", _readme(config, nouns, clipart.info).encode())
    save_json(build, out / "build.json")
    total = sum(_split_size(config, split) for split in SPLITS)
    rate = total / max(seconds, 1e-9)
    return {"out": str(out), "images": total, "seconds": seconds, "images_per_s": rate, "nouns": len(nouns)}


def _readme(config: MiniWorldConfig, nouns: Sequence[Noun], info: dict[str, dict]) -> str:
    mask_splits = "every split" if config.train_masks else "every split but train (built with --no-train-masks)"
    changes = [*(["recoloured, rotated, stretched"] if config.augment else []),
               *(["repainted, blurred, partly erased"] if config.shape_augment else [])]  # fmt: skip
    augment = f"augmented cut-outs ({'; '.join(changes)})" if changes else "unaugmented cut-outs"
    if config.heldout_styles:
        heldout = f"drawings of the held-out styles {', '.join(config.heldout_styles)} (in no training image)"
        seen = "drawings of the training styles"
    else:
        heldout, seen = "each noun's held-out drawings (never in train or val)", "training drawings"
    credits: dict[tuple[str, str, str], None] = {}
    for ref in (f for n in nouns for f in n.files):
        d = info[ref]
        credits[(d["style"], d.get("author", ""), d["licence"])] = None
    credit_lines = "".join(f"  {style}: {author + ', ' if author else ''}{licence}\n" for style, author, licence in credits)
    return f"""TTD mini-world ({FORMAT}), built by `ttd data miniworld` (docs/miniworld.md).
{config.train} training and {config.val} validation images ({config.min_objects}-{config.max_objects} objects,
{augment}, the training drawings of each noun), and {config.test} test images twice:
test/ draws only {heldout}, test-seen/ the same scenes with {seen};
both with {TEST_OBJECTS[0]}-{TEST_OBJECTS[1]} objects, a noun sometimes shown twice and named by its plural, and the
caption wording of the grammar's 'heldout' section.
{config.size}x{config.size} pixels, {len(nouns)} nouns, seed {config.seed}. Same options and software versions give the same bytes.

train/, val/, test/ and test-seen/
  shards/NNNNN.tar      WebDataset shards as img2dataset writes them: KEY.jpg (image), KEY.txt (caption),
                        KEY.json (caption, tags, classes, objects with box/file/visibility) and
                        KEY.seg.png (uint8 class ids, as in seg/); {config.shard_size} samples per shard
  images/KEY.jpg        the same JPEG images
  pairs.jsonl           image-text pairs manifest: {{"image", "caption"}}
  tags.jsonl            multi-tag manifest, also the caption-mask manifest: {{"image", "caption",
                        "tags" (the depicted words, as written in the caption), "caption_mask", "tag_masks"}}
  masks/KEY_caption.png union of the depicted objects (0 = background, 1 = object)
  masks/KEY_WORD.png    the visible part of the object(s) named WORD (occlusion applied)
seg/SPLIT/              open-vocabulary segmentation set of each split, generic layout:
  images/KEY.png        the images, lossless
  masks/KEY.png         uint8 class ids: 0 = background, i = line i of classes.txt (255 = ignore, unused)
  classes.txt           one class per line from index 0 = background; synonyms comma-separated
Masks and seg/ are written for {mask_splits}.
build.json              the options, the drawings' source, digests of the vocabulary and grammar, the
                        held-out drawings of each noun, and every drawing's style, name and licence.

Drawings (style: author, licence; each image is a derived work of the drawings it shows):
{credit_lines}Backgrounds and captions: generated.
"""
