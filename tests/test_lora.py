"""LoRA adapters: injection, freezing, merging, saving and loading onto a fresh base."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from helpers import TINY, tiny_model

import ttd
from ttd.errors import TTDError
from ttd.models.lora import (
    LoRAAttention,
    LoRAConfig,
    inject_lora,
    load_adapter,
    merge_adapter,
    read_adapter_metadata,
    save_adapter,
    set_trainable,
)

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
TEXTS = ["a red dot", "a blue square on a green background"]


def outputs(model):
    model.eval()
    with torch.no_grad():
        global_emb, dense = model.encode_image(IMAGES)
        text = model.encode_tokens(ttd.tokenize(TEXTS))
        return global_emb, dense, text, model.heatmap(dense, text)


def trained(model, seed=1):
    """Give every adapter (and the calibration) non-trivial values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora." in name or name.startswith("calibration."):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def assert_close(a, b, atol=1e-5):
    for x, y in zip(a, b):
        assert torch.allclose(x, y, atol=atol), (x - y).abs().max()


def test_injection_leaves_outputs_unchanged_and_keeps_base_names():
    model = tiny_model()
    before = outputs(model)
    base_keys = set(model.state_dict())
    inject_lora(model)
    assert_close(outputs(model), before, atol=0)
    keys = set(model.state_dict())
    assert base_keys <= keys  # a base checkpoint still loads by name
    added = keys - base_keys
    assert all(".lora." in k for k in added)
    assert len(added) == 2 * 2 * 4 * 2  # towers × layers × (q, k, v, out) × (A, B)
    assert "clip.visual.transformer.resblocks.0.attn.lora.q.A" in added
    assert "clip.transformer.resblocks.1.attn.out_proj.lora.B" in added
    with pytest.raises(TTDError, match="already holds LoRA adapters"):
        inject_lora(model)


def test_targets_and_towers_select_projections():
    model = inject_lora(tiny_model(), LoRAConfig(rank=4, targets=("v",), towers=("image",)))
    added = sorted(k for k in model.state_dict() if ".lora." in k)
    assert added == sorted(f"clip.visual.transformer.resblocks.{i}.attn.lora.v.{m}" for i in (0, 1) for m in "AB")
    assert model.state_dict()[added[0]].shape == (4, TINY.vision_width)
    with pytest.raises(TTDError, match="unknown LoRA target"):
        LoRAConfig(targets=("q", "mlp"))


def test_update_lands_on_its_own_slice_of_the_fused_projection():
    model = trained(inject_lora(tiny_model(), LoRAConfig(targets=("k",))))
    attn = model.clip.visual.transformer.resblocks[0].attn
    assert isinstance(attn, LoRAAttention)
    x = torch.randn(2, 5, TINY.vision_width)
    q, k, v = attn.qkv(x)
    base_q, base_k, base_v = super(LoRAAttention, attn).qkv(x)
    assert torch.equal(q, base_q) and torch.equal(v, base_v) and not torch.allclose(k, base_k)
    # the same update written in weight space: rows C..2C of the fused weight
    c = TINY.vision_width
    weight = attn.in_proj_weight.detach().clone()
    weight[c : 2 * c] += attn.lora["k"].scale * attn.lora["k"].B @ attn.lora["k"].A
    expected = (x @ weight.T + attn.in_proj_bias)[..., c : 2 * c]
    assert torch.allclose(k.transpose(1, 2).reshape(2, 5, c), expected, atol=1e-5)


def test_set_trainable():
    model = inject_lora(tiny_model())
    names = set_trainable(model, "lora")
    assert set(names) == {n for n, _ in model.named_parameters() if ".lora." in n} | {"calibration.weight", "calibration.bias"}
    assert all(p.requires_grad == (n in names) for n, p in model.named_parameters())
    assert "calibration.weight" not in set_trainable(model, "lora", calibration=False)
    assert len(set_trainable(model, "full")) == len(list(model.parameters()))
    with pytest.raises(TTDError, match="needs adapters"):
        set_trainable(tiny_model(), "lora")
    with pytest.raises(TTDError, match="unknown finetune mode 'half'"):
        set_trainable(model, "half")


