"""Weights: every format round-trips to the outputs of the model it came from; transformers parity;
named weights from an offline hub cache; one-line errors for every bad input."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import pickle  # noqa: E402
import zipfile  # noqa: E402
from collections import OrderedDict  # noqa: E402
from typing import Optional  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

from ttd.errors import TTDError  # noqa: E402
from ttd.models import CLIPConfig, create_model, load_model  # noqa: E402
from ttd.models.weights import KNOWN_WEIGHTS, default_readout, load_weights, save_weights  # noqa: E402

torch.set_num_threads(1)

VOCAB = 1000  # tokens are fed as ids, so a small vocabulary keeps every fixture small
EOT = VOCAB - 1
# Widths of 64 give one head per tower: what OpenAI's and open_clip's width/64 rule infers for a
# bare state dict. ODD has head counts only a self-describing file (ours, transformers) can carry.
BARE = CLIPConfig(
    embed_dim=32, image_size=32, patch_size=8, vision_width=64, vision_layers=2, vision_heads=1,
    vocab_size=VOCAB, text_width=64, text_layers=2, text_heads=1,
)
ODD = CLIPConfig(**{**BARE.to_dict(), "vision_heads": 4, "text_heads": 2, "quick_gelu": False})


def _perturb(module: nn.Module, seed: int = 0) -> None:
    """Random values everywhere (LayerNorm scales and biases too), so every weight matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _source(config: CLIPConfig = BARE, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(config, dense="maskclip").eval()
    _perturb(model.clip, seed)
    return model


def _tokens(seed: int = 0) -> torch.Tensor:
    """Four rows of ids with EOT (the largest id) at different places and zero padding after it."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.zeros(4, 9, dtype=torch.long)
    for i, length in enumerate((3, 9, 5, 7)):
        rows[i, : length - 1] = torch.randint(1, EOT - 1, (length - 1,), generator=g)
        rows[i, length - 1] = EOT
    return rows


IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def _outputs(model) -> tuple[torch.Tensor, ...]:
    global_emb, dense = model.encode_image(IMAGES)
    return global_emb, dense, model.encode_tokens(_tokens())


def _assert_same_outputs(loaded, source, atol: float = 1e-6) -> None:
    for got, want in zip(_outputs(loaded), _outputs(source)):
        torch.testing.assert_close(got, want, atol=atol, rtol=0)


def _clip_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.clip.state_dict().items()}


# --- ttd's own format --------------------------------------------------------------------------
def test_own_format_round_trips_config_heads_activation_and_calibration(tmp_path):
    source = _source(ODD)
    with torch.no_grad():
        source.calibration.weight.fill_(7.5)
        source.calibration.bias.fill_(-1.25)
    path = save_weights(source, tmp_path / "ttd.safetensors")
    loaded = load_model(str(path), dense="maskclip", device="cpu")
    assert loaded.config == ODD  # 4 and 2 heads and exact GELU survive without any option
    assert loaded.calibration.weight.item() == 7.5 and loaded.calibration.bias.item() == -1.25
    assert loaded.source == str(path) and not loaded.training
    _assert_same_outputs(loaded, source, atol=0)
    # an explicit activation still wins
    assert load_weights(path, quick_gelu=True).config.quick_gelu is True


# --- open_clip files ---------------------------------------------------------------------------
def _write_open_clip(kind: str, state: dict, path):
    if kind == "safetensors":
        save_file(state, str(path))
    elif kind == "training":  # open_clip's training checkpoint: DDP prefixes inside a dict
        wrapped = {f"module.{k}": v for k, v in state.items()}
        torch.save({"epoch": 3, "name": "run", "state_dict": wrapped, "optimizer": {"state": {}}}, path)
    elif kind == "mask":  # a scripted open_clip model keeps its causal mask as a buffer
        torch.save({**state, "attn_mask": torch.full((77, 77), float("-inf")).triu(1)}, path)
    elif kind == "legacy":
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(state, path)


@pytest.mark.parametrize(
    "kind, name",
    [("bin", "open_clip_pytorch_model.bin"), ("pt", "epoch_32.pt"), ("safetensors", "open_clip_model.safetensors"),
     ("training", "epoch_3.pt"), ("mask", "scripted_state.pt"), ("legacy", "old.pth")],
)
def test_open_clip_files_round_trip(tmp_path, kind, name):
    source = _source()
    _write_open_clip(kind, _clip_state(source), tmp_path / name)
    loaded = load_model(str(tmp_path / name), device="cpu")
    assert loaded.config == BARE
    _assert_same_outputs(loaded, source, atol=0)


def test_half_precision_file_loads_as_fp32(tmp_path):
    source = _source()
    half = {k: v.half() for k, v in _clip_state(source).items()}
    torch.save(half, tmp_path / "half.bin")
    loaded = load_weights(tmp_path / "half.bin")
    assert all(v.dtype == torch.float32 for v in loaded.state_dict.values())
    assert all(torch.equal(loaded.state_dict[k], v.float()) for k, v in half.items())


def test_gelu_file_needs_the_option_and_the_default_is_quick_gelu(tmp_path):
    source = _source(CLIPConfig(**{**BARE.to_dict(), "quick_gelu": False}))
    torch.save(_clip_state(source), tmp_path / "laion.bin")
    assert load_weights(tmp_path / "laion.bin").config.quick_gelu is True  # documented default
    default = load_model(str(tmp_path / "laion.bin"), device="cpu")
    assert not torch.allclose(_outputs(default)[0], _outputs(source)[0], atol=1e-4)
    _assert_same_outputs(load_model(str(tmp_path / "laion.bin"), device="cpu", quick_gelu=False), source, atol=0)


def test_open_clip_config_beside_the_file_gives_heads_and_activation(tmp_path):
    source = _source(ODD)  # 4 vision heads of width 16, 2 text heads, exact GELU
    save_file(_clip_state(source), str(tmp_path / "open_clip_model.safetensors"))
    model_cfg = {"embed_dim": 32, "vision_cfg": {"width": 64, "head_width": 16}, "text_cfg": {"width": 64, "heads": 2}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    loaded = load_model(str(tmp_path), device="cpu")  # a snapshot folder
    assert loaded.config == ODD
    _assert_same_outputs(loaded, source, atol=0)


# --- OpenAI's TorchScript archives -------------------------------------------------------------
class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _OpenAIBlock(nn.Module):
    """OpenAI's block: nn.MultiheadAttention on (L, N, C) tokens, an explicit mask attribute."""

    def __init__(self, width: int, heads: int, attn_mask: Optional[torch.Tensor]):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=_QuickGELU(), c_proj=nn.Linear(4 * width, width))
        )
        self.ln_2 = nn.LayerNorm(width)
        self.attn_mask = attn_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.attn_mask
        if mask is not None:
            mask = mask[: x.shape[0], : x.shape[0]].to(x.dtype)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _OpenAITransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask: Optional[torch.Tensor] = None):
        super().__init__()
        self.resblocks = nn.Sequential(*[_OpenAIBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class _OpenAIVisual(nn.Module):
    def __init__(self, c: CLIPConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c.vision_width, c.patch_size, c.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(c.vision_width))
        self.positional_embedding = nn.Parameter(torch.randn(c.grid_size**2 + 1, c.vision_width))
        self.ln_pre = nn.LayerNorm(c.vision_width)
        self.transformer = _OpenAITransformer(c.vision_width, c.vision_layers, c.vision_heads)
        self.ln_post = nn.LayerNorm(c.vision_width)
        self.proj = nn.Parameter(torch.randn(c.vision_width, c.embed_dim) * 0.1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(image).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class _OpenAICLIP(nn.Module):
    """A tiny CLIP with OpenAI's module tree, names and metadata buffers, to be TorchScripted."""

    def __init__(self, c: CLIPConfig):
        super().__init__()
        mask = torch.full((c.context_length, c.context_length), float("-inf")).triu(1)
        self.visual = _OpenAIVisual(c)
        self.transformer = _OpenAITransformer(c.text_width, c.text_layers, c.text_heads, mask)
        self.token_embedding = nn.Embedding(c.vocab_size, c.text_width)
        self.positional_embedding = nn.Parameter(torch.randn(c.context_length, c.text_width) * 0.01)
        self.ln_final = nn.LayerNorm(c.text_width)
        self.text_projection = nn.Parameter(torch.randn(c.text_width, c.embed_dim) * 0.1)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))
        self.register_buffer("input_resolution", torch.tensor(c.image_size))
        self.register_buffer("context_length", torch.tensor(c.context_length))
        self.register_buffer("vocab_size", torch.tensor(c.vocab_size))

    @torch.jit.export
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)

    @torch.jit.export
    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding[: text.shape[1]]
        x = self.ln_final(self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(image), self.encode_text(text)


@pytest.fixture(scope="module")
def openai_archive(tmp_path_factory):
    """(path of a fp16 TorchScript archive laid out like OpenAI's ViT-B-16.pt, its fp32 eager twin)."""
    torch.manual_seed(0)
    reference = _OpenAICLIP(BARE).eval()
    _perturb(reference)
    path = tmp_path_factory.mktemp("openai") / "ViT-B-16.pt"
    torch.jit.script(reference.half()).save(str(path))  # OpenAI ships fp16
    return path, reference.float()  # fp32 holding the same (fp16-rounded) values


def test_torchscript_archive_layout_is_openais(openai_archive):
    path, _ = openai_archive
    names = zipfile.ZipFile(path).namelist()
    assert {"ViT-B-16/data.pkl", "ViT-B-16/constants.pkl", "ViT-B-16/data/0"} <= set(names)


def test_torchscript_archive_gives_jit_state_dict_without_metadata(openai_archive):
    path, _ = openai_archive
    loaded = load_weights(path)
    jit_state = torch.jit.load(str(path)).state_dict()  # our own fixture: safe to execute here
    metadata = {"input_resolution", "context_length", "vocab_size"}
    assert set(loaded.state_dict) == set(jit_state) - metadata
    assert all(torch.equal(loaded.state_dict[k], jit_state[k].float()) for k in loaded.state_dict)
    assert loaded.config == BARE and loaded.config.quick_gelu


def test_torchscript_archive_matches_openai_layout_outputs(openai_archive):
    path, reference = openai_archive
    loaded = load_model(str(path), dense="maskclip", device="cpu")
    with torch.no_grad():
        global_emb, dense = loaded.encode_image(IMAGES)
        torch.testing.assert_close(global_emb, F.normalize(reference.encode_image(IMAGES), dim=-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            loaded.encode_tokens(_tokens()), F.normalize(reference.encode_text(_tokens()), dim=-1), atol=1e-5, rtol=0
        )
    twin = create_model(BARE).eval()
    metadata = ("input_resolution", "context_length", "vocab_size")
    twin.clip.load_state_dict({k: v for k, v in reference.state_dict().items() if k not in metadata})
    _assert_same_outputs(loaded, twin, atol=0)
    assert dense.shape == (2, BARE.embed_dim, 4, 4)


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_torchscript_archive_with_code_in_its_pickle_is_refused_unexecuted(tmp_path, openai_archive):
    path, _ = openai_archive
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.namelist():
            data = pickle.dumps({"visual": _Boom(marker)}) if item.endswith("/data.pkl") else src.read(item)
            dst.writestr(item.replace("ViT-B-16/", "evil/"), data)
    with pytest.raises(TTDError, match=r"^refusing to load .*evil\.pt: its data\.pkl calls \w+\.mkdir, "):
        load_weights(evil)
    assert not marker.exists()


def test_torchscript_archive_with_a_cut_storage_is_corrupt(tmp_path, openai_archive):
    path, _ = openai_archive
    cut = tmp_path / "cut.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(cut, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            dst.writestr(item, data[:-2] if item == "ViT-B-16/data/0" else data)
    with pytest.raises(TTDError, match=r"^cannot read .*cut\.pt: the archive is corrupt or truncated \(storage 0 "):
        load_model(str(cut))


def test_pickle_with_code_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"visual.conv1.weight": torch.zeros(1), "x": _Boom(marker)}, tmp_path / "evil.bin")
    unsafe = r"^refusing to load .*evil\.bin: it holds Python objects besides tensors \(.*mkdir"
    with pytest.raises(TTDError, match=unsafe):
        load_model(str(tmp_path / "evil.bin"))
    assert not marker.exists()


