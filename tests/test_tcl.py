"""TCL: the masker against hand computations, TCL-format checkpoints (written here with TCL's own key
names and outer layout), every refusal, and TTD training on a tiny TCL."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import make_pairs, write_manifest

import ttd
from ttd.cli import main
from ttd.errors import TTDError
from ttd.models import CLIPConfig, create_model
from ttd.models.lora import load_adapter
from ttd.models.tcl import ConvBlock, Gate, GatedDecoder, load_tcl
from ttd.models.weights import save_weights
from ttd.train import train
from ttd.config import load_config

# ViT with patch 16 (TCL's), tiny widths; heads = width / 64, since a state dict cannot say otherwise.
CFG = CLIPConfig(
    embed_dim=32, image_size=448, patch_size=16, vision_width=64, vision_layers=2, vision_heads=1,
    text_width=64, text_layers=2, text_heads=1,
)


def tcl_model(seed: int = 0):
    """A random TCL that looks trained: non-zero decoder gates, its own masker block, calibrated."""
    torch.manual_seed(seed)
    model = create_model(CFG, dense="tcl").eval()
    with torch.no_grad():
        for gate in (m for m in model.masker.modules() if isinstance(m, Gate)):
            gate.gate.uniform_(-1.0, 1.0)
        for p in model.masker.backbone.parameters():
            p.add_(0.02 * torch.randn_like(p))
        model.calibration.weight.fill_(7.0)
        model.calibration.bias.fill_(-1.5)
    return model


def tcl_state_dict(model, towers: bool = True) -> dict[str, torch.Tensor]:
    """``model`` under the names TCL's ``model.state_dict()`` uses (models/tcl/*.py)."""
    sd = {}
    if towers:
        for key, value in model.clip.state_dict().items():
            if key == "logit_scale":
                continue  # TCL deletes it from its text encoder
            if key == "visual.proj":
                sd["clip_image_encoder.clip_proj.proj"] = value
            elif key.startswith("visual.ln_post."):
                sd["clip_image_encoder.clip_proj.ln." + key.rsplit(".", 1)[1]] = value
            elif key.startswith("visual."):
                sd["clip_image_encoder.clip_visual." + key[len("visual.") :]] = value
            else:
                sd["clip_text_encoder.clip_text." + key] = value
    masker = "masker.image_encoder."
    for key, value in model.masker.backbone.state_dict().items():
        sd[masker + "backbone.transformer.resblocks.0." + key] = value
    for key, value in model.masker.decoder.state_dict().items():
        sd[masker + "decoder.decoder." + key] = value
    for key, value in model.masker.image_proj.state_dict().items():
        sd[masker + "decoder.image_proj." + key] = value
    sd["masker.sim2mask.w"] = model.calibration.weight.detach().clone()
    sd["masker.sim2mask.b"] = model.calibration.bias.detach().clone()
    sd["tcli_loss.logit_scale"] = sd["tclf_loss.logit_scale"] = torch.tensor(math.log(1 / 0.07))
    sd["pamr.aff_x.kernel"] = torch.zeros(8, 1, 3, 3)  # TCL's PAMR buffers, once it has evaluated
    return sd


