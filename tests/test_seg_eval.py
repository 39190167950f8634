import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ttd.cli
from _seg_fixtures import write_generic, write_image, write_label
from helpers import tiny_model
from ttd.data.manifest import write_manifest
from ttd.data.segmentation import load_segmentation_dataset
from ttd.evaluate.caption import CaptionMaskDataset, evaluate_captions
from ttd.evaluate.segmentation import evaluate_segmentation
from ttd.metrics import ConfusionMatrix
from ttd.protocols import load_protocol
from ttd.segment import Segmenter

SMALL = ["short_side=32", "crop_size=24", "stride=16"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TTD_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def generic(tmp_path):
    root = tmp_path / "data"
    write_generic(root, ["background", "cat, kitten", "dog", "grass"], count=4)
    return root


def test_evaluation_equals_a_hand_accumulated_matrix(generic, tmp_path):
    model = tiny_model()
    dataset = load_segmentation_dataset("generic", generic)
    protocol = load_protocol("tcl", "generic", SMALL)
    result = evaluate_segmentation(model, dataset, protocol, tmp_path / "out", method="tiny", progress=False)
    seg = Segmenter(model, protocol, dataset.vocabulary)
    cm = ConfusionMatrix(4)
    for i in range(len(dataset)):
        sample = dataset[i]
        cm.update(seg.predict(sample.image).labels, sample.label)
    assert result["confusion_matrix"] == cm.matrix.tolist()
    assert result["mIoU"] == pytest.approx(100 * cm.compute()["mIoU"], abs=0.01)
    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert saved["mIoU"] == result["mIoU"] and saved["protocol"]["name"] == "tcl" and saved["images"] == 4
    table = (out / "results.md").read_text()
    assert "| method | generic |" in table and f"| tiny | {result['mIoU']:.1f} |" in table
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["img0.png", "img1.png", "img2.png", "img3.png"]
    assert Image.open(out / "figures" / "img0.png").width > 3 * 40


def test_interrupted_run_resumes_from_its_checkpoint(generic, tmp_path, monkeypatch):
    model = tiny_model()
    dataset = load_segmentation_dataset("generic", generic)
    protocol = load_protocol("tcl", "generic", SMALL)
    full = evaluate_segmentation(model, dataset, protocol, tmp_path / "full", progress=False, figures=0)

    calls = []
    real = Segmenter.predict

    def crash_on_third(self, image, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, image, **kwargs)

    monkeypatch.setattr(Segmenter, "predict", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        evaluate_segmentation(model, dataset, protocol, tmp_path / "run", progress=False, figures=0, checkpoint_every=1)
    monkeypatch.setattr(Segmenter, "predict", lambda self, image, **kw: calls.append(1) or real(self, image, **kw))
    calls.clear()
    resumed = evaluate_segmentation(model, dataset, protocol, tmp_path / "run", progress=False, figures=0)
    assert len(calls) == 2  # images 3 and 4 only
    assert resumed["confusion_matrix"] == full["confusion_matrix"]
    calls.clear()
    evaluate_segmentation(model, dataset, protocol, tmp_path / "run", progress=False, figures=0, resume=False)
    assert len(calls) == 4


def _caption_manifest(tmp_path) -> Path:
    records = []
    for i in range(3):
        write_image(tmp_path / f"img{i}.jpg", (40, 32), seed=20 + i)
        mask = np.zeros((32, 40), dtype=np.uint8)
        mask[8:24, 10 + i : 30] = 1
        mask[0, :3] = 255
        write_label(tmp_path / f"mask{i}.png", mask)
        records.append({"image": f"img{i}.jpg", "caption": f"a photo of thing number {i}", "caption_mask": f"mask{i}.png"})
    return write_manifest(records, tmp_path / "captions.jsonl")


def test_caption_evaluation(tmp_path):
    model = tiny_model()
    dataset = CaptionMaskDataset.from_manifest(_caption_manifest(tmp_path))
    protocol = load_protocol("tcl", None, SMALL)
    result = evaluate_captions(model, dataset, protocol, tmp_path / "out", threshold=0.4, method="tiny", progress=False)
    seg = Segmenter(model, protocol)
    cm = ConfusionMatrix(2)
    for i in range(3):
        s = dataset[i]
        assert set(s.target.unique().tolist()) <= {0, 1, 255}
        cm.update(seg.predict_caption(s.image, s.caption, 0.4).mask.long(), s.target)
    assert result["confusion_matrix"] == cm.matrix.tolist()
    assert result["CaptionIoU"] / 100 + result["mFPR"] + result["mFNR"] == pytest.approx(1.0, abs=1e-3)
    assert "| method | CaptionIoU | mFPR | mFNR |" in (tmp_path / "out" / "results.md").read_text()


def test_caption_manifest_without_masks_is_refused(tmp_path):
    write_image(tmp_path / "a.jpg")
    path = write_manifest([{"image": "a.jpg", "caption": "a cat"}], tmp_path / "m.jsonl")
    with pytest.raises(Exception, match="field 'caption_mask' is required for this task but missing"):
        CaptionMaskDataset.from_manifest(path)


# --- CLI -----------------------------------------------------------------------------------
@pytest.fixture
def fake_loader(monkeypatch):
    monkeypatch.setattr(ttd.cli.common, "load_model_from_args", lambda args: tiny_model())


def test_cli_eval_seg(generic, tmp_path, fake_loader, capsys):
    out = tmp_path / "out"
    argv = ["eval", "seg", "--dataset", "generic", "--root", str(generic), "--protocol", "tcl", "--out", str(out),
            "--limit", "2", "--figures", "1", "--set", *SMALL]
    assert ttd.cli.main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    assert result["images"] == 2 and result["protocol"]["short_side"] == 32
    assert f"| maskclip (ViT-B-16/openai) | {result['mIoU']:.1f} |" in printed
    assert [p.name for p in (out / "figures").iterdir()] == ["img0.png"]


def test_cli_print_protocol_and_errors(tmp_path, fake_loader, capsys):
    assert ttd.cli.main(["eval", "seg", "--dataset", "ade20k", "--protocol", "ttd", "--print-protocol"]) == 0
    assert "background_threshold: 0.45" in capsys.readouterr().out
    assert ttd.cli.main(["eval", "seg", "--dataset", "voc21", "--protocol", "tcl", "--print"]) == 0
    printed = capsys.readouterr().out  # TCL's authors' settings, each a knob
    assert all(k in printed for k in ("kp_weight: 0.3", "background_threshold: 0.4", "crop_size: 448", "stride: 224", "pamr: true"))
    assert ttd.cli.main(["eval", "seg", "--protocol", "tcl", "--print"]) == 0  # no dataset: the preset alone
    printed = capsys.readouterr().out
    assert all(k in printed for k in ("name: tcl", "kp_weight: 0.3", "crop_size: 448"))
    assert ttd.cli.main(["eval", "seg", "--root", str(tmp_path), "--out", "x"]) == 2
    assert "--dataset is required" in capsys.readouterr().err
    assert ttd.cli.main(["eval", "seg", "--dataset", "voc21", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ttd eval: error: dataset voc21: ") and "JPEGImages not found" in err and "\n" not in err
    assert ttd.cli.main(["eval", "seg", "--dataset", "voc21", "--out", "x"]) == 2
    assert "--root is required" in capsys.readouterr().err
    assert ttd.cli.main(["eval", "seg", "--dataset", "voc21", "--print-protocol", "--set", "flip=perhaps"]) == 2
    assert "protocol knob flip='perhaps' cannot be read" in capsys.readouterr().err


def test_cli_eval_caption(tmp_path, fake_loader, capsys):
    manifest = _caption_manifest(tmp_path)
    assert ttd.cli.main(["eval", "caption", "--data", str(manifest), "--out", str(tmp_path / "o"), "--set", *SMALL]) == 0
    assert "| method | CaptionIoU | mFPR | mFNR |" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "results.json").read_text())["threshold"] == 0.40


def test_cli_segment_classes_and_text(tmp_path, fake_loader, capsys):
    image = tmp_path / "photo.jpg"
    write_image(image, (48, 36))
    out = tmp_path / "overlay.png"
    argv = ["segment", str(image), "--classes", "cat,dog,grass", "--scales", "1,0.5", "--flip", "--pamr",
            "--out", str(out), "--heatmaps", str(tmp_path / "heat.png"), "--set", *SMALL]
    assert ttd.cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"overlay written to {out}" in printed
    overlay = Image.open(out)
    assert overlay.size[0] == 8 * 48 and overlay.size[1] > 8 * 36  # enlarged 8x (nearest), legend below
    assert Image.open(tmp_path / "heat.png").width > 0
    assert ttd.cli.main(["segment", str(image), "--text", "a dog on the grass", "--out", str(out), "--set", *SMALL]) == 0
    assert "above 0.40" in capsys.readouterr().out
    assert ttd.cli.main(["segment", str(tmp_path / "nope.jpg"), "--classes", "cat", "--out", str(out)]) == 2
    assert "image not found" in capsys.readouterr().err


# --- distributed ----------------------------------------------------------------------------
_WORKER = """
import sys
sys.path[:0] = {paths!r}
import ttd.cli
from helpers import tiny_model
ttd.cli.common.load_model_from_args = lambda args: tiny_model()
sys.exit(ttd.cli.main(sys.argv[1:]))
"""


def test_two_process_torchrun_equals_one_process(generic, tmp_path, fake_loader):
    common = ["eval", "seg", "--dataset", "generic", "--root", str(generic), "--protocol", "tcl", "--figures", "0", "--set", *SMALL]
    assert ttd.cli.main([*common, "--out", str(tmp_path / "one")]) == 0
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(paths=[str(REPO / "src"), str(REPO / "tests")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           *common, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["confusion_matrix"] == one["confusion_matrix"] and two["mIoU"] == one["mIoU"]
    assert sorted(p.name for p in (tmp_path / "two" / ".state").iterdir()) == ["rank0-of-2.safetensors", "rank1-of-2.safetensors"]


def test_the_protocol_follows_the_model_unless_given(capsys):
    from ttd.models.weights import recommended_protocol

    assert recommended_protocol("miniworld") == recommended_protocol("miniworld-clip") == "miniworld"
    assert recommended_protocol("ViT-B-16/openai") is None
    assert ttd.cli.main(["eval", "caption", "--model", "miniworld", "--print-protocol"]) == 0
    assert "name: miniworld" in capsys.readouterr().out
    assert ttd.cli.main(["eval", "caption", "--model", "miniworld", "--protocol", "tcl", "--print-protocol"]) == 0
    assert "name: tcl" in capsys.readouterr().out
    assert ttd.cli.main(["eval", "caption", "--print-protocol"]) == 0  # ViT-B-16/openai: the command's default
    assert "name: tcl" in capsys.readouterr().out
    # with its recommended protocol a model gets its own caption-map normalisation; --set still wins
    assert ttd.cli.main(["eval", "caption", "--model", "miniworld", "--print-protocol"]) == 0
    assert "caption_normalize: none" in capsys.readouterr().out
    assert ttd.cli.main(["eval", "caption", "--model", "miniworld-clip", "--print-protocol"]) == 0
    assert "caption_normalize: minmax" in capsys.readouterr().out
    assert ttd.cli.main(["eval", "caption", "--model", "miniworld-clip", "--print-protocol", "--set", "caption_normalize=none"]) == 0
    assert "caption_normalize: none" in capsys.readouterr().out
    assert ttd.cli.main(["eval", "caption", "--model", "miniworld-clip", "--protocol", "miniworld", "--print-protocol"]) == 0
    assert "caption_normalize: none" in capsys.readouterr().out  # a protocol given by name is taken as written


def test_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    import io

    read, write = os.pipe()
    os.close(read)  # the reader (`head`) has gone: every write raises BrokenPipeError
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(os.fdopen(write, "wb"), write_through=True))
    assert ttd.cli.main(["info"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batched_evaluation_equals_one_image_at_a_time(tmp_path, batch_size):
    model = tiny_model()
    root = tmp_path / "data"
    write_generic(root, ["background", "cat, kitten", "dog", "grass"], count=5)
    dataset = load_segmentation_dataset("generic", root)
    protocol = load_protocol("tcl", "generic", ["short_side=null", "crop_size=null", "stride=null"])
    result = evaluate_segmentation(model, dataset, protocol, tmp_path / "out", progress=False, figures=2,
                                   batch_size=batch_size, checkpoint_every=2)
    seg = Segmenter(model, protocol, dataset.vocabulary)
    cm = ConfusionMatrix(4)
    for i in range(len(dataset)):
        cm.update(seg.predict(dataset[i].image).labels, dataset[i].label)
    assert result["confusion_matrix"] == cm.matrix.tolist()
    assert len(list((tmp_path / "out" / "figures").iterdir())) == 2

    captions = CaptionMaskDataset.from_manifest(_caption_manifest(tmp_path))
    one = evaluate_captions(model, captions, protocol, None, progress=False, batch_size=1)
    many = evaluate_captions(model, captions, protocol, None, progress=False, batch_size=batch_size)
    same = json.dumps(one["normalizations"], sort_keys=True) == json.dumps(many["normalizations"], sort_keys=True)
    assert same  # compared as JSON: NaN-safe
    assert one["confusion_matrix"] == many["confusion_matrix"]