# --- Hugging Face transformers -----------------------------------------------------------------
def _hf_model(act: str):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2,
            max_position_embeddings=77, hidden_act=act, eos_token_id=EOT, bos_token_id=EOT - 1, pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=2, image_size=32,
            patch_size=8, hidden_act=act,
        ),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    _perturb(model)
    return model


def _features(output) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is projected; 4.x a tensor
    return F.normalize(getattr(output, "pooler_output", output), dim=-1)


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_transformers_clip_matches_transformers(tmp_path, act):
    hf = _hf_model(act)
    hf.save_pretrained(tmp_path)
    wide = torch.randn(2, 3, 32, 56, generator=torch.Generator().manual_seed(2))  # a 4×7 patch grid
    with torch.no_grad():
        want_image = _features(hf.get_image_features(pixel_values=IMAGES))
        want_wide = _features(hf.get_image_features(pixel_values=wide, interpolate_pos_encoding=True))
        want_text = _features(hf.get_text_features(input_ids=_tokens()))
    for where in (tmp_path, tmp_path / "model.safetensors"):
        ours = load_model(str(where), device="cpu")
        assert (ours.config.quick_gelu, ours.config.vision_heads, ours.config.text_heads) == (act == "quick_gelu", 4, 2)
        with torch.no_grad():
            torch.testing.assert_close(ours.encode_image(IMAGES)[0], want_image, atol=1e-5, rtol=0)
            torch.testing.assert_close(ours.encode_image(wide)[0], want_wide, atol=1e-5, rtol=0)
            torch.testing.assert_close(ours.encode_tokens(_tokens()), want_text, atol=1e-5, rtol=0)


