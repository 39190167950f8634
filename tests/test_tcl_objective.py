"""TCL's training objective against a hand-written reference of the authors' formulas, what it
trains and what it leaves frozen, and `ttd pretrain --objective tcl` writing a TCL-layout checkpoint."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY, make_pairs, tiny_model, write_shards
from test_tcl import tcl_state_dict as hand_written_tcl_state_dict

from ttd.cli import main
from ttd.method.tcl import TCLObjective, gumbel_sigmoid, masked_pool, total_variation
from ttd.models import load_model
from ttd.models.tcl import load_tcl, save_tcl, tcl_state_dict
from ttd.models.tokenizer import tokenize
from ttd.models.weights import save_weights


def _batch(n: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    captions = [c for _, c in make_pairs(n, seed)]
    return SimpleNamespace(images=torch.randn(n, 3, TINY.image_size, TINY.image_size), captions=captions)


def _reference_loss(model, batch, weights=(0.1, 0.4, 1.0)) -> torch.Tensor:
    """TCL's loss for one process, written from the authors' equations step by step."""
    tcl_w, area_w, tv_w = weights
    visual = model.clip.visual
    x, grid = visual.trunk(batch.images)
    text = model.encode_tokens(tokenize(batch.captions, model.config.context_length))
    block = model.masker.backbone
    h = x + block.attn.project_out(block.attn.qkv(block.ln_1(x))[2])
    h = h + block.mlp(block.ln_2(h))
    emb = model.masker.image_proj(model.masker.decoder(h[:, 1:].transpose(1, 2).reshape(len(x), -1, *grid)))
    n = len(x)
    sim = torch.einsum("bchw,nc->bnhw", emb / emb.norm(dim=1, keepdim=True), text)
    logits = model.calibration.weight * sim + model.calibration.bias
    soft = torch.sigmoid(logits)
    pos = torch.stack([soft[i, i] for i in range(n)])
    neg = torch.stack([soft[i, j] for i in range(n) for j in range(n) if i != j])
    area = (pos.mean() - 0.4).abs() + neg.mean().abs()
    pooled = torch.stack([torch.stack([(emb[i] * soft[i, j]).sum((1, 2)) / (soft[i, j].sum() + 1e-6) for j in range(n)]) for i in range(n)])
    pooled = pooled / pooled.norm(dim=-1, keepdim=True)
    s_f, s_i = (model.tcl_loss_scales.scale(k) for k in ("tclf", "tcli"))
    labels = torch.arange(n)
    img_txt = torch.stack([torch.stack([pooled[i, j] @ text[j] for j in range(n)]) for i in range(n)])
    txt_img = img_txt.T  # caption j against image i: image i pooled under caption j's mask
    tclf = (F.cross_entropy(s_f * img_txt, labels) + F.cross_entropy(s_f * txt_img, labels)) / 2
    torch.manual_seed(123)
    u = torch.rand_like(logits[labels, labels]).clamp(1e-6, 1 - 1e-6)
    noisy = torch.sigmoid(logits[labels, labels] + torch.log(u) - torch.log(1 - u))
    hard = (noisy > 0.5).float() - noisy.detach() + noisy
    masked = F.interpolate(hard[:, None], size=batch.images.shape[-2:], mode="nearest") * batch.images
    e = model.clip.encode_image(masked)
    e = e / e.norm(dim=-1, keepdim=True)
    tcli = (F.cross_entropy(s_i * e @ text.T, labels) + F.cross_entropy(s_i * text @ e.T, labels)) / 2

    def tv(m):
        return (m[..., :, 1:] - m[..., :, :-1]).abs().mean() + (m[..., 1:, :] - m[..., :-1, :]).abs().mean()

    return tcl_w * (tcli + tclf) + area_w * area + tv_w * (tv(emb) + tv(soft))


def _objective_on(model, **kwargs):
    objective = TCLObjective(**kwargs)
    objective.prepare(model)
    names = objective.trainable(model)
    return objective, names


def test_loss_equals_a_hand_written_reference():
    model = tiny_model("tcl").train()
    objective, _ = _objective_on(model)
    batch = _batch()
    expected = _reference_loss(model, batch)
    torch.manual_seed(123)  # the Gumbel noise of the hard mask: the reference draws the same
    loss, metrics = objective(model, batch)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert set(metrics) == set(objective.metrics)


def test_only_the_masker_sim2mask_and_temperatures_train():
    model = tiny_model("tcl").train()
    objective, names = _objective_on(model, decoder_only_steps=1)
    assert names and all(n.startswith(("masker.", "calibration.", "tcl_loss_scales.")) for n in names)
    assert not any(p.requires_grad for p in model.clip.parameters())
    for step, trained in ((0, False), (1, True)):  # TCL's first phase trains the decoder alone
        objective.begin_step(step)
        model.zero_grad(set_to_none=True)
        loss, _ = objective(model, _batch(seed=step))
        loss.backward()
        assert all(p.grad is None for p in model.clip.parameters())
        assert (model.masker.backbone.attn.in_proj_weight.grad is not None) is trained
        assert model.masker.decoder.net[0].conv.gate.gate.grad is not None
        assert model.calibration.bias.grad is not None and model.tcl_loss_scales.tcli.grad is not None


def test_building_blocks():
    torch.manual_seed(0)
    logits = torch.randn(1000, requires_grad=True)
    hard = gumbel_sigmoid(logits)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    hard.sum().backward()  # straight-through: the gradient of the noisy sigmoid, never zero
    assert (logits.grad > 0).all()
    ramp = torch.arange(4.0).repeat(1, 1, 3, 1)  # rows 0 1 2 3: horizontal steps 1, vertical 0
    assert float(total_variation(ramp)) == 1.0
    embedding = torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]])  # (2, 1, 1, 2)
    masks = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]], [[[0.0, 1.0]], [[0.5, 0.5]]]])  # (2, 2, 1, 2)
    pooled = masked_pool(embedding, masks, eps=0.0)
    torch.testing.assert_close(pooled[..., 0], torch.tensor([[1.0, 2.0], [7.0, 6.0]]))


def test_the_objective_needs_a_tcl_model():
    with pytest.raises(Exception, match="use --dense tcl"):
        TCLObjective().prepare(tiny_model("maskclip"))


def test_tcl_layout_matches_tcls_names_and_round_trips(tmp_path):
    model = tiny_model("tcl")
    expected = hand_written_tcl_state_dict(model)
    ours = tcl_state_dict(model, {"tcli": torch.tensor(math.log(1 / 0.07)), "tclf": torch.tensor(math.log(1 / 0.07))})
    assert set(ours) - {"clip_text_encoder.clip_text.logit_scale"} == set(expected) - {"pamr.aff_x.kernel"}
    path = save_tcl(model, tmp_path / "tcl.pth")
    assert "model" in torch.load(path, weights_only=True)  # plain tensors and strings: no code in the pickle
    back = load_tcl(path)
    images = torch.randn(2, 3, TINY.image_size, TINY.image_size)
    with torch.no_grad():
        for a, b in zip(model.encode_image(images), back.encode_image(images)):
            torch.testing.assert_close(a, b)
    assert back.config == model.config
    half = load_tcl(save_tcl(model, tmp_path / "half.pth", dtype=torch.float16))
    assert half.masker.decoder.net[0].conv.conv.weight.dtype == torch.float32
    assert (tmp_path / "half.pth").stat().st_size < 0.6 * path.stat().st_size


def test_pretrain_objective_tcl_writes_a_tcl_checkpoint_and_resumes_exactly(tmp_path, capsys):
    shards = write_shards(tmp_path / "shards", make_pairs(16), per_shard=8)
    init = save_weights(tiny_model("clip"), tmp_path / "clip.safetensors")
    common = ["pretrain", "--data", str(shards), "--objective", "tcl", "--dense", "tcl", "--init", str(init),
              "--steps", "4", "--batch-size", "4", "--warmup-steps", "1", "--decoder-only-steps", "2",
              "--masker-layers", "1", "--workers", "0", "--save-every", "2", "--no-tensorboard"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert "tcl.pth" in capsys.readouterr().out
    assert main([*common, "--out", str(tmp_path / "b"), "--stop-after", "2"]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = (torch.load(tmp_path / r / "tcl.pth", weights_only=True)["model"] for r in "ab")
    assert a.keys() == b.keys() and "tclf_loss.logit_scale" in a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    model = load_model(str(tmp_path / "a" / "tcl.pth"))
    clip = load_model(str(init))
    torch.testing.assert_close(model.clip.visual.conv1.weight, clip.clip.visual.conv1.weight)  # CLIP stayed frozen
    assert len(model.masker.decoder.net) == 1


@pytest.mark.parametrize("flags", [["--dense", "maskclip", "--init", "x"], ["--dense", "tcl"]])
def test_tcl_objective_without_tcl_or_init_is_a_one_line_error(tmp_path, capsys, flags):
    shards = write_shards(tmp_path / "shards", make_pairs(4), per_shard=4)
    assert main(["pretrain", "--data", str(shards), "--objective", "tcl", *flags, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pass --dense tcl and --init" in err and len(err.splitlines()) == 1
