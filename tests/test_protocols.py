import pytest

from ttd.errors import TTDError
from ttd.protocols import PRESETS, load_protocol, load_templates, parse_overrides
from ttd.vocabulary import BUILTIN_VOCABULARIES, Vocabulary


def test_presets_carry_the_documented_knobs():
    tcl, ttd, sclip, miniworld = (load_protocol(name) for name in PRESETS)
    assert (tcl.short_side, tcl.crop_size, tcl.stride, tcl.scales, tcl.flip, tcl.pamr) == (448, 448, 224, (1.0,), False, True)
    assert tcl.background_threshold == 0.40  # TCL's released evaluation (tcl.yml: pamr, bg_thresh 0.4)
    assert [load_protocol("ttd", d).background_threshold for d in ("voc21", "coco_object", "ade20k", "cityscapes",
            "coco_stuff171", "context60")] == [0.40, 0.45, 0.45, 0.40, 0.40, 0.45]  # the TTD README's --bg per dataset
    assert (ttd.scales, ttd.flip, ttd.pamr, ttd.pamr_iterations, ttd.pamr_dilations) == (
        (1.0, 0.5, 1.5, 2.0), True, True, 10, (1, 2, 4, 8, 12, 24))
    assert (miniworld.short_side, miniworld.crop_size, miniworld.scales, miniworld.flip, miniworld.pamr) == (None, None, (1.0,), False, False)
    assert (miniworld.templates, miniworld.background, miniworld.background_threshold) == ("identity", "threshold", 0.40)
    assert (sclip.short_side, sclip.crop_size, sclip.stride, sclip.background, sclip.synonyms) == (336, 224, 112, "softmax", True)
    assert tcl.pixel_mean == (0.485, 0.456, 0.406) and sclip.pixel_mean[0] == pytest.approx(0.48145466)
    assert len(tcl.template_list()) == 9 and len(sclip.template_list()) == 80


@pytest.mark.parametrize(
    "dataset, threshold", [("voc21", 0.40), ("cityscapes", 0.40), ("coco_stuff171", 0.40), ("coco_object", 0.45),
                           ("ade20k", 0.45), ("context60", 0.45), ("context59", 0.45)],
)
def test_ttd_background_threshold_per_dataset(dataset, threshold):
    p = load_protocol("ttd", dataset)
    assert p.background_threshold == threshold and p.dataset == dataset


def test_sclip_per_dataset_values():
    assert load_protocol("sclip", "coco_stuff171").short_side == 448
    assert load_protocol("sclip", "cityscapes").short_side == 560
    assert load_protocol("sclip", "ade20k").short_side == 336
    voc = load_protocol("sclip", "voc21")
    assert (voc.logit_scale, voc.prob_threshold, voc.area_threshold) == (65.0, 0.1, 0.1)
    assert load_protocol("sclip", "context59").prob_threshold == 0.0


def test_overrides_win_over_dataset_values_and_are_typed():
    p = load_protocol("ttd", "ade20k", ["background_threshold=0.3", "scales=1,0.5", "flip=false", "crop_size=none"])
    assert (p.background_threshold, p.scales, p.flip, p.crop_size) == (0.3, (1.0, 0.5), False, None)
    assert load_protocol("tcl", overrides={"pamr_dilations": [8, 16]}).pamr_dilations == (8, 16)
    assert parse_overrides(["area_threshold=null"]) == {"area_threshold": None}


def test_yaml_round_trip(tmp_path):
    p = load_protocol("sclip", "voc21", ["pamr=true"])
    path = tmp_path / "mine.yaml"
    path.write_text(p.to_yaml())
    assert load_protocol(path) == p


@pytest.mark.parametrize(
    "args, message",
    [
        (("nope",), "unknown protocol 'nope': choose one of tcl, ttd, sclip, miniworld or give a YAML file"),
        (("tcl", None, ["colour=red"]), "unknown protocol knob 'colour'"),
        (("tcl", None, ["pamr"]), "--set 'pamr': expected knob=value"),
        (("tcl", None, ["background=maybe"]), "protocol 'tcl': background='maybe' is invalid (choose one of threshold, softmax)"),
        (("tcl", None, ["stride=500"]), "stride=500 is invalid (larger than crop_size=448"),
        (("tcl", None, ["flip=sometimes"]), "protocol knob flip='sometimes' cannot be read"),
        (("tcl", None, ["scales=0"]), "scales=(0.0,) is invalid"),
    ],
)
def test_bad_protocols_give_one_line_errors(args, message):
    with pytest.raises(TTDError) as err:
        load_protocol(*args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_template_files(tmp_path):
    assert load_templates("identity") == ["{}"]
    good = tmp_path / "t.txt"
    good.write_text("a photo of a {}.\n\nart of {}\n")
    assert load_templates(good) == ["a photo of a {}.", "art of {}"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo\n")
    with pytest.raises(TTDError, match="every line must be a template containing"):
        load_templates(bad)


@pytest.mark.parametrize(
    "name, count, background",
    [("voc21", 21, True), ("voc20", 20, False), ("context60", 60, True), ("context59", 59, False),
     ("coco_object", 81, True), ("coco_stuff171", 171, False), ("cityscapes", 19, False), ("ade20k", 150, False)],
)
def test_builtin_vocabularies(name, count, background):
    v = Vocabulary.builtin(name)
    assert len(v) == count and v.has_background == background
    assert len(set(v.display_names)) == count  # no two classes share a display name


def test_known_class_orders():
    assert Vocabulary.builtin("voc20").display_names[:3] == ["aeroplane", "bicycle", "bird"]
    assert Vocabulary.builtin("context59").display_names[-3:] == ["water", "window", "wood"]
    assert Vocabulary.builtin("coco_stuff171").display_names[79:81] == ["toothbrush", "banner"]
    assert Vocabulary.builtin("ade20k").display_names[-3:] == ["glass", "clock", "flag"]
    assert Vocabulary.builtin("cityscapes").display_names[11] == "person"
    assert BUILTIN_VOCABULARIES == ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff171", "cityscapes", "ade20k")


def test_queries_per_background_rule():
    v = Vocabulary.from_lines(["background, sky, wall", "cat, kitten", "dog"])
    assert v.queries(synonyms=False, background_rule="threshold") == (["cat", "dog"], [1, 2])
    assert v.queries(synonyms=True, background_rule="threshold") == (["cat", "kitten", "dog"], [1, 1, 2])
    assert v.queries(synonyms=True, background_rule="softmax") == (["sky", "wall", "cat", "kitten", "dog"], [0, 0, 1, 1, 2])
    lone = Vocabulary.from_names("cat,dog", background=True)
    assert lone.display_names == ["background", "cat", "dog"]
    assert lone.queries(synonyms=True, background_rule="softmax") == (["background", "cat", "dog"], [0, 1, 2])


def test_vocabulary_file_errors(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("cat\n\ndog\n")
    with pytest.raises(TTDError, match=r"classes.txt:2: empty line \(class 1\)"):
        Vocabulary.from_file(f)
    with pytest.raises(TTDError, match="class-name file not found"):
        Vocabulary.from_file(tmp_path / "missing.txt")


def test_every_knob_is_documented():
    from pathlib import Path

    from ttd.protocols import KNOBS

    docs = (Path(__file__).resolve().parents[1] / "docs" / "segmentation.md").read_text()
    missing = [k for k in KNOBS if k not in ("name", "description") and f"`{k}`" not in docs]
    assert missing == []
