"""The mini-world builder: determinism, masks versus pasted pixels, manifests, layouts, errors.

A fake clip-art source (pure-colour RGBA shapes) stands in for Debian's openclipart-png, so these
tests need no system package; one test uses the real package when it is installed.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ttd.cli import main
from ttd.data import read_manifest
from ttd.data.miniworld import (
    DEFAULT_SOURCE,
    ClipArt,
    MiniWorldConfig,
    build_miniworld,
    compose_scene,
    load_grammar,
    load_vocabulary,
    parse_objects,
    plural,
)
from ttd.errors import TTDError
from ttd.method.tags import candidate_tags

# Pure colours: a background (HSV saturation ≤ 0.85, plus noise) or a blend with another object
# never produces them exactly, so an exact colour match means "this object is visible here".
COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "bee": (0, 0, 255), "hammer": (255, 0, 255)}
SHAPES = {"cat": "ellipse", "dog": "rectangle", "bee": "polygon", "hammer": "ellipse"}


def _shape(path: Path, noun: str, size: tuple[int, int]) -> None:
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    w, h = size
    box = (w // 8, h // 8, w - w // 8, h - h // 8)
    colour = (*COLOURS[noun], 255)
    if SHAPES[noun] == "polygon":
        draw.polygon([(w // 2, h // 10), (w - w // 10, h - h // 10), (w // 10, h - h // 10)], fill=colour)
    else:
        getattr(draw, SHAPES[noun])(box, fill=colour)
    im.save(path)


@pytest.fixture(scope="module")
def fake_world(tmp_path_factory) -> tuple[Path, Path]:
    """A clip-art folder with two files per noun and a vocabulary pointing at them."""
    root = tmp_path_factory.mktemp("clipart")
    nouns = {}
    synonyms = {"cat": ["kitten"], "dog": ["puppy"], "bee": [], "hammer": []}
    for noun in COLOURS:
        (root / "art" / noun).mkdir(parents=True)
        files = []
        for i, size in enumerate([(90, 60), (50, 80)]):
            rel = f"art/{noun}/{noun}_{i}.png"
            _shape(root / rel, noun, size)
            files.append(rel)
        nouns[noun] = {"synonyms": synonyms[noun], "files": files}
    vocab = root / "vocabulary.json"
    vocab.write_text(json.dumps({"source": {"name": "fake"}, "nouns": nouns}))
    return root, vocab


def _build(out: Path, fake_world, **overrides) -> dict:
    root, vocab = fake_world
    workers = overrides.pop("workers", 0)
    # pure colours identify objects only in unaugmented pastes (test_augmented_pastes covers the other case)
    config = MiniWorldConfig(**{"train": 12, "val": 8, "test": 6, "size": 64, "shard_size": 5, "augment": False, **overrides})
    return build_miniworld(out, config, source=root, vocabulary=vocab, workers=workers, progress=False)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory, fake_world) -> Path:
    out = tmp_path_factory.mktemp("world") / "mw"
    _build(out, fake_world, size=96)
    return out


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_same_seed_same_bytes_with_any_worker_count(tmp_path, fake_world):
    _build(tmp_path / "a", fake_world)
    _build(tmp_path / "b", fake_world, workers=2)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 50
    assert [k for k in a if a[k] != b[k]] == []
    _build(tmp_path / "c", fake_world, seed=1)
    c = _tree(tmp_path / "c")
    assert c["train/pairs.jsonl"] != a["train/pairs.jsonl"]
    assert c["val/images/000000.jpg"] != a["val/images/000000.jpg"]


def test_validation_split_does_not_depend_on_training_size(tmp_path, fake_world):
    _build(tmp_path / "a", fake_world, train=3)
    _build(tmp_path / "b", fake_world, train=7)
    val_a = {k: v for k, v in _tree(tmp_path / "a").items() if k.startswith(("val/", "seg/val/"))}
    val_b = {k: v for k, v in _tree(tmp_path / "b").items() if k.startswith(("val/", "seg/val/"))}
    assert val_a == val_b


def test_masks_follow_the_pasted_pixels_after_occlusion(world):
    """Exact object colour ⇒ inside that word's mask; mask interior ⇒ that object's colour."""
    for split in ("train", "val"):
        for rec in read_manifest(world / split / "tags.jsonl"):
            image = np.asarray(Image.open(world / "seg" / split / "images" / (rec.image.stem + ".png"))).astype(int)
            meta = json.loads(_meta(world, split, rec.image.stem))
            nouns = {o["word"]: o["noun"] for o in meta["objects"]}
            masks = {w: _mask(p) > 0 for w, p in rec.tag_masks.items()}
            for word, mask in masks.items():
                colour = np.array(COLOURS[nouns[word]])
                exact = (image == colour).all(-1)
                assert exact.any(), f"{word} not visible at all"
                assert not (exact & ~mask).any(), f"{word}: pixels of its colour lie outside its mask"
                interior = _erode(mask, 3)
                close = (np.abs(image - colour) <= 2).all(-1)
                assert (close | ~interior).all(), f"{word}: mask covers pixels of another colour (occlusion ignored?)"
            stack = np.stack(list(masks.values()))
            assert stack.sum(0).max() <= 1, "visible masks must not overlap"
            assert np.array_equal(stack.any(0), _mask(rec.caption_mask) > 0)
    assert any(o["visible"] < 1 for split in ("train", "val") for o in _all_objects(world, split)), "no occlusion tested"


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out &= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def _meta(world: Path, split: str, key: str) -> bytes:
    shard = int(key[:5])
    with tarfile.open(world / split / "shards" / f"{shard:05d}.tar") as tar:
        return tar.extractfile(f"{key}.json").read()


def _all_objects(world: Path, split: str) -> list[dict]:
    objects = []
    for shard in sorted((world / split / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    objects += json.load(tar.extractfile(m))["objects"]
    return objects


def test_scene_masks_are_own_alpha_minus_later_pastes(fake_world):
    root, vocab_path = fake_world
    vocabulary = load_vocabulary(vocab_path)
    config = MiniWorldConfig(size=64, min_objects=3, max_objects=3, max_occlusion=0.9)
    clipart, grammar = ClipArt(root, vocabulary, 64), load_grammar(None, vocabulary)
    for seed in range(10):
        scene = compose_scene(np.random.default_rng(seed), clipart, grammar, config)
        for i, o in enumerate(scene.objects):
            later = np.zeros_like(o.solid)
            for j in scene.objects[i + 1 :]:
                later |= j.solid
            assert np.array_equal(o.mask, o.solid & ~later)
            x0, y0, x1, y1 = o.box
            inside = np.zeros_like(o.solid)
            inside[y0:y1, x0:x1] = True
            assert not (o.solid & ~inside).any()
        assert len({o.noun for o in scene.objects}) == len(scene.objects), "one object per noun"


def test_manifests_validate_and_tags_are_the_depicted_caption_words(world, fake_world):
    vocabulary = load_vocabulary(fake_world[1])
    noun_of = {w: n.name for n in vocabulary for w in n.words}
    all_words = set(noun_of)
    for split in ("train", "val"):
        pairs = read_manifest(world / split / "pairs.jsonl")
        tags = read_manifest(world / split / "tags.jsonl")
        assert [p.image for p in pairs] == [t.image for t in tags]
        assert len(pairs) == {"train": 12, "val": 8}[split]
        for rec in tags:
            words = candidate_tags(rec.caption)
            assert 1 <= len(rec.tags) <= 3 and set(rec.tags) <= set(words)
            mentioned = set(words) & all_words - set(rec.tags)  # the grammar's undepicted noun, if any
            assert len(mentioned) <= 1 and not {noun_of[w] for w in mentioned} & {noun_of[t] for t in rec.tags}
            assert list(rec.tag_masks) == list(rec.tags)
            assert Image.open(rec.image).size == (96, 96)


def test_segmentation_layout_class_ids_match_the_manifest_tags(world, fake_world):
    vocabulary = load_vocabulary(fake_world[1])
    for split in ("train", "val"):
        root = world / "seg" / split
        lines = (root / "classes.txt").read_text().splitlines()
        assert lines[0] == "background"
        assert lines[1:] == [",".join(n.words) for n in vocabulary]
        word_to_id = {w: i for i, line in enumerate(lines) for w in line.split(",")}
        for rec in read_manifest(world / split / "tags.jsonl"):
            seg = _mask(root / "masks" / (rec.image.stem + ".png"))
            assert seg.dtype == np.uint8 and (root / "images" / (rec.image.stem + ".png")).is_file()
            assert set(np.unique(seg)) - {0} == {word_to_id[t] for t in rec.tags}
            for word, path in rec.tag_masks.items():
                assert np.array_equal(seg == word_to_id[word], _mask(path) > 0)


def test_shards_read_back_with_webdataset(world):
    import webdataset as wds

    pairs = {p.image.stem: p.caption for p in read_manifest(world / "train" / "pairs.jsonl")}
    shards = sorted((world / "train" / "shards").glob("*.tar"))
    assert [s.name for s in shards] == ["00000.tar", "00001.tar", "00002.tar"]  # 12 samples, 5 per shard
    samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False))
    assert [s["__key__"] for s in samples] == list(pairs)
    for s in samples:
        assert set(s) >= {"jpg", "txt", "json", "seg.png"}
        assert s["txt"].decode() == pairs[s["__key__"]]
        meta = json.loads(s["json"])
        assert meta["key"] == s["__key__"] and meta["caption"] == pairs[s["__key__"]]
        assert s["jpg"] == (world / "train" / "images" / f"{s['__key__']}.jpg").read_bytes()
        seg = np.asarray(Image.open(io.BytesIO(s["seg.png"])))
        assert set(np.unique(seg)) - {0} == set(meta["classes"].values())
    with tarfile.open(shards[0]) as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}


def test_no_train_masks_keeps_tags_but_writes_masks_for_val_only(tmp_path, fake_world):
    _build(tmp_path / "w", fake_world, train_masks=False)
    train = read_manifest(tmp_path / "w" / "train" / "tags.jsonl")
    assert all(r.tags and r.caption_mask is None and not r.tag_masks for r in train)
    assert not (tmp_path / "w" / "train" / "masks").exists() and not (tmp_path / "w" / "seg" / "train").exists()
    assert all(r.caption_mask for r in read_manifest(tmp_path / "w" / "val" / "tags.jsonl"))


def test_captions_use_articles_and_vary(fake_world):
    vocabulary = load_vocabulary(fake_world[1])
    grammar = load_grammar(None, vocabulary)
    rng = np.random.default_rng(0)
    captions = [grammar.caption(rng, ["egg", "cat"]) for _ in range(200)]
    assert len(set(captions)) > 150
    assert not any(" a egg" in c or c.startswith("a egg") for c in captions)
    assert all(c.index("egg") < c.index("cat") for c in captions)


def test_captions_may_mention_an_undepicted_noun(fake_world):
    vocabulary = load_vocabulary(fake_world[1])
    grammar = load_grammar(None, vocabulary)
    rng = np.random.default_rng(0)
    captions = [grammar.caption(rng, ["egg"], mention="cat") for _ in range(400)]
    share = sum("cat" in c.split() for c in captions) / len(captions)
    assert 0.4 < share < 0.6  # the committed grammar mentions one in about half of the captions
    assert all(c.count("egg") == 1 for c in captions)
    assert not any("{noun}" in c for c in grammar.caption(rng, ["egg"]) for _ in range(50))


def test_committed_vocabulary_and_grammar():
    vocabulary = load_vocabulary()
    assert len(vocabulary) >= 50
    assert all(len(n.files) >= 2 and all(not f.startswith("/") for f in n.files) for n in vocabulary)
    expected = {"cat", "dog", "horse", "apple", "car", "bus", "airplane", "guitar", "cup", "house", "tree"}
    assert expected <= {n.name for n in vocabulary}
    load_grammar(None, vocabulary)  # no grammar word is a vocabulary word


def test_bad_inputs_give_one_line_errors(tmp_path, fake_world, capsys):
    root, vocab = fake_world
    with pytest.raises(TTDError, match=r"^clip-art source folder not found: .*apt-get install -y openclipart-png"):
        build_miniworld(tmp_path / "o", MiniWorldConfig(train=1, val=1), source=tmp_path / "nope", vocabulary=vocab)
    with pytest.raises(TTDError, match="--objects must be N or MIN-MAX"):
        parse_objects("one")
    with pytest.raises(TTDError, match=r"1 ≤ MIN ≤ MAX ≤ 3, got 2-4"):
        build_miniworld(tmp_path / "o", MiniWorldConfig(min_objects=2, max_objects=4), source=root, vocabulary=vocab)
    with pytest.raises(TTDError, match="at least 3 distinct nouns but only 2 are in use"):
        build_miniworld(tmp_path / "o", MiniWorldConfig(min_objects=3, nouns=("cat", "dog")), source=root, vocabulary=vocab)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TTDError, match="is a file; choose a folder"):
        build_miniworld(tmp_path / "file", MiniWorldConfig(train=1, val=1), source=root, vocabulary=vocab)
    with pytest.raises(TTDError, match="unknown noun"):
        load_vocabulary(vocab, ["cat", "unicorn"])
    bad = tmp_path / "bad.json"
    nouns = {"cat": {"synonyms": ["pet"], "files": ["a.png"]}, "dog": {"synonyms": ["pet"], "files": ["b.png"]}}
    bad.write_text(json.dumps({"nouns": nouns}))
    with pytest.raises(TTDError, match="word 'pet' belongs to both 'cat' and 'dog'"):
        load_vocabulary(bad)
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({"nouns": {"beach": {"files": ["a.png"]}}}))
    with pytest.raises(TTDError, match=r"uses vocabulary word\(s\) beach"):
        load_grammar(None, load_vocabulary(clash))
    _build(tmp_path / "w", fake_world, train=1, val=1)
    with pytest.raises(TTDError, match="is not empty; pass --overwrite"):
        _build(tmp_path / "w", fake_world, train=1, val=1)

    capsys.readouterr()
    cli = ["data", "miniworld", "--out", str(tmp_path / "x"), "--vocabulary", str(vocab)]
    assert main([*cli, "--source", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ttd data: error: clip-art source folder not found") and err.count("\n") == 1
    assert main([*cli, "--size", "16", "--source", str(root)]) == 2
    assert "--size must be between 32 and 512" in capsys.readouterr().err


def test_cli_builds_and_overwrites(tmp_path, fake_world, capsys):
    root, vocab = fake_world
    args = ["data", "miniworld", "--out", str(tmp_path / "w"), "--source", str(root), "--vocabulary", str(vocab)]
    args += ["--train", "3", "--val", "2", "--test", "0", "--size", "32", "--objects", "2", "--nouns", "cat,dog,bee", "--quiet"]
    assert main(args) == 0
    assert "mini-world: 5 images (3 nouns)" in capsys.readouterr().out
    build = json.loads((tmp_path / "w" / "build.json").read_text())
    assert build["nouns"] == ["cat", "dog", "bee"] and build["config"]["max_objects"] == 2
    assert all(len(r.tags) == 2 for r in read_manifest(tmp_path / "w" / "val" / "tags.jsonl"))
    assert main(args + ["--seed", "3"]) == 2
    assert main(args + ["--seed", "3", "--overwrite"]) == 0
    assert json.loads((tmp_path / "w" / "build.json").read_text())["config"]["seed"] == 3


def test_held_out_files_never_reach_train_or_val(world, fake_world):
    build = json.loads((world / "build.json").read_text())
    heldout = {f for files in build["heldout_files"].values() for f in files}
    assert len(heldout) == 4 and all(len(files) == 1 for files in build["heldout_files"].values())
    for split in ("train", "val", "test", "test-seen"):
        used = {o["file"] for meta in _shard_metas(world / split / "shards") for o in meta["objects"]}
        assert used and (used <= heldout if split == "test" else not used & heldout), split


def _shard_metas(folder: Path) -> list[dict]:
    metas = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            metas += [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    return metas


def test_test_split_composition_plurals_and_union_masks(world):
    records = read_manifest(world / "test" / "tags.jsonl")
    assert len(records) == 6 and len(read_manifest(world / "test-seen" / "tags.jsonl")) == 6
    for rec in records:  # tags are the depicted caption words; the caption mask is their union
        assert list(rec.tags) == [t for t in candidate_tags(rec.caption) if t in rec.tags]
        union = np.any([_mask(p) > 0 for p in rec.tag_masks.values()], axis=0)
        assert (union == (_mask(rec.caption_mask) > 0)).all()
    metas = _shard_metas(world / "test" / "shards")
    assert {len(m["objects"]) for m in metas} <= {2, 3, 4}  # the fake objects rarely hide each other
    for meta in metas:  # a noun shown twice is named once, by its plural
        for noun in {o["noun"] for o in meta["objects"]}:
            words = {o["word"] for o in meta["objects"] if o["noun"] == noun}
            count = sum(o["noun"] == noun for o in meta["objects"])
            assert len(words) == 1 and (count == 1 or words.pop() in {plural(noun), "kittens", "puppies"})


def test_plurals():
    assert [plural(w) for w in ("cat", "bus", "cherry", "toy", "sheep", "loaf", "glasses")] == [
        "cats", "buses", "cherries", "toys", "sheep", "loaves", "glasses"]  # fmt: skip


def test_augmented_pastes_recolour_objects_and_keep_exact_masks(tmp_path, fake_world):
    def pure_share(world: Path) -> float:
        """Share of object pixels that keep a drawing's exact colour."""
        pure = total = 0
        for rec in read_manifest(world / "val" / "tags.jsonl"):
            image, mask = np.asarray(Image.open(world / "seg" / "val" / "images" / f"{rec.image.stem}.png")), _mask(rec.caption_mask) > 0
            assert mask.any() and not mask.all()
            exact = np.any([(image == c).all(-1) for c in COLOURS.values()], axis=0)
            pure, total = pure + (exact & mask).sum(), total + mask.sum()
        return pure / total

    _build(tmp_path / "plain", fake_world, train=0, val=8, test=0)
    _build(tmp_path / "aug", fake_world, train=0, val=8, test=0, augment=True)
    assert pure_share(tmp_path / "plain") > 0.8 and pure_share(tmp_path / "aug") < 0.6


