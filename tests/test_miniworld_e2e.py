"""The mini-world end to end, on the command line: build a tiny world from a fake clip-art source
→ ``ttd pretrain`` → ``ttd train`` (TTD) → ``ttd eval tags`` and caption segmentation →
``ttd quickstart``; plus the embedded samples and the sample extraction.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import TINY
from PIL import Image
from safetensors.torch import load_file
from test_miniworld import fake_world  # noqa: F401  (the fake clip-art fixture)

from ttd.cli import main
from ttd.data.manifest import read_manifest
from ttd.evaluate.miniworld import SAMPLES_MANIFEST
from ttd.method.tags import candidate_tags
from ttd.models import load_model
from ttd.models.lora import load_adapter
from ttd.quickstart import pick_samples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from extract_miniworld_samples import choose, extract  # noqa: E402

STEPS = ["--image-size", "32", "--steps", "3", "--batch-size", "4", "--workers", "0", "--warmup-steps", "1",
         "--no-progress", "--no-tensorboard"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, fake_world):  # noqa: F811
    """World → pretrained tiny CLIP → TTD adapter, all through the CLI."""
    root, vocab = fake_world
    tmp = tmp_path_factory.mktemp("e2e")
    world = tmp / "world"
    assert main(["data", "miniworld", "--out", str(world), "--source", str(root), "--vocabulary", str(vocab),
                 "--train", "16", "--val", "6", "--test", "6", "--size", "32", "--quiet"]) == 0
    (tmp / "clip.yaml").write_text(yaml.safe_dump(TINY.to_dict()))
    pairs = str(world / "train" / "pairs.jsonl")
    assert main(["pretrain", "--data", pairs, "--clip-config", str(tmp / "clip.yaml"), "--out", str(tmp / "pre"), *STEPS]) == 0
    weights = tmp / "pre" / "model.safetensors"
    assert main(["train", "--data", pairs, "--model", str(weights), "--out", str(tmp / "ttd"), "--lr", "1e-2", *STEPS]) == 0
    return world, weights, tmp / "ttd" / "adapter.safetensors", tmp


def test_pretrain_and_ttd_write_loadable_weights(pipeline):
    world, weights, adapter, _ = pipeline
    base = load_model(str(weights))
    assert base.config.image_size == 32 and base.config.vision_width == 64
    tensors = load_file(adapter)
    lora_b = [v for k, v in tensors.items() if k.endswith(".B")]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "TTD did not move any adapter"
    tuned = load_adapter(load_model(str(weights)), adapter)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(base.encode_image(images)[1], tuned.encode_image(images)[1])


def test_eval_tags_report_is_well_formed(pipeline):
    world, weights, adapter, tmp = pipeline
    out = tmp / "tags"
    assert main(["eval", "tags", "--data", str(world / "val" / "tags.jsonl"), "--model", str(weights), "--adapter",
                 str(adapter), "--scorers", "pixel,image", "--taggers", "", "--out", str(out)]) == 0
    result = json.loads((out / "tags.json").read_text())
    assert result["captions"] == 6 and set(result["rows"]) == {"pixel", "image"}
    for metrics in result["rows"].values():
        for key in ("precision", "recall", "f1", "accuracy"):
            assert 0.0 <= metrics[key] <= 1.0
    assert "| s_pixel (Eq. 2) |" in (out / "tags.md").read_text()


def test_eval_caption_on_the_world(pipeline):
    world, weights, adapter, tmp = pipeline
    out = tmp / "caption"
    assert main(["eval", "caption", "--data", str(world / "val" / "tags.jsonl"), "--protocol", "miniworld", "--model",
                 str(weights), "--adapter", str(adapter), "--out", str(out), "--figures", "1"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["records"] == 6 and result["protocol"]["name"] == "miniworld"
    assert result["CaptionIoU"] / 100 + result["mFPR"] + result["mFNR"] == pytest.approx(1.0, abs=1e-3)
    matrix = torch.tensor(result["confusion_matrix"])
    assert matrix.sum() == 6 * 32 * 32  # every pixel of every 32 px image counted once
    assert (out / "results.md").is_file() and len(list((out / "figures").glob("*.png"))) == 1


def test_eval_seg_on_the_world(pipeline):
    world, weights, adapter, tmp = pipeline
    out = tmp / "seg"
    assert main(["eval", "seg", "--dataset", "generic", "--root", str(world / "seg" / "val"), "--protocol", "miniworld",
                 "--model", str(weights), "--adapter", str(adapter), "--out", str(out), "--figures", "0", "--no-cache"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["images"] == 6 and 0.0 <= result["mIoU"] <= 100.0
    classes = (world / "seg" / "val" / "classes.txt").read_text().splitlines()
    assert len(result["confusion_matrix"]) == len(classes)


def test_quickstart_on_a_tiny_model(pipeline, capsys):
    world, weights, adapter, tmp = pipeline
    out = tmp / "quick"
    assert main(["quickstart", "--model", str(weights), "--adapter", str(adapter), "--samples",
                 str(world / "val" / "tags.jsonl"), "--out", str(out), "--images", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed and "before TTD: tag F1" in printed
    report = (out / "report.md").read_text()
    assert "![before / after](figure.png)" in report and "| after TTD |" in report
    with Image.open(out / "figure.png") as figure:
        assert figure.format == "PNG" and figure.width > 3 * 32
    data = json.loads((out / "quickstart.json").read_text())
    assert data["summary"]["images"] == 6 and len(data["examples"]) == 2
    assert data["settings"]["caption_normalize"] == "none"  # weights of unknown name: raw maps
    for example in data["examples"]:
        words = candidate_tags(example["caption"])
        for stage in ("before", "after"):
            assert set(example[f"selected_{stage}"]) <= set(words)
            assert list(example[f"scores_{stage}"]) == words
            picked = [w for w, s in example[f"scores_{stage}"].items() if s >= 0.5]
            assert example[f"selected_{stage}"] == picked


def test_quickstart_min_max_normalises_the_caption_maps_it_thresholds(tmp_path):
    from ttd.quickstart import run_quickstart

    raw = run_quickstart(tmp_path / "raw", model="miniworld-clip", images=1, caption_normalize="none")
    minmax = run_quickstart(tmp_path / "minmax", images=1)  # the default model, with its registered normalisation
    assert "after min-max normalisation per image" in minmax.report.read_text()
    assert "min-max" not in raw.report.read_text()
    for stage in ("before", "after"):
        assert minmax.summary[stage]["tags"] == raw.summary[stage]["tags"]  # tag scoring does not change
    # the embedded MaskCLIP-like CLIP: its raw caption maps are dark before TTD, the normalised ones are not
    assert raw.summary["before"]["caption"]["bias"]["best_coverage"] < 0.3 < minmax.summary["before"]["caption"]["bias"]["best_coverage"]


def test_quickstart_refuses_an_adapter_of_other_weights(pipeline, tmp_path, capsys):
    world, weights, adapter, _ = pipeline
    assert main(["pretrain", "--data", str(world / "train" / "pairs.jsonl"), "--clip-config",
                 str(weights.parents[1] / "clip.yaml"), "--out", str(tmp_path / "other"), "--seed", "1", *STEPS]) == 0
    code = main(["quickstart", "--model", str(tmp_path / "other" / "model.safetensors"), "--adapter", str(adapter),
                 "--samples", str(world / "val" / "tags.jsonl"), "--out", str(tmp_path / "q")])
    assert code == 2 and "load the matching --model" in capsys.readouterr().err


def test_embedded_samples_are_a_valid_small_manifest():
    records = read_manifest(SAMPLES_MANIFEST)  # checks that every image and mask exists
    assert 24 <= len(records) <= 64
    folder = SAMPLES_MANIFEST.parent
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= 2 * 1024 * 1024
    for record in records:
        assert record.tags and set(record.tags) <= set(candidate_tags(record.caption))
        assert set(record.tag_masks) == set(record.tags)
        with Image.open(record.image) as image, Image.open(record.caption_mask) as mask:
            assert image.size == mask.size == (64, 64)
    assert sum(len(r.tags) >= 2 for r in records) >= len(records) // 2


def test_sample_choice_prefers_several_objects_and_new_nouns():
    records = [{"tags": ["cat"]}, {"tags": ["cat", "dog"]}, {"tags": ["cat", "dog"]}, {"tags": ["bee", "owl"]}]
    assert choose(records, 2) == [records[1], records[3]]  # file order kept in the result
    assert choose(records, 10) == records


def test_sample_extraction_is_deterministic(pipeline, tmp_path):
    world = pipeline[0]
    a, b = extract(world, tmp_path / "a", 4), extract(world, tmp_path / "b", 4)
    assert a.read_bytes() == b.read_bytes()
    records = read_manifest(a)
    assert len(records) == 4 and all(r.caption_mask.parent.name == "masks" for r in records)


def test_pick_samples_shows_multi_object_captions_first():
    from ttd.data.manifest import ManifestRecord

    records = [ManifestRecord(Path(f"{i}.jpg"), "c", tags=t) for i, t in enumerate([("a",), ("a", "b"), (), ("c", "d")])]
    assert pick_samples(records, 3) == [records[1], records[3], records[0]]


@pytest.mark.parametrize("name", ["miniworld-clip", "miniworld"])
def test_each_embedded_model_loads_with_its_embedded_adapter(name, capsys):
    from ttd.models.lora import read_adapter_metadata
    from ttd.models.weights import KNOWN_WEIGHTS, embedded_adapter

    spec = KNOWN_WEIGHTS[name]
    meta = read_adapter_metadata(embedded_adapter(name))
    assert meta["base"] == name and meta["dense"] == spec.dense and meta["finetune"] == "lora"
    base = load_model(name, dense=spec.dense)
    tuned = load_adapter(load_model(name, dense=spec.dense), embedded_adapter(name))  # checks the base fingerprint
    images, caption = torch.randn(1, 3, 64, 64), ["a cat beside a dog"]
    before = base.heatmap(base.encode_image(images)[1], caption)
    after = tuned.heatmap(tuned.encode_image(images)[1], caption)  # the adapter may touch the text tower only
    assert not torch.allclose(before, after)
    assert not before.requires_grad and not after.requires_grad  # inference outputs carry no autograd graph
    assert main(["info", "--json"]) == 0
    embedded = json.loads(capsys.readouterr().out)["embedded"]
    printed = next(e for e in embedded if e["name"] == name)
    assert printed == {"name": name, "adapter": str(embedded_adapter(name)), "kind": spec.kind, "dense": spec.dense}
    assert {e["kind"] for e in embedded} == {"maskclip-like", "tcl-like"}
    again = load_adapter(load_model(name, dense=spec.dense), printed["adapter"])  # --adapter takes it as printed
    assert torch.allclose(again.heatmap(again.encode_image(images)[1], caption), after)