def test_merged_equals_unmerged():
    model = trained(inject_lora(tiny_model(), LoRAConfig(rank=4, alpha=16)))
    unmerged = outputs(model)
    assert not torch.allclose(unmerged[2], outputs(tiny_model())[2])  # the adapters do something
    merge_adapter(model)
    assert_close(outputs(model), unmerged)
    assert not any(".lora." in k for k in model.state_dict())
    assert set(model.state_dict()) == set(tiny_model().state_dict())


def test_saved_adapter_reproduces_the_model_on_a_fresh_base(tmp_path):
    model = trained(inject_lora(tiny_model(), LoRAConfig(rank=4, dropout=0.1)))
    set_trainable(model, "lora")
    path = save_adapter(model, tmp_path / "run")
    assert path == tmp_path / "run" / "adapter.safetensors"
    meta = json.loads((tmp_path / "run" / "adapter.json").read_text())
    assert meta["dense"] == "maskclip" and meta["base"] == "random" and meta["lora"]["rank"] == 4
    assert meta == {**read_adapter_metadata(path), "tensors": 2 * 2 * 4 * 2 + 2}
    assert set(load_file(str(path))) == {k for k in model.state_dict() if ".lora." in k or k.startswith("calibration.")}
    expected = outputs(model)
    assert_close(outputs(load_adapter(tiny_model(), path)), expected)
    assert_close(outputs(load_adapter(tiny_model(), tmp_path / "run", merge=True)), expected)


def test_full_finetune_adapter_round_trip(tmp_path):
    model = tiny_model()
    set_trainable(model, "full")
    with torch.no_grad():
        model.clip.visual.proj.mul_(1.5)
        model.calibration.bias.fill_(-1.0)
    save_adapter(model, tmp_path / "full.safetensors")
    assert read_adapter_metadata(tmp_path / "full.safetensors")["finetune"] == "full"
    assert_close(outputs(load_adapter(tiny_model(seed=5), tmp_path / "full.safetensors")), outputs(model))


def test_adapter_errors_are_one_line(tmp_path):
    model = trained(inject_lora(tiny_model()))
    path = save_adapter(model, tmp_path / "a.safetensors")
    cases = [
        (lambda: load_adapter(tiny_model(), tmp_path / "missing.safetensors"), "adapter not found"),
        (lambda: load_adapter(tiny_model(seed=3), path), r"trained on base weights 'random' \(fingerprint"),
        (lambda: load_adapter(tiny_model(dense="sclip"), path), "trained for dense variant 'maskclip' but the model is 'sclip'"),
        (lambda: load_adapter(ttd.create_model(TINY, vision_width=128, vision_heads=2), path), "needs a base model with vision_width=64"),
    ]
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    cases.append((lambda: load_adapter(tiny_model(), tmp_path / "plain.safetensors"), "is not a ttd adapter"))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    cases.append((lambda: load_adapter(tiny_model(), tmp_path / "junk.safetensors"), "cannot read adapter"))
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("lora.q.A"))
    meta = {"ttd": json.dumps(read_adapter_metadata(path))}
    save_file({**tensors, key: torch.zeros(3, 3)}, str(tmp_path / "shape.safetensors"), metadata=meta)
    cases.append((lambda: load_adapter(tiny_model(), tmp_path / "shape.safetensors"), f"{key} has shape \\(3, 3\\)"))
    save_file({k: v for k, v in tensors.items() if k != key}, str(tmp_path / "short.safetensors"), metadata=meta)
    cases.append((lambda: load_adapter(tiny_model(), tmp_path / "short.safetensors"), f"missing '{key}'"))
    for call, message in cases:
        with pytest.raises(TTDError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