def test_transformers_pytorch_bin_with_config_beside_it(tmp_path):
    hf = _hf_model("gelu")
    hf.config.to_json_file(str(tmp_path / "config.json"))
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    from_bin = load_weights(tmp_path / "pytorch_model.bin")
    hf.save_pretrained(tmp_path / "safe")
    from_safe = load_weights(tmp_path / "safe")
    assert from_bin.config == from_safe.config and not from_bin.config.quick_gelu
    assert all(torch.equal(from_bin.state_dict[k], v) for k, v in from_safe.state_dict.items())


def test_transformers_activation_we_cannot_run_is_refused(tmp_path):
    hf = _hf_model("gelu")
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["hidden_act"] = "gelu_new"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(TTDError, match=r"config\.json: activation gelu / gelu_new is not supported"):
        load_model(str(tmp_path))


# --- named weights -----------------------------------------------------------------------------
def test_known_weights_name_hub_files_and_activations():
    for name in ("ViT-B-16/openai", "ViT-B-32/openai", "ViT-L-14/openai", "ViT-B-16/laion2b_s34b_b88k"):
        assert name in KNOWN_WEIGHTS
    assert KNOWN_WEIGHTS["ViT-B-16/openai"].repo_id == "timm/vit_base_patch16_clip_224.openai"
    assert KNOWN_WEIGHTS["ViT-B-16/laion2b_s34b_b88k"].repo_id == "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"
    assert all(spec.quick_gelu == name.endswith("/openai") for name, spec in KNOWN_WEIGHTS.items())


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read once at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _cache_file(cache, repo_id: str, filename: str, write) -> None:
    """Lay a file out as huggingface_hub does: a blob, a snapshot symlink, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    blob = repo / "blobs" / "f00d"
    write(blob)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / filename).symlink_to(os.path.relpath(blob, snapshot))


@pytest.mark.parametrize("name", ["ViT-B-16/openai", "ViT-B-16/laion2b_s34b_b88k"])
def test_named_weights_resolve_from_the_offline_cache(hub_cache, name):
    spec = KNOWN_WEIGHTS[name]
    source = _source(CLIPConfig(**{**BARE.to_dict(), "quick_gelu": spec.quick_gelu}))
    # only the .bin is cached: the .safetensors tried first is missing, as for older snapshots
    _cache_file(hub_cache, spec.repo_id, "open_clip_pytorch_model.bin", lambda p: torch.save(_clip_state(source), p))
    loaded = load_model(name.lower(), device="cpu")  # names match case-insensitively
    assert loaded.source == name and loaded.config.quick_gelu is spec.quick_gelu
    _assert_same_outputs(loaded, source, atol=0)


def test_named_weights_not_cached_offline_say_how_to_get_them(hub_cache):
    with pytest.raises(TTDError) as err:
        load_model("ViT-B-16/openai")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("weights ViT-B-16/openai are not in the local Hugging Face cache")
    assert "hf download timm/vit_base_patch16_clip_224.openai open_clip_model.safetensors" in message
    assert message.endswith("or pass the path of a local weights file")
    assert "--model miniworld-clip" in message


def test_an_unreachable_hub_fails_fast_without_offline_mode(hub_cache, monkeypatch):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    start = time.perf_counter()
    with pytest.raises(TTDError, match=r"the hub cannot be reached: offline, --model miniworld-clip"):
        load_model("ViT-B-16/openai")
    assert time.perf_counter() - start < 2.0


# --- positional embeddings and input sizes -----------------------------------------------------
def test_positional_embedding_is_the_identity_at_the_training_size():
    visual = _source().clip.visual
    g = visual.grid_size
    assert visual.interpolated_positions(g, g) is visual.positional_embedding
    # ... and the bicubic path it skips would have been the identity as well
    grid = visual.positional_embedding[1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    same = F.interpolate(grid, size=(g, g), mode="bicubic", align_corners=False)
    torch.testing.assert_close(same, grid, atol=1e-6, rtol=0)


def test_non_square_input_gives_a_non_square_dense_map():
    model = _source()
    with torch.no_grad():
        global_emb, dense = model.encode_image(torch.randn(1, 3, 40, 72))
    assert global_emb.shape == (1, 32) and dense.shape == (1, 32, 5, 9)
    assert torch.isfinite(dense).all()


# --- errors ------------------------------------------------------------------------------------
def _state_without(key: str) -> dict:
    state = _clip_state(_source())
    del state[key]
    return state


ERRORS = {
    "unknown name": (None, "ViT-B-16/openia", r"^unknown weights 'ViT-B-16/openia': choose one of ViT-B-32/openai, "),
    "missing file": (None, "nowhere/clip.pt", r"^no such weights file: nowhere/clip\.pt; pass an existing file"),
    "empty file": (lambda p: p.write_bytes(b""), "empty.bin", r"is empty: download it again$"),
    "not weights": (
        lambda p: p.write_text("hello, world\n" * 10), "notes.pt", r"is not a weights file: expected safetensors"
    ),
    "truncated safetensors": (
        lambda p: (save_file(_clip_state(_source()), str(p)), p.write_bytes(p.read_bytes()[:5000])),
        "cut.safetensors",
        r"^cannot read .*cut\.safetensors: the file is corrupt or truncated \(.+\); download it again$",
    ),
    "truncated zip": (
        lambda p: (torch.save(_clip_state(_source()), p), p.write_bytes(p.read_bytes()[:-4000])),
        "cut.pt",
        r"^cannot read .*cut\.pt: the file is corrupt or truncated",
    ),
    "not a clip": (
        lambda p: save_file({"encoder.weight": torch.zeros(2, 2)}, str(p)),
        "bert.safetensors",
        r"is not a CLIP checkpoint: it has no CLIP weight names \(its first keys: encoder\.weight\)$",
    ),
    "not a dict": (lambda p: torch.save([torch.zeros(1)], p), "list.pt", r"is not a CLIP checkpoint: it holds a list"),
    "resnet": (
        lambda p: torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1), "ln_final.weight": torch.zeros(1)}, p),
        "RN50.pt",
        r"is a ResNet CLIP \(RN50 …\): only ViT CLIPs are supported",
    ),
    "incomplete": (
        lambda p: torch.save({"visual.conv1.weight": torch.zeros(64, 3, 8, 8)}, p),
        "visual.pt",
        r"is not a complete ViT CLIP: missing visual\.positional_embedding, token_embedding\.weight, "
        r"positional_embedding \(\+2 more\)$",
    ),
    "missing layer weights": (
        lambda p: torch.save(_state_without("visual.transformer.resblocks.0.ln_2.weight"), p),
        "holes.pt",
        r"does not match a ViT CLIP of its own shapes: missing visual\.transformer\.resblocks\.0\.ln_2\.weight$",
    ),
    "wrong shapes": (
        lambda p: torch.save({**_clip_state(_source()), "visual.proj": torch.zeros(64, 16), "x.w": torch.ones(1)}, p),
        "shapes.pt",
        r"of its own shapes: unexpected x\.w; shapes differ: visual\.proj is \(64, 16\) not \(64, 32\)$",
    ),
    "empty folder": (
        lambda p: p.mkdir(), "folder", r"^folder .*folder holds no weights file \(looked for open_clip_model"
    ),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_input_gives_one_line_error(tmp_path, case):
    write, name, pattern = ERRORS[case]
    target = name
    if write is not None:
        write(tmp_path / name)
        target = str(tmp_path / name)
    for load in (load_weights, load_model):  # the model loader never shows a torch traceback either
        with pytest.raises(TTDError, match=pattern) as err:
            load(target)
        assert "\n" not in str(err.value)


def test_an_embedded_name_loads_with_its_registered_readout_unless_one_is_asked_for():
    from ttd.models import load_model

    assert load_model("miniworld-clip").name == KNOWN_WEIGHTS["miniworld-clip"].dense == "clip"
    assert load_model("miniworld").name == "maskclip"
    assert load_model("miniworld-clip", dense="sclip").name == "sclip"
    assert default_readout("miniworld-clip") == ("clip", "minmax") and default_readout("miniworld") == ("maskclip", "none")
    assert default_readout("ViT-B-16/openai") == default_readout("/some/file.safetensors") == ("maskclip", "none")