class Payload:
    """Stands for TCL's pickled OmegaConf config; unpickling it would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_tcl(path, model, towers: bool = True, edit=None, **extra):
    sd = tcl_state_dict(model, towers)
    if edit:
        edit(sd)
    payload = Payload(path.parent / "pwned")
    torch.save({"model": sd, "optimizer": {"state": {}}, "step": 30000, "config": payload, **extra}, path)
    return path


def test_decoder_key_names_are_tcls():
    keys = set(GatedDecoder(8, n_layers=2, kernel_size=3, double=True).state_dict())
    for i in (0, 1):
        for conv in ("conv", "conv2"):
            for name in ("norm.weight", "norm.bias", "conv.weight", "conv.bias", "gate.gate"):
                keys.remove(f"net.{i}.{conv}.{name}")
    assert not keys


def test_decoder_matches_a_hand_computation():
    torch.manual_seed(0)
    dec = GatedDecoder(2, n_layers=1, kernel_size=3, double=True)
    with torch.no_grad():
        dec.net[0].conv.gate.gate.fill_(0.5)
        dec.net[0].conv2.gate.gate.fill_(-0.3)
        for p in dec.parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p))
    x = torch.randn(1, 2, 2, 3)

    def block(block, y):  # per pixel: LayerNorm over the 2 channels, exact GELU, 3×3 zero-padded conv
        mean = y.mean(0, keepdim=True)
        var = ((y - mean) ** 2).mean(0, keepdim=True)
        z = (y - mean) / torch.sqrt(var + 1e-5) * block.norm.weight[:, None, None] + block.norm.bias[:, None, None]
        z = 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
        c, h, w = z.shape
        out = torch.zeros(c, h, w)
        for o in range(c):
            for i in range(h):
                for j in range(w):
                    total = block.conv.bias[o]
                    for ci in range(c):
                        for di in (-1, 0, 1):
                            for dj in (-1, 0, 1):
                                if 0 <= i + di < h and 0 <= j + dj < w:
                                    total = total + block.conv.weight[o, ci, di + 1, dj + 1] * z[ci, i + di, j + dj]
                    out[o, i, j] = total
        return math.tanh(block.gate.gate.item()) * out

    y = x[0].repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # nearest ×2
    y = y + block(dec.net[0].conv, y)
    y = y + block(dec.net[0].conv2, y)
    with torch.no_grad():
        assert torch.allclose(dec(x)[0], y, atol=1e-5)


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_upsampled_conv_block_equals_the_block_on_the_upsampled_map(kernel):
    torch.manual_seed(kernel)
    block = ConvBlock(5, kernel).double()
    with torch.no_grad():
        block.gate.gate.fill_(0.8)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = block(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        assert torch.allclose(block.forward_upsampled(x), expected, atol=1e-12)


def test_masker_block_is_self_only_attention_with_residual_and_mlp():
    model = tcl_model()
    block = model.masker.backbone
    x = torch.randn(2, 1 + 4 * 3, 64)
    n = x.shape[1]
    diagonal_only = torch.full((n, n), float("-inf")).fill_diagonal_(0.0)
    y = block.ln_1(x).transpose(0, 1)
    attn, _ = F.multi_head_attention_forward(
        y, y, y, 64, 1, block.attn.in_proj_weight, block.attn.in_proj_bias, None, None, False, 0.0,
        block.attn.out_proj.weight, block.attn.out_proj.bias, training=False, attn_mask=diagonal_only,
    )
    ref = x + attn.transpose(0, 1)
    ref = ref + block.mlp(block.ln_2(ref))
    with torch.no_grad():
        patches = ref[:, 1:].transpose(1, 2).reshape(2, 64, 4, 3)
        expected = model.masker.image_proj(model.masker.decoder(patches))
        assert torch.allclose(model.masker(x, (4, 3)), expected, atol=1e-5)


def test_tcl_checkpoint_loads_and_gives_the_same_heatmaps_at_448(tmp_path):
    source = tcl_model()
    path = write_tcl(tmp_path / "tcl.pth", source)
    model = ttd.load_model(str(path))
    assert model.name == "tcl" and not (tmp_path / "pwned").exists()  # the pickled config never ran
    assert (model.calibration.weight.item(), model.calibration.bias.item()) == (7.0, -1.5)
    images = torch.randn(2, 3, 448, 448)
    texts = ["a cat", "a dog on a sofa"]
    with torch.no_grad():
        g, d = model.encode_image(images)
        g0, d0 = source.encode_image(images)
        heat, heat0 = model.heatmap(d, texts), source.heatmap(d0, texts)
        again = model.heatmap(model.encode_image(images)[1], texts)
    assert g.shape == (2, 32) and d.shape == (2, 32, 112, 112) and heat.shape == (2, 2, 112, 112)
    assert torch.equal(heat, again)
    assert torch.allclose(heat, heat0, atol=1e-5) and torch.allclose(g, g0, atol=1e-5)
    assert model.clip.logit_scale.item() == pytest.approx(math.log(100))


def test_checkpoint_without_towers_takes_them_from_clip_weights(tmp_path, monkeypatch):
    source = tcl_model()
    path = write_tcl(tmp_path / "tcl.pth", source, towers=False)
    towers = save_weights(source, tmp_path / "clip.safetensors")
    model = load_tcl(path, clip=towers)
    images = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images)[1], source.encode_image(images)[1], atol=1e-5)
    assert str(towers) in model.source
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(TTDError, match=r"ViT-B-16/openai are not in the local Hugging Face cache"):
        load_tcl(path)  # the default: OpenAI's ViT-B/16, as TCL builds it (offline here)
    cached = tmp_path / "home" / ".cache" / "clip" / "ViT-B-16.pt"  # where TCL's clip.load keeps it
    cached.parent.mkdir(parents=True)
    cached.write_bytes(towers.read_bytes())  # (the format is read from the content, not the name)
    assert str(cached) in ttd.load_model(str(path)).source


def _drop(key):
    return lambda sd: sd.pop(key)


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop("masker.image_encoder.decoder.decoder.net.1.conv2.gate.gate"),
         r"does not match TCL's masker: missing masker\.image_encoder\.decoder\.decoder\.net\.1\.conv2\.gate\.gate$"),
        (lambda sd: sd.update({"masker.extra.weight": torch.zeros(1)}),
         r"does not match TCL's layout: unexpected masker\.extra\.weight$"),
        (lambda sd: sd.update({"masker.image_encoder.decoder.image_proj.proj": torch.zeros(64, 16)}),
         r"masker: shapes differ: masker\.image_encoder\.decoder\.image_proj\.proj is \(64, 16\) not \(64, 32\)$"),
        (_drop("masker.sim2mask.b"), r"missing masker\.sim2mask\.b$"),
        (_drop("clip_image_encoder.clip_visual.ln_pre.bias"), r"does not match a ViT CLIP of its own shapes: missing visual\.ln_pre\.bias$"),
        (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("clip_text_encoder.")],
         r"holds only one CLIP tower \(no text tower\)"),
        (lambda sd: sd.update({"masker.image_encoder.backbone.transformer.resblocks.1.ln_1.weight": torch.zeros(64)}),
         r"more than one transformer block"),
    ],
)
def test_bad_checkpoints_are_refused_in_one_line(tmp_path, edit, message):
    path = write_tcl(tmp_path / "tcl.pth", tcl_model(), edit=edit)
    with pytest.raises(TTDError, match=message) as err:
        ttd.load_model(str(path))
    assert "\n" not in str(err.value)


def test_non_tcl_files_and_other_variants_are_refused(tmp_path):
    clip_file = save_weights(tcl_model(), tmp_path / "clip.safetensors")
    with pytest.raises(TTDError, match=r"is not a TCL checkpoint: it has no masker\.image_encoder\.\* keys"):
        load_tcl(clip_file)
    torch.save({"model": {"a": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(TTDError, match=r"other\.pth is not a TCL checkpoint: it has no masker.* \(its first keys: a\)"):
        load_tcl(tmp_path / "other.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(TTDError, match="expected a torch.save zip file"):
        load_tcl(tmp_path / "text.pth")
    path = write_tcl(tmp_path / "tcl.pth", tcl_model())
    with pytest.raises(TTDError, match=r"is a TCL checkpoint: pass --dense tcl \(or no --dense\), not 'sclip'"):
        ttd.load_model(str(path), dense="sclip")
    # A CLIP file with an explicit --dense tcl: TCL before training (TCL's own initialisation).
    fresh = ttd.load_model(str(clip_file), dense="tcl")
    assert fresh.name == "tcl" and all(g.gate.item() == 0 for g in fresh.masker.modules() if isinstance(g, Gate))


def test_tcl_state_dict_with_tensors_replaced_by_objects_is_refused(tmp_path):
    path = write_tcl(tmp_path / "tcl.pth", tcl_model(), edit=lambda sd: sd.update({"masker.sim2mask.w": Payload("x")}))
    with pytest.raises(TTDError, match=r"holds objects that are not tensors \(masker\.sim2mask\.w\)"):
        load_tcl(path)


def test_segment_cli_on_a_tcl_checkpoint(tmp_path, capsys):
    from PIL import Image

    path = write_tcl(tmp_path / "tcl.pth", tcl_model())
    Image.new("RGB", (200, 150), (120, 40, 40)).save(tmp_path / "photo.png")
    code = main(["segment", str(tmp_path / "photo.png"), "--model", str(path), "--classes", "cat,dog",
                 "--protocol", "tcl", "--out", str(tmp_path / "overlay.png"), "--device", "cpu"])
    assert code == 0 and (tmp_path / "overlay.png").is_file()


def test_ttd_trains_tcl_and_its_adapter_loads_only_onto_the_same_tcl(tmp_path):
    manifest = write_manifest(tmp_path / "data", make_pairs(4))
    model = tcl_model()
    decoder_before = model.masker.decoder.net[0].conv.conv.weight.detach().clone()
    cfg = load_config(data=str(manifest), out=str(tmp_path / "run"), dense="tcl", steps=2, batch_size=2, image_size=64,
                      workers=0, warmup_steps=0, lr=1e-2, log_every=1, save_every=100, tensorboard=False)
    result = train(cfg, model=model, progress=False)
    assert not torch.equal(model.masker.decoder.net[0].conv.conv.weight, decoder_before)  # TCL's decoder trains
    assert torch.equal(model.masker.backbone.attn.in_proj_weight, tcl_model().masker.backbone.attn.in_proj_weight)
    fresh = load_adapter(tcl_model(), result.adapter)
    images = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images)[1], fresh.encode_image(images)[1], atol=1e-6)
    with pytest.raises(TTDError, match="trained for dense variant 'tcl' but the model is 'maskclip'; pass --dense tcl"):
        load_adapter(create_model(CFG, dense="maskclip"), result.adapter)
    other = tcl_model()
    with torch.no_grad():
        other.masker.backbone.attn.in_proj_weight.add_(0.1)  # another TCL on the same CLIP
    with pytest.raises(TTDError, match=r"was trained on base weights .*\(fingerprint"):
        load_adapter(other, result.adapter)


def test_tcl_protocol_mixes_the_maskclip_map_in_after_pamr_as_tcls_authors_do(tmp_path):
    """``--protocol tcl`` on a one-window image against a hand-written loop of TCL's generate_masks:
    soft masks, PAMR on them, then kp_w · sigmoid(10·(cos − 0.25)) of CLIP's self-attending last block."""
    from ttd.images import normalize
    from ttd.protocols import load_protocol
    from ttd.segment import Segmenter

    model = load_tcl(write_tcl(tmp_path / "tcl.pth", tcl_model()))
    protocol = load_protocol("tcl")
    assert protocol.kp_weight == 0.3 and protocol.pamr and protocol.background_threshold == 0.40
    torch.manual_seed(1)
    image = torch.rand(1, 3, 448, 448)
    segmenter = Segmenter(model, protocol, ["cat", "dog"], use_cache=False)
    text = segmenter.query_embeddings
    scores = segmenter.query_scores_batch(image, text, calibrated=True)

    with torch.no_grad():
        x = normalize(image, protocol.pixel_mean, protocol.pixel_std)
        visual = model.clip.visual
        tokens, grid = visual.trunk(x)
        emb = F.normalize(model.masker(tokens, grid), dim=1)
        masks = torch.sigmoid(7.0 * torch.einsum("bchw,nc->bnhw", emb, text) - 1.5)  # Sim2Mask of the file
        block, n = visual.last_block, tokens.shape[1]
        diagonal_only = torch.full((n, n), float("-inf")).fill_diagonal_(0.0)
        y = block.ln_1(tokens).transpose(0, 1)
        attn, _ = F.multi_head_attention_forward(
            y, y, y, 64, 1, block.attn.in_proj_weight, block.attn.in_proj_bias, None, None, False, 0.0,
            block.attn.out_proj.weight, block.attn.out_proj.bias, training=False, attn_mask=diagonal_only,
        )
        h = tokens + attn.transpose(0, 1)
        h = h + block.mlp(block.ln_2(h))
        clip_map = (visual.ln_post(h[:, 1:]) @ visual.proj).transpose(1, 2).reshape(1, -1, *grid)
        kp = torch.sigmoid((torch.einsum("bchw,nc->bnhw", F.normalize(clip_map, dim=1), text) - 0.25) * 10.0)
        kp = F.interpolate(kp, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        up = lambda m: F.interpolate(m, size=(448, 448), mode="bilinear", align_corners=False)  # noqa: E731
        expected = 0.3 * up(kp) + 0.7 * segmenter._refine(image, up(masks))
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
    without = Segmenter(model, protocol.replace(kp_weight=0.0), ["cat", "dog"], use_cache=False)
    torch.testing.assert_close(without.query_scores_batch(image, text, calibrated=True), segmenter._refine(image, up(masks)),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
