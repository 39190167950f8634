"""Mini-world II: iconify emoji sets as drawing sources, splits by style, and the committed vocabulary.

The emoji sets here are the tiny committed fixtures in ``tests/fixtures/iconify`` (plain shapes);
one is packed as ``npm pack`` would, so both source layouts are read.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("resvg_py")

from ttd.cli import main  # noqa: E402
from ttd.data.drawings import IconSet, drawing_style, find_icon_sets  # noqa: E402
from ttd.data.miniworld import MiniWorldConfig, build_miniworld, load_vocabulary, vocabulary_heldout_styles  # noqa: E402
from ttd.errors import TTDError  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "iconify"
VOC_CLASSES = ("airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dog", "horse",
               "motorcycle", "person", "plant", "sheep", "train", "television")  # fmt: skip


def _npm_pack(doc_path: Path, out: Path) -> Path:
    """An archive laid out like `npm pack @iconify-json/NAME`: licence in info.json, not icons.json."""
    doc = json.loads(doc_path.read_text())
    info = {"license": doc.pop("info")["license"], "author": {"name": "Gamma Test Set"}}
    files = {"package/icons.json": doc, "package/info.json": info, "package/package.json": {"version": "9.9.9"}}
    archive = out / f"iconify-json-{doc['prefix']}-9.9.9.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, content in files.items():
            data = json.dumps(content).encode()
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            tar.addfile(entry, io.BytesIO(data))
    return archive


@pytest.fixture(scope="module")
def emoji_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("emoji")
    shutil.copy(FIXTURES / "alpha.json", folder)
    (folder / "beta").mkdir()
    shutil.copy(FIXTURES / "beta.json", folder / "beta" / "icons.json")
    _npm_pack(FIXTURES / "gamma.json", folder)
    return folder


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory) -> Path:
    nouns = {n: {"synonyms": [], "files": [f"{s}:{n}" for s in ("alpha", "beta", "gamma")]} for n in ("cat", "dog", "bee", "hammer")}
    path = tmp_path_factory.mktemp("vocab") / "vocabulary.json"
    path.write_text(json.dumps({"source": {"name": "fixtures"}, "heldout_styles": ["gamma"], "nouns": nouns}))
    return path


def _config(**overrides) -> MiniWorldConfig:
    return MiniWorldConfig(**{"train": 10, "val": 4, "test": 6, "size": 48, "shard_size": 8, **overrides})


def test_sets_are_read_from_json_folders_and_npm_archives(emoji_dir):
    sets = find_icon_sets(emoji_dir)
    assert set(sets) == {"alpha", "beta", "gamma"}
    assert sets["alpha"].licence["spdx"] == "Apache-2.0"
    assert sets["gamma"].licence["spdx"] == "MIT" and sets["gamma"].version == "9.9.9"  # from info.json, package.json
    assert set(find_icon_sets(emoji_dir, {"beta"})) == {"beta"}


def test_rendering_follows_the_icon_box_and_alias_flips(emoji_dir):
    sets = find_icon_sets(emoji_dir)
    wide = sets["gamma"].render("dog", 48)
    assert wide.shape == (32, 48, 4)  # a 24 × 16 box at longer side 48
    square = sets["alpha"].render("hammer", 32)
    flipped = sets["alpha"].render("kitty", 32)  # alias of cat with hFlip
    assert square.shape == (32, 32, 4)
    np.testing.assert_array_equal(flipped, sets["alpha"].render("cat", 32)[:, ::-1])
    red = square[..., 3] > 200
    assert red.any() and (square[red, 0] > 150).all()  # the set's colour, opaque where drawn


def test_unknown_icon_and_alias_loop_are_one_line_errors():
    s = IconSet("x", {"a": {"body": ""}}, {"b": {"parent": "c"}, "c": {"parent": "b"}})
    with pytest.raises(TTDError, match="no icon 'zzz'"):
        s.resolve("zzz")
    with pytest.raises(TTDError, match="alias loop"):
        s.resolve("b")


def test_held_out_styles_never_reach_train_or_val(tmp_path, emoji_dir, vocabulary):
    out = tmp_path / "w"
    build_miniworld(out, _config(), emoji=emoji_dir, vocabulary=vocabulary, progress=False, workers=0)
    build = json.loads((out / "build.json").read_text())
    assert build["heldout_styles"] == ["gamma"]
    assert build["drawings"]["beta:cat"] == {"style": "beta", "name": "cat", "licence": "CC-BY-4.0",
                                             "author": "Beta Test Set", "package": "@iconify-json/beta"}  # fmt: skip
    styles = {}
    for split in ("train", "val", "test", "test-seen"):
        with tarfile.open(out / split / "shards" / "00000.tar") as tar:
            metas = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
        styles[split] = {o["style"] for meta in metas for o in meta["objects"]}
        assert all(drawing_style(o["file"]) == o["style"] for meta in metas for o in meta["objects"])
    assert styles["test"] == {"gamma"}
    assert "gamma" not in styles["train"] | styles["val"] | styles["test-seen"]
    readme = (out / "README.txt").read_text()
    assert "held-out styles gamma" in readme and "alpha: Alpha Test Set, Apache-2.0" in readme


def test_heldout_styles_option_overrides_the_vocabulary(tmp_path, emoji_dir, vocabulary):
    out = tmp_path / "w"
    build_miniworld(out, _config(heldout_styles=("alpha",), train=6, val=0, test=4), emoji=emoji_dir,
                    vocabulary=vocabulary, progress=False)  # fmt: skip
    with tarfile.open(out / "test" / "shards" / "00000.tar") as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    assert {o["style"] for meta in metas for o in meta["objects"]} == {"alpha"}


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "pass --emoji DIR"),
        (["--emoji", "{missing}"], "emoji folder not found"),
        (["--emoji", "{only_alpha}"], "run `npm pack @iconify-json/beta && npm pack @iconify-json/gamma` there"),
        (["--emoji", "{emoji}", "--heldout-styles", "delta"], "held-out style(s) delta draw no noun"),
        (["--emoji", "{emoji}", "--heldout-styles", "alpha,beta,gamma"], "every style is held out"),
    ],
)
def test_bad_sources_are_one_line_errors(tmp_path, emoji_dir, vocabulary, capsys, args, message):
    only_alpha = tmp_path / "alpha-only"
    only_alpha.mkdir()
    shutil.copy(FIXTURES / "alpha.json", only_alpha)
    paths = {"missing": tmp_path / "nope", "only_alpha": only_alpha, "emoji": emoji_dir}
    argv = ["data", "miniworld", "--out", str(tmp_path / "w"), "--vocabulary", str(vocabulary),
            "--train", "2", "--val", "0", "--test", "2", "--quiet", *(a.format(**paths) for a in args)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "w" / "build.json").exists()


def test_committed_emoji_vocabulary():
    nouns = load_vocabulary("emoji")
    names = {n.name for n in nouns}
    assert len(nouns) >= 100
    assert set(VOC_CLASSES) <= names  # every VOC class an emoji set draws, under its caption name
    sets = {"noto", "noto-v1", "twemoji", "openmoji", "fluent-emoji", "fluent-emoji-flat", "emojione", "streamline-emojis"}
    assert {drawing_style(f) for n in nouns for f in n.files} == sets  # those eight sets and no other
    heldout = vocabulary_heldout_styles("emoji")
    assert len(heldout) == 2 and set(heldout) <= sets
    assert all(n.instances("train", heldout) and n.instances("heldout", heldout) for n in nouns)
    assert sum(len(n.files) >= 7 for n in nouns) >= 100