def test_shape_augmentation_repaints_and_erases_but_never_adds_object_pixels():
    from ttd.data.miniworld import _augment_shape

    yy, xx = np.mgrid[:40, :30]
    cut = np.dstack([xx * 8, yy * 6, (xx + yy) * 4, np.where((yy - 20) ** 2 + (xx - 15) ** 2 < 180, 255, 0)]).astype(np.uint8)
    outputs = [_augment_shape(np.random.default_rng(seed), cut) for seed in range(60)]
    assert all(o.shape == cut.shape and o.dtype == np.uint8 for o in outputs)
    assert all(not (o[..., 3] > cut[..., 3]).any() for o in outputs)  # the mask can only lose pixels
    inside = cut[..., 3] > 0
    erased = [(o[..., 3][inside] == 0).sum() / inside.size for o in outputs]  # share of the cut-out's box
    palettes = [len(np.unique(o[..., :3][inside], axis=0)) for o in outputs]
    assert 0.15 < np.mean([e > 0 for e in erased]) < 0.5 and max(erased) < 0.32  # ~30 %, ≤ 30 % of the box
    assert 0.15 < np.mean([n <= 4 for n in palettes]) < 0.5  # posterised ~30 % of the time (the drawing has hundreds)
    again = _augment_shape(np.random.default_rng(7), cut)
    assert np.array_equal(again, outputs[7])  # the world's seed decides everything


def test_shape_augmentation_leaves_the_test_splits_alone(tmp_path, fake_world):
    _build(tmp_path / "a", fake_world, train=0, augment=True)
    _build(tmp_path / "b", fake_world, train=0, augment=True, shape_augment=True)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    differ = {k.split("/")[0] if not k.startswith("seg/") else "/".join(k.split("/")[:2]) for k in a if a[k] != b.get(k)}
    assert "val" in differ and not any(d.startswith("test") or d.startswith("seg/test") for d in differ)
    assert "(recoloured, rotated, stretched; repainted, blurred, partly erased)" in (tmp_path / "b" / "README.txt").read_text()


@pytest.mark.skipif(not DEFAULT_SOURCE.is_dir(), reason="openclipart-png not installed (apt-get install -y openclipart-png)")
def test_real_clipart_package(tmp_path):
    summary = build_miniworld(tmp_path / "w", MiniWorldConfig(train=4, val=4, test=4, size=64, shard_size=4), progress=False)
    assert summary["images"] == 16 and summary["nouns"] >= 50
    for split in ("train", "val", "test", "test-seen"):
        for rec in read_manifest(tmp_path / "w" / split / "tags.jsonl"):
            assert Image.open(rec.image).size == (64, 64) and rec.tags
