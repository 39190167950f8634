"""The TTD authors' folder layouts: segmentation sets and CC3M-TagMask, read directly."""

import json

import numpy as np
import pytest
import torch
from _seg_fixtures import random_label, write_image, write_label
from helpers import tiny_model

import ttd.cli
from ttd.data.layouts import TTD_FOLDERS, load_dataset, read_records, read_tagmask
from ttd.errors import TTDError

SMALL = ["short_side=32", "crop_size=24", "stride=16"]
# The authors' README: ROOT/<folder>/validation/{image,mask,xml}/ (written here, not from ttd's table).
FOLDERS = {"voc21": "VOC2012", "coco_object": "COCO2014", "context60": "PascalContext", "ade20k": "ADE2016",
           "cityscapes": "Cityscapes", "coco_stuff171": "COCO-Stuff"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTD_CACHE", str(tmp_path / "cache"))


def write_ttd_set(root, folder, classes, stems=("2007_000033", "2007_000042")):
    labels = {}
    for i, stem in enumerate(stems):
        base = root / folder / "validation"
        write_image(base / "image" / f"{stem}.jpg", seed=i)
        labels[stem] = random_label(classes, seed=i)
        write_label(base / "mask" / f"{stem}.png", labels[stem], palette=True)
        (base / "xml").mkdir(exist_ok=True)
        (base / "xml" / f"{stem}.xml").write_text("<annotation></annotation>")
    return labels


def test_every_authors_folder_is_known():
    assert {TTD_FOLDERS[k] for k in FOLDERS} == set(FOLDERS.values())


@pytest.mark.parametrize("name, classes", [("voc21", 21), ("voc20", 21), ("cityscapes", 19), ("coco_object", 81)])
def test_segmentation_sets_read_from_any_level_of_the_tree(tmp_path, name, classes):
    folder = TTD_FOLDERS[name]
    labels = write_ttd_set(tmp_path, folder, classes)
    for root in (tmp_path, tmp_path / folder, tmp_path / folder / "validation"):
        dataset = load_dataset(name, root)  # auto-detected
        assert [item[0] for item in dataset.items] == sorted(labels)
        sample = dataset[0]
        raw = torch.from_numpy(labels[sample.name]).long()
        if name == "voc20":  # reduce_zero_label, as for the mmsegmentation tree
            raw = torch.where(raw == 0, 255, torch.where(raw == 255, 255, raw - 1))
        assert torch.equal(sample.label, raw) and sample.image.size == (40, 30)


def test_layout_errors_name_the_missing_path(tmp_path):
    write_ttd_set(tmp_path, "VOC2012", 21)
    (tmp_path / "VOC2012" / "validation" / "mask" / "2007_000042.png").unlink()
    with pytest.raises(TTDError, match=r"dataset voc21: .*VOC2012/validation/mask/2007_000042\.png not found; "
                                       r"expected the tree VOC2012/validation/\{image/STEM\.jpg, mask/STEM\.png, xml/\}"):
        load_dataset("voc21", tmp_path, "ttd")
    (tmp_path / "VOC2012" / "validation" / "mask" / "2007_000033.png").unlink()
    (tmp_path / "VOC2012" / "validation" / "mask").rmdir()
    with pytest.raises(TTDError, match=r"dataset voc21: .*VOC2012/validation/mask not found; expected the tree VOC2012/"):
        load_dataset("voc21", tmp_path)  # auto: image/ alone marks the authors' layout
    with pytest.raises(TTDError, match=r"dataset ade20k: .*/image not found; expected the tree ADE2016/validation/"):
        load_dataset("ade20k", tmp_path, "ttd")
    with pytest.raises(TTDError, match="dataset generic has no TTD-layout folder"):
        load_dataset("generic", tmp_path, "ttd")
    with pytest.raises(TTDError, match=r"unknown layout 'voc'; choose one of: auto, mmseg, ttd"):
        load_dataset("voc21", tmp_path, "voc")
    # auto falls back to mmsegmentation's tree when there is no image/ + mask/
    with pytest.raises(TTDError, match=r"expected the tree VOCdevkit/VOC2012/"):
        load_dataset("voc21", tmp_path / "VOC2012" / "validation" / "xml")


def test_label_ids_beyond_the_vocabulary_stop_the_run(tmp_path):
    write_ttd_set(tmp_path, "Cityscapes", 40)  # e.g. raw Cityscapes ids instead of train ids
    with pytest.raises(TTDError, match=r"holds class id \d+ but cityscapes has 19 classes"):
        load_dataset("cityscapes", tmp_path)[0]


def write_tagmask(root, records):
    base = root / "cc3m_for_evaluation"
    for i, (stem, caption, tags, with_mask) in enumerate(records):
        write_image(base / "image" / f"{stem}.jpg", seed=i)
        (base / "json_refined").mkdir(parents=True, exist_ok=True)
        (base / "json_refined" / f"{stem}.json").write_text(json.dumps({"caption": caption, "tags": tags}))
        if with_mask:
            mask = np.zeros((30, 40), np.uint8)
            mask[5:20, 10:30] = 1
            mask[0, 0] = 255
            write_label(base / "mask_using_HQ-SAM" / f"{stem}.png", mask)
    return base


def test_tagmask_records(tmp_path):
    base = write_tagmask(tmp_path, [("b", "a dog on grass", ["dog", "grass"], True), ("a", "a red car", ["car"], False)])
    records = read_tagmask(tmp_path)
    assert [(r.image.name, r.caption, r.tags) for r in records] == [
        ("a.jpg", "a red car", ("car",)), ("b.jpg", "a dog on grass", ("dog", "grass"))]
    assert records[0].caption_mask is None and records[1].caption_mask == base / "mask_using_HQ-SAM" / "b.png"
    assert read_records(base) == records
    with pytest.raises(TTDError, match=r"mask_using_HQ-SAM/a\.png not found \(the caption mask of .*json_refined/a\.json\)"):
        read_records(base, masks=True)


def test_tagmask_errors(tmp_path):
    base = write_tagmask(tmp_path, [("a", "a red car", ["car"], True)])
    (base / "json_refined" / "a.json").write_text(json.dumps({"text": "a red car", "labels": ["car"]}))
    with pytest.raises(TTDError, match=r"a\.json: expected a string 'caption' and a list of strings 'tags' \(its keys: text, labels\)"):
        read_tagmask(base)
    (base / "json_refined" / "a.json").write_text(json.dumps({"caption": "a red car", "tags": ["car"]}))
    (base / "image" / "a.jpg").unlink()
    with pytest.raises(TTDError, match=r"image/a\.jpg not found \(named by .*a\.json\); expected the tree cc3m_for_evaluation/"):
        read_tagmask(base)
    with pytest.raises(TTDError, match=r"CC3M-TagMask: .*/nothing/image not found"):
        read_tagmask(tmp_path / "nothing")


@pytest.fixture
def tcl_loader(monkeypatch):
    monkeypatch.setattr(ttd.cli.common, "load_model_from_args", lambda args: tiny_model("tcl"))


def test_cli_reads_the_authors_layouts(tmp_path, tcl_loader, capsys):
    write_ttd_set(tmp_path, "VOC2012", 21)
    base = write_tagmask(tmp_path, [("a", "a dog on grass", ["dog", "grass"], True)])
    out = tmp_path / "out"
    assert ttd.cli.main(["eval", "seg", "--dataset", "voc21", "--root", str(tmp_path), "--out", str(out / "seg"),
                         "--figures", "0", "--set", *SMALL]) == 0
    assert json.loads((out / "seg" / "results.json").read_text())["images"] == 2
    assert ttd.cli.main(["eval", "caption", "--data", str(base), "--out", str(out / "cap"), "--figures", "0",
                         "--set", *SMALL]) == 0
    assert "CaptionIoU" in (out / "cap" / "results.md").read_text()
    assert ttd.cli.main(["eval", "tags", "--data", str(base), "--scorers", "pixel", "--out", str(out / "tags")]) == 0
    assert (out / "tags" / "tags.json").is_file()
    assert "| tcl (ViT-B-16/openai) |" in capsys.readouterr().out  # the seg table labels the model
