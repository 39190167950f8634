"""The auxiliary dense objective of pretraining and the object masks the pair loader reads for it."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from ttd.cli import main
from ttd.data.pairs import PairLoader, preprocess_labels
from ttd.errors import TTDError
from ttd.method.objectives import DenseLabelObjective, patch_labels
from ttd.models.tokenizer import tokenize

torch.set_num_threads(1)


def test_patch_labels_take_the_majority_and_the_lowest_id_on_ties():
    labels = torch.tensor(
        [
            [0, 0, 3, 3],
            [0, 5, 3, 0],
            [2, 2, 1, 1],
            [2, 4, 4, 4],
        ]
    )[None]
    assert patch_labels(labels, (2, 2)).tolist() == [[[0, 3], [2, 1]]]  # 1, 1, 4, 4: a tie
    assert patch_labels(torch.tensor([[[1, 2], [2, 1]]]), (1, 1)).tolist() == [[[1]]]  # 2 against 2: id 1
    with pytest.raises(TTDError, match="do not tile into the 3×3 patch grid"):
        patch_labels(labels, (3, 3))


class _StubModel:
    """Text i of the list embeds as the unit vector e_i; the logit scale is ``scale``."""

    def __init__(self, texts: list[str], scale: float):
        self.texts, self.config = texts, SimpleNamespace(context_length=77)
        self.clip = SimpleNamespace(logit_scale=torch.tensor(math.log(scale)))

    def encode_tokens(self, tokens):
        assert torch.equal(tokens, tokenize(self.texts, 77))  # the objective embeds exactly these
        return torch.eye(len(self.texts), 8)


def test_dense_loss_by_hand_with_a_synonym_that_is_not_a_negative():
    # class ids: 0 background, 1 cat, 2 dog; sample 0 calls its cat "kitten" (a new text, index 3)
    names, scale = ["background", "cat", "dog"], 10.0
    model = _StubModel(["background", "cat", "dog", "kitten"], scale)
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = 1  # top-left patch of sample 0: its kitten
    labels[1, 2:, 2:] = 2  # bottom-right patch of sample 1: a dog
    words = [{"kitten": 1}, {"dog": 2}]
    dense = torch.zeros(2, 8, 2, 2)
    dense[:, 0] = 1.0  # every patch looks like the background text …
    dense[0, :, 0, 0] = torch.eye(8)[3]  # … except the kitten patch, which is exactly "kitten"
    loss, accuracy = DenseLabelObjective(names).dense_loss(model, dense, labels, words)
    right = -math.log(math.exp(scale) / (math.exp(scale) + 3))  # background patches: 3 competitors
    kitten = -math.log(math.exp(scale) / (math.exp(scale) + 2))  # "cat" (its synonym) is masked out
    dog = -math.log(1 / (math.exp(scale) + 3))  # the dog patch points at the background: wrong
    assert loss.item() == pytest.approx((6 * right + kitten + dog) / 8, rel=1e-5)
    assert accuracy.item() == pytest.approx(7 / 8)


def test_objective_needs_masks_and_known_class_ids():
    objective = DenseLabelObjective(["background", "cat"])
    with pytest.raises(TTDError, match="needs object masks"):
        objective(None, SimpleNamespace(labels=None))
    with pytest.raises(TTDError, match="class id 7 of 'dog' is not among the 2 class names"):
        objective._entries([{"dog": 7}])
    with pytest.raises(TTDError, match="needs a background name"):
        DenseLabelObjective(["background"])


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _write_shard(path: Path, n: int, size: int = 16) -> list[tuple[np.ndarray, dict]]:
    """A shard as the mini-world writes it: KEY.jpg, KEY.txt, KEY.json (classes), KEY.seg.png."""
    rng = np.random.default_rng(0)
    truth = []
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            seg = np.zeros((size, size), np.uint8)
            seg[: size // 2, : size // 2] = 1 + i % 2
            classes = {"cat" if i % 2 == 0 else "puppy": 1 + i % 2}
            image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
            buf = io.BytesIO()
            image.save(buf, format="JPEG")
            members = {
                "jpg": buf.getvalue(),
                "txt": f"a {next(iter(classes))} on the grass".encode(),
                "json": json.dumps({"caption": "unused", "classes": classes}).encode(),
                "seg.png": _png(seg),
            }
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            truth.append((seg, classes))
    return truth


def test_loader_reads_masks_and_classes_only_when_asked(tmp_path):
    truth = _write_shard(tmp_path / "00000.tar", 4)
    plain = next(iter(PairLoader(str(tmp_path), 4, image_size=16, shuffle=False, epochs=1)))
    assert plain.labels is None and plain.label_words is None
    batch = next(iter(PairLoader(str(tmp_path), 4, image_size=16, shuffle=False, epochs=1, labels=True)))
    assert batch.labels.dtype == torch.long and batch.labels.shape == (4, 16, 16)
    for b, (seg, classes) in enumerate(truth):
        assert np.array_equal(batch.labels[b].numpy(), seg)
        assert batch.label_words[b] == classes
    # another training size: nearest-neighbour with the image's geometry keeps ids ids
    small = next(iter(PairLoader(str(tmp_path), 2, image_size=8, shuffle=False, epochs=1, labels=True)))
    assert small.labels.shape == (2, 8, 8) and set(small.labels.unique().tolist()) <= {0, 1, 2}
    assert small.labels[0, :4, :4].eq(1).all() and small.labels[0, 4:].eq(0).all()
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("")
    with pytest.raises(TTDError, match="object masks are read from shards"):
        PairLoader(str(manifest), 2, labels=True)


def test_preprocess_labels_crops_the_centre_like_the_images():
    wide = np.tile(np.arange(16, dtype=np.uint8) // 2, (8, 1))  # columns 2c, 2c+1 hold id c
    out = preprocess_labels(Image.fromarray(wide), 4)  # 8×16 → 4×8 (ids 0..7) → centre 4×4
    assert out.tolist() == [[2, 3, 4, 5]] * 4


def test_pretrain_cli_with_the_dense_objective(tmp_path, capsys):
    from helpers import TINY

    import ttd

    (tmp_path / "shards").mkdir()
    _write_shard(tmp_path / "shards" / "00000.tar", 4, size=32)
    (tmp_path / "classes.txt").write_text("background\ncat,kitten\ndog,puppy\n")
    arch = tmp_path / "tiny.yaml"
    arch.write_text(yaml.safe_dump(TINY.to_dict()))
    out = tmp_path / "pre"
    argv = ["pretrain", "--data", str(tmp_path / "shards"), "--out", str(out), "--clip-config", str(arch), "--steps", "2",
            "--batch-size", "4", "--image-size", "32", "--workers", "0", "--no-tensorboard", "--no-progress",
            "--dense-weight", "0.5", "--dense-classes", str(tmp_path / "classes.txt")]
    assert main(argv) == 0
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    last = logged[-1]
    assert last["loss"] == pytest.approx(last["l_contrastive"] + 0.5 * last["l_dense"], rel=1e-4)
    assert 0 <= last["dense_acc"] <= 1
    assert "visual.proj" in load_file(str(out / "model.safetensors"))
    assert ttd.load_model(str(out / "model.safetensors"), device="cpu").config.image_size == 32
    capsys.readouterr()
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    assert main([*argv[:4], str(tmp_path / "other"), *argv[5:]]) == 2
    assert "class id 2 of 'puppy' is not among the 2 class names" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a pretraining key: `ttd train` has no such flag
        main(["train", "--data", str(tmp_path / "shards"), "--dense-weight", "1"])


def test_packaged_weights_load_by_name_and_a_missing_file_is_one_line(tmp_path, monkeypatch):
    from helpers import tiny_model

    import ttd
    from ttd.models import weights

    model = tiny_model()
    (tmp_path / "assets" / "miniworld").mkdir(parents=True)
    weights.save_weights(model, tmp_path / "assets" / "miniworld" / "clip.safetensors")
    monkeypatch.setattr(weights, "asset", lambda *parts: tmp_path.joinpath("assets", *parts))
    loaded = ttd.load_model("miniworld", device="cpu")
    assert loaded.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    monkeypatch.setattr(weights, "asset", lambda *parts: tmp_path.joinpath("elsewhere", *parts))
    with pytest.raises(TTDError, match="the packaged weights 'miniworld' are missing from this installation"):
        ttd.load_model("miniworld")


def test_the_embedded_miniworld_clip_is_fp16_on_disk_and_loads_as_fp32(capsys):
    import ttd
    from ttd.models import weights

    file = weights.asset(weights.KNOWN_WEIGHTS["miniworld"].packaged)
    assert file.stat().st_size <= 20 * 2**20
    model = ttd.load_model("miniworld", device="cpu")
    assert model.config.image_size == 64 and model.config.patch_size == 8
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert main(["info"]) == 0 and "miniworld" in capsys.readouterr().out
