import numpy as np
import pytest
import torch
from PIL import Image

from _seg_fixtures import TREES, write_generic, write_image, write_label, write_tree
from ttd.data.segmentation import load_segmentation_dataset, read_label
from ttd.errors import TTDError

COUNTS = {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81,
          "coco_stuff171": 171, "cityscapes": 19, "ade20k": 150}
REDUCED = {"voc20", "context59", "ade20k"}


def _expected(raw: np.ndarray, reduce: bool) -> np.ndarray:
    out = raw.copy()
    if reduce:
        out = np.where(raw == 0, 255, raw - 1)
        out[raw == 255] = 255
    return out


@pytest.mark.parametrize("name", list(TREES))
def test_each_benchmark_layout_loads(tmp_path, name):
    raw = write_tree(name, tmp_path)
    ds = load_segmentation_dataset(name, tmp_path)  # --root above the dataset folder
    assert len(ds) == 2 and len(ds.vocabulary) == COUNTS[name]
    for i, stem in enumerate(["a", "b"]):
        sample = ds[i]
        assert sample.name == (f"frankfurt/{stem}" if name == "cityscapes" else stem)
        assert sample.image.size == (40, 30)
        assert sample.label.dtype == torch.int64
        assert np.array_equal(sample.label.numpy(), _expected(raw[stem], name in REDUCED))


def test_root_may_be_the_dataset_folder_itself(tmp_path):
    write_tree("voc21", tmp_path)
    assert len(load_segmentation_dataset("voc21", tmp_path / "VOCdevkit" / "VOC2012")) == 2
    write_tree("ade20k", tmp_path)
    assert len(load_segmentation_dataset("ade20k", tmp_path / "ade" / "ADEChallengeData2016")) == 2


def test_reduce_zero_label_by_hand(tmp_path):
    path = tmp_path / "l.png"
    write_label(path, np.array([[0, 1, 2, 255]]))
    assert read_label(path, reduce_zero_label=True).tolist() == [[255, 0, 1, 255]]
    assert read_label(path).tolist() == [[0, 1, 2, 255]]


def test_voc_palette_labels_are_read_as_indices(tmp_path):
    path = tmp_path / "p.png"
    write_label(path, np.array([[0, 15, 255]]), palette=True)
    assert Image.open(path).mode == "P"
    assert read_label(path).tolist() == [[0, 15, 255]]


def test_generic_layout(tmp_path):
    raw = write_generic(tmp_path, ["background", "cat, kitten", "dog"])
    ds = load_segmentation_dataset("generic", tmp_path)
    assert [s for s, _, _ in ds.items] == ["img0", "img1", "img2"]
    assert ds.vocabulary.has_background and ds.vocabulary.names[1] == ("cat", "kitten")
    assert np.array_equal(ds[2].label.numpy(), raw["img2"])


def _message(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_split_file(tmp_path):
    write_tree("voc21", tmp_path)
    split = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    split.unlink()
    with pytest.raises(TTDError) as err:
        load_segmentation_dataset("voc21", tmp_path)
    assert _message(err) == (
        f"dataset voc21: {split} not found; expected the tree "
        "VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/val.txt} under --root"
    )


def test_missing_label_of_one_image(tmp_path):
    write_tree("coco_object", tmp_path)
    label = tmp_path / "coco_stuff164k/annotations/val2017/b_instanceTrainIds.png"
    label.unlink()
    with pytest.raises(TTDError) as err:
        load_segmentation_dataset("coco_object", tmp_path)
    assert _message(err).startswith(f"dataset coco_object: {label} not found; expected the tree coco_stuff164k/")


def test_wrong_root(tmp_path):
    with pytest.raises(TTDError) as err:
        load_segmentation_dataset("cityscapes", tmp_path)
    assert _message(err) == (
        f"dataset cityscapes: {tmp_path / 'leftImg8bit/val'} not found; expected the tree "
        "cityscapes/{leftImg8bit/val/CITY/*_leftImg8bit.png, gtFine/val/CITY/*_gtFine_labelTrainIds.png} under --root"
    )
    with pytest.raises(TTDError, match="dataset root not found"):
        load_segmentation_dataset("voc21", tmp_path / "nowhere")
    with pytest.raises(TTDError, match="unknown dataset 'voc22'; choose one of voc21"):
        load_segmentation_dataset("voc22", tmp_path)


def test_label_folder_missing(tmp_path):
    write_tree("ade20k", tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "ade/ADEChallengeData2016/annotations")
    with pytest.raises(TTDError) as err:
        load_segmentation_dataset("ade20k", tmp_path)
    assert "annotations/validation not found; expected the tree ade/ADEChallengeData2016/" in _message(err)


def test_generic_without_classes_or_images(tmp_path):
    write_generic(tmp_path, ["cat", "dog"])
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(TTDError) as err:
        load_segmentation_dataset("generic", tmp_path)
    assert _message(err).startswith(f"dataset generic: {tmp_path / 'classes.txt'} not found; expected the tree ROOT/{{images/")
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    (empty / "classes.txt").write_text("cat\n")
    with pytest.raises(TTDError, match="dataset generic: no images in"):
        load_segmentation_dataset("generic", empty)


def test_bad_label_files(tmp_path):
    write_generic(tmp_path, ["cat", "dog"], count=1)
    Image.new("RGB", (40, 32)).save(tmp_path / "masks/img0.png")
    with pytest.raises(TTDError, match="is a RGB image; expected single-channel class ids"):
        load_segmentation_dataset("generic", tmp_path)[0]
    write_label(tmp_path / "masks/img0.png", np.full((32, 40), 7))
    with pytest.raises(TTDError, match="holds class id 7 but generic has 2 classes"):
        load_segmentation_dataset("generic", tmp_path)[0]
    write_label(tmp_path / "masks/img0.png", np.zeros((10, 10)))
    with pytest.raises(TTDError, match=r"is 10×10 but image .* is 40×32"):
        load_segmentation_dataset("generic", tmp_path)[0]
    write_image(tmp_path / "images/img1.jpg", (8, 8))
    with pytest.raises(TTDError, match="masks/img1.png not found"):
        load_segmentation_dataset("generic", tmp_path)
