"""The JSONL manifest: round trip and validation errors that name the line and field."""

import json

import pytest
from PIL import Image

from ttd.data import read_manifest, write_manifest
from ttd.errors import TTDError


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "a.png")
    Image.new("L", (4, 4)).save(tmp_path / "img" / "a_mask.png")
    return tmp_path


def test_round_trip_resolves_relative_paths(folder):
    rows = [{"image": "img/a.png", "caption": "a cat on grass", "tags": ["cat", "grass"],
             "caption_mask": "img/a_mask.png", "tag_masks": {"cat": "img/a_mask.png"}}]
    path = write_manifest(rows, folder / "m.jsonl")
    (rec,) = read_manifest(path)
    assert rec.image == folder / "img" / "a.png"
    assert rec.tags == ("cat", "grass") and rec.caption_mask == folder / "img" / "a_mask.png"
    assert rec.tag_masks == {"cat": folder / "img" / "a_mask.png"} and rec.line == 1


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", r"m.jsonl:2: invalid JSON"),
        ('{"caption": "x"}', r"m.jsonl:2: missing required field 'image'"),
        ('{"image": "img/a.png", "caption": "  "}', r"m.jsonl:2: field 'caption' must be a non-empty string"),
        ('{"image": "img/a.png", "caption": "x", "tags": "cat"}', r"m.jsonl:2: field 'tags' must be a list"),
        ('{"image": "img/b.png", "caption": "x"}', r"m.jsonl:2: image file not found: .*b.png"),
        ('[1, 2]', r"m.jsonl:2: expected a JSON object"),
    ],
)
def test_errors_name_line_and_field(folder, line, message):
    good = json.dumps({"image": "img/a.png", "caption": "ok"})
    (folder / "m.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(TTDError, match=message):
        read_manifest(folder / "m.jsonl")


def test_missing_and_empty_manifests(folder):
    with pytest.raises(TTDError, match="manifest not found"):
        read_manifest(folder / "nope.jsonl")
    (folder / "empty.jsonl").write_text("\n")
    with pytest.raises(TTDError, match="has no records"):
        read_manifest(folder / "empty.jsonl")


def test_require_names_missing_field(folder):
    (folder / "m.jsonl").write_text(json.dumps({"image": "img/a.png", "caption": "ok"}) + "\n")
    (rec,) = read_manifest(folder / "m.jsonl")
    with pytest.raises(TTDError, match=r"m.jsonl:1: field 'caption_mask' is required"):
        rec.require("caption_mask", folder / "m.jsonl")


def test_empty_tag_list_is_present(folder):
    (folder / "m.jsonl").write_text(json.dumps({"image": "img/a.png", "caption": "ok", "tags": []}) + "\n")
    (rec,) = read_manifest(folder / "m.jsonl")
    rec.require("tags")  # nothing depicted is an answer, not a missing field
    assert rec.tags == ()
