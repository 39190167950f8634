"""Real CLIP weights, from whatever file a user holds, as one OpenAI-named fp32 state dict.

Formats, each recognised from the file's content (never its name):

* OpenAI's TorchScript archives (``ViT-B-16.pt``), read without running them (:mod:`.torchscript`);
* open_clip checkpoints (``.bin`` / ``.pt`` / ``.safetensors``; training checkpoints with a
  ``state_dict`` and ``module.`` prefixes too);
* Hugging Face ``transformers`` CLIP (a folder, or ``model.safetensors`` / ``pytorch_model.bin``
  with ``config.json`` beside it), renamed to OpenAI's keys;
* named weights (``ViT-B-16/openai`` …) fetched once from the Hugging Face hub into its cache,
  or shipped inside the package (``miniworld``: the mini-world CLIP, no download at all);
* ttd's own ``.safetensors`` (:func:`save_weights`), whose metadata carries the configuration and
  the heatmap calibration.

Safety: safetensors, or ``torch.load(weights_only=True)``, or the restricted TorchScript reader;
nothing from a weights file is ever executed.

Activation: a state dict does not say whether its weights were trained with QuickGELU (OpenAI,
MetaCLIP, DFN) or exact GELU (most LAION / DataComp models). Named weights, ``config.json``,
``open_clip_config.json`` and ttd's metadata say; for any other file the default is QuickGELU,
because OpenAI's ViT-B/16 is what MaskCLIP, TCL and TTD are built on. ``quick_gelu=True/False``
always wins over both.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import TTDError
from ..io import asset, atomic_write_bytes
from .clip import CLIP, CLIPConfig, config_from_state_dict
from .torchscript import is_torchscript_archive, read_torchscript_weights

if TYPE_CHECKING:
    from .dense import DenseCLIP

__all__ = [
    "KNOWN_WEIGHTS", "LoadedWeights", "WeightSpec", "default_readout", "embedded_adapter", "embedded_file", "embedded_models",
    "load_weights",
    "recommended_protocol", "save_weights",
]  # fmt: skip

DEFAULT_QUICK_GELU = True
FORMAT = "ttd.clip"

OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class WeightSpec:
    """Where named weights live on the Hugging Face hub, and what their state dict cannot say;
    or, with ``packaged``, the ttd ``.safetensors`` file inside the package that holds them (an
    embedded test bed, with its TTD adapter, the kind of dense model it stands for, the dense
    readout the adapter was trained with and the segmentation protocol it is meant for)."""

    repo_id: str
    quick_gelu: bool
    filenames: tuple[str, ...] = OPEN_CLIP_FILES  # tried in order, as open_clip does
    vision_heads: int | None = None  # None: width / 64, as OpenAI and open_clip build them
    text_heads: int | None = None
    packaged: str | None = None  # path under ttd/assets; its metadata says the rest
    adapter: str | None = None  # its TTD adapter, under ttd/assets
    kind: str | None = None  # "maskclip-like" (plain InfoNCE) or "tcl-like" (trained with a dense loss)
    dense: str = "maskclip"  # the dense readout it is meant for
    protocol: str | None = None  # recommended segmentation protocol preset (None: each command's default)
    caption_normalize: str = "none"  # how its caption maps are shown and thresholded (a protocol knob)


# Hub repositories and activations as open_clip's pretrained registry lists them.
KNOWN_WEIGHTS: dict[str, WeightSpec] = {
    "ViT-B-32/openai": WeightSpec("timm/vit_base_patch32_clip_224.openai", quick_gelu=True),
    "ViT-B-16/openai": WeightSpec("timm/vit_base_patch16_clip_224.openai", quick_gelu=True),
    "ViT-L-14/openai": WeightSpec("timm/vit_large_patch14_clip_224.openai", quick_gelu=True),
    "ViT-L-14-336/openai": WeightSpec("timm/vit_large_patch14_clip_336.openai", quick_gelu=True),
    "ViT-B-32/laion2b_s34b_b79k": WeightSpec("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", quick_gelu=False),
    "ViT-B-16/laion2b_s34b_b88k": WeightSpec("laion/CLIP-ViT-B-16-laion2B-s34B-b88K", quick_gelu=False),
    "ViT-B-16/datacomp_xl_s13b_b90k": WeightSpec("laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K", quick_gelu=False),
    "ViT-H-14/laion2b_s32b_b79k": WeightSpec(
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", quick_gelu=False, vision_heads=16, text_heads=16
    ),
    # the small CLIPs pretrained on the mini-world (docs/pretraining.md), embedded: they work offline
    "miniworld": WeightSpec(
        "", quick_gelu=False, packaged="miniworld/clip.safetensors", adapter="miniworld/ttd_adapter.safetensors",
        kind="tcl-like", dense="maskclip", protocol="miniworld",
    ),
    "miniworld-clip": WeightSpec(
        "", quick_gelu=False, packaged="miniworld/clip_infonce.safetensors", adapter="miniworld/ttd_adapter_infonce.safetensors",
        kind="maskclip-like", dense="clip", protocol="miniworld", caption_normalize="minmax",
    ),
}


def embedded_models() -> dict[str, WeightSpec]:
    """The weights shipped inside the package (they load without any download), by name."""
    return {name: spec for name, spec in KNOWN_WEIGHTS.items() if spec.packaged}


def default_readout(name: str) -> tuple[str, str]:
    """The dense readout and the caption-map normalisation weights ``name`` are meant for: the
    registry's for a known name (``miniworld-clip``: its patch tokens, maps min-max normalised per
    image, since at the default calibration they sit below the threshold), else MaskCLIP's on raw maps."""
    spec = KNOWN_WEIGHTS.get(str(name))
    return (spec.dense, spec.caption_normalize) if spec else ("maskclip", "none")


def embedded_file(name: str) -> Path | None:
    """The packaged weights file of the embedded weights ``name`` (None for other weights)."""
    spec = KNOWN_WEIGHTS.get(str(name))
    return asset(spec.packaged) if spec is not None and spec.packaged else None


def embedded_adapter(name: str) -> Path | None:
    """The TTD adapter shipped for the embedded weights ``name`` (None for other weights)."""
    spec = KNOWN_WEIGHTS.get(name)
    return asset(spec.adapter) if spec is not None and spec.adapter else None


@dataclass
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]  # OpenAI key names, fp32, exactly the keys of CLIP(config)
    config: CLIPConfig
    source: str
    calibration: dict[str, torch.Tensor] | None = None  # HeatmapCalibration's state, when saved


@dataclass
class _Hints:
    """What a file's surroundings say about the model beyond its tensor shapes."""

    quick_gelu: bool | None = None
    vision_heads: int | None = None
    text_heads: int | None = None
    config: CLIPConfig | None = None  # ttd's own files carry the whole configuration
    calibration: dict[str, torch.Tensor] | None = None


# --- public API --------------------------------------------------------------------------------
def load_weights(name_or_path: str | Path, quick_gelu: bool | None = None) -> LoadedWeights:
    """Named weights or a local file/folder → an fp32 OpenAI-named state dict and its config.

    Every problem (unknown name, missing or corrupt file, not a ViT CLIP, weights not cached
    while offline) raises a one-line :class:`TTDError`; the returned state dict is checked key by
    key and shape by shape against ``CLIP(config)``, so loading it cannot fail.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    spec = _known_spec(text)
    if path.exists():
        source, tensors, hints = str(path), *_read(path)
    elif spec is not None and spec[1].packaged:
        name, spec = spec
        file = asset(spec.packaged)
        if not file.is_file():
            raise TTDError(f"the packaged weights {name!r} are missing from this installation ({file}); reinstall ttd")
        source, (tensors, hints) = name, _read(file)
    elif spec is not None:
        name, spec = spec
        source, hints = name, _Hints(spec.quick_gelu, spec.vision_heads, spec.text_heads)
        tensors, _ = _read(_download(name, spec))
    elif isinstance(name_or_path, Path) or _looks_like_path(text):
        raise TTDError(
            f"no such weights file: {path}; pass an existing file or folder, or a known name (see `ttd info`)"
        )
    else:
        raise TTDError(
            f"unknown weights {text!r}: choose one of {', '.join(KNOWN_WEIGHTS)}, "
            "or pass the path of a local weights file"
        )
    state_dict = _to_openai_names(tensors, source)
    config = _config(state_dict, hints, quick_gelu, source)
    _check_architecture(state_dict, config, source)
    state_dict = {k: v.to(torch.float32).contiguous() for k, v in state_dict.items()}
    return LoadedWeights(state_dict, config, source, hints.calibration)


def save_weights(model: DenseCLIP, path: str | Path, protocol: str | None = None) -> Path:
    """Write a dense model's CLIP weights, configuration and heatmap calibration as one
    ``.safetensors`` file (atomically) that :func:`load_weights` reads back exactly; ``protocol``
    records the segmentation preset the weights are meant for (:func:`recommended_protocol`)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.clip.state_dict().items()}
    calibration = model.calibration.state_dict()
    tensors.update({f"calibration.{k}": v.detach().cpu().contiguous() for k, v in calibration.items()})
    metadata = {"format": FORMAT, "config": json.dumps(model.config.to_dict()), "source": str(model.source)}
    if protocol:
        metadata["protocol"] = protocol
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def recommended_protocol(name_or_path: str | Path) -> str | None:
    """The segmentation protocol preset weights are meant for: the registry's for a known name,
    the one a ttd weights file records, else None (each command then uses its own default)."""
    path = Path(str(name_or_path)).expanduser()
    if not path.exists():
        spec = _known_spec(str(name_or_path))
        return spec[1].protocol if spec else None
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return (f.metadata() or {}).get("protocol")
        except (SafetensorError, OSError):
            return None  # the loader says what is wrong with the file
    return None


# --- names and the hub -------------------------------------------------------------------------
def _known_spec(text: str) -> tuple[str, WeightSpec] | None:
    for name, spec in KNOWN_WEIGHTS.items():
        if name.lower() == text.lower():
            return name, spec
    return None


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1 or bool(Path(text).suffix)


def _download(name: str, spec: WeightSpec) -> Path:
    """The cached file of named weights, downloading it once; a one-line error when offline."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    for filename in spec.filenames:  # the cache first: no network at all once the weights are here
        try:
            return Path(hf_hub_download(spec.repo_id, filename, local_files_only=True))
        except LocalEntryNotFoundError:
            pass
    offline = TTDError(
        f"weights {name} are not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub cannot be "
        "reached: offline, --model miniworld-clip or --model miniworld run on the CLIPs embedded in ttd; on a "
        f"connected machine run `hf download {spec.repo_id} {spec.filenames[0]}` and copy the cache here (or point "
        "HF_HOME at it), or pass the path of a local weights file"
    )
    if not _hub_reachable():  # one quick look instead of huggingface_hub's retries (~25 s)
        raise offline
    for filename in spec.filenames:
        try:
            return Path(hf_hub_download(spec.repo_id, filename))
        except LocalEntryNotFoundError:  # the hub went away meanwhile
            raise offline from None
        except EntryNotFoundError:
            pass  # this repository has the next file instead
        except (HfHubHTTPError, OSError) as err:
            raise TTDError(f"downloading {name} from {spec.repo_id} failed: {_first_line(err)}") from None
    raise TTDError(f"{spec.repo_id} holds none of {', '.join(spec.filenames)}: pass a local weights file instead")


def _hub_reachable(timeout: float = 1.5) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds (never in offline mode)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError:
        return False
    return True


# --- reading files -----------------------------------------------------------------------------
# Inside a folder: open_clip's files first (timm repositories also hold a timm-format pytorch_model.bin).
_FOLDER_FILES = OPEN_CLIP_FILES + (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], _Hints]:
    """A file or folder → its tensors (as stored) and what its metadata and neighbours say."""
    if path.is_dir():
        found = next((path / f for f in _FOLDER_FILES if (path / f).is_file()), None)
        if found is None:
            raise TTDError(f"folder {path} holds no weights file (looked for {', '.join(_FOLDER_FILES)})")
        path = found
    if path.name.endswith(".index.json"):
        tensors, metadata = _read_shards(path), {}
    else:
        tensors, metadata = _read_file(path)
    return tensors, _hints(path, tensors, metadata)


def _read_shards(index: Path) -> dict[str, torch.Tensor]:
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise TTDError(f"cannot read the shard index {index}: {_first_line(err)}") from None
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        tensors.update(_read_file(index.parent / shard)[0])
    return tensors


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One file → (tensors, safetensors metadata), by its content: zip, safetensors or pickle."""
    if not path.is_file():
        raise TTDError(f"no such weights file: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        raise TTDError(f"{path} is empty: download it again")
    if head[:4] == b"PK\x03\x04":
        return _read_zip(path), {}
    if len(head) == 9 and head[8:9] == b"{":
        return _read_safetensors(path)
    if head[:1] == b"\x80":  # a pickle: PyTorch's legacy (pre-1.6) format
        return _torch_load(path), {}
    raise TTDError(
        f"{path} is not a weights file: expected safetensors, a PyTorch .pt/.bin state dict "
        "or an OpenAI TorchScript archive"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types for every malformed file
        raise _corrupt(path, err) from None


def _read_zip(path: Path) -> dict[str, torch.Tensor]:
    try:
        with zipfile.ZipFile(path) as archive:
            if is_torchscript_archive(archive.namelist()):
                return read_torchscript_weights(path, archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise _corrupt(path, err) from None
    return _torch_load(path)


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch reports truncation as RuntimeError, EOFError, ValueError …
        if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
            detail = re.search(r"(?i)(unsupported (?:global|operand).*?)(?:\.\s|\.?$)", str(err), re.M)
            raise TTDError(
                f"refusing to load {path}: it holds Python objects besides tensors "
                f"({detail.group(1) if detail else 'not a plain state dict'}); ttd loads only plain state dicts"
            ) from None
        raise _corrupt(path, err) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # an open_clip training checkpoint
    if not isinstance(obj, Mapping):
        raise TTDError(f"{path} is not a CLIP checkpoint: it holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _hints(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> _Hints:
    """ttd's metadata, or the config file a hub snapshot keeps beside its weights."""
    if metadata.get("format") == FORMAT:
        try:
            config = CLIPConfig(**json.loads(metadata["config"]))
        except (KeyError, TypeError, ValueError) as err:
            raise TTDError(f"{path} has a damaged ttd configuration ({_first_line(err)}): save it again") from None
        calibration = {k.split(".", 1)[1]: tensors.pop(k) for k in list(tensors) if k.startswith("calibration.")}
        return _Hints(config.quick_gelu, config.vision_heads, config.text_heads, config, calibration or None)
    if any(k.startswith(("vision_model.", "text_model.")) for k in tensors):
        config_file = path.parent / "config.json"
        return _hf_hints(config_file) if config_file.is_file() else _Hints()
    config_file = path.parent / "open_clip_config.json"
    return _open_clip_hints(config_file) if config_file.is_file() else _Hints()


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TTDError(f"cannot read {path}: {_first_line(err)}") from None
    if not isinstance(data, dict):
        raise TTDError(f"{path} is not a JSON object")
    return data


def _hf_hints(path: Path) -> _Hints:
    """Head counts and activation from a transformers CLIP ``config.json`` (its defaults when absent)."""
    config = _load_json(path)
    text = config.get("text_config") or config.get("text_config_dict") or {}
    vision = config.get("vision_config") or config.get("vision_config_dict") or {}
    acts = {text.get("hidden_act", "quick_gelu"), vision.get("hidden_act", "quick_gelu")}
    if len(acts) > 1 or not acts <= {"quick_gelu", "gelu"}:
        raise TTDError(
            f"{path}: activation {' / '.join(sorted(acts))} is not supported (only quick_gelu or gelu in both towers)"
        )
    return _Hints(acts == {"quick_gelu"}, vision.get("num_attention_heads", 12), text.get("num_attention_heads", 8))


def _open_clip_hints(path: Path) -> _Hints:
    """open_clip's ``open_clip_config.json``; open_clip's own defaults where it is silent."""
    model = _load_json(path).get("model_cfg") or {}
    vision, text = model.get("vision_cfg") or {}, model.get("text_cfg") or {}
    vision_heads = vision["width"] // vision.get("head_width", 64) if "width" in vision else None
    return _Hints(bool(model.get("quick_gelu", False)), vision_heads, text.get("heads", 8))


# --- key names ---------------------------------------------------------------------------------
# Tensors that are not weights: scalars in OpenAI's archives, and the causal-mask buffer that
# TorchScripted open_clip models (open_clip.create_model(..., jit=True)) keep in their state dict.
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")

_HF_NAMES = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_HF_TRANSPOSED = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}
_HF_LAYER = re.compile(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)$")
_HF_BLOCK = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _to_openai_names(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Any supported key scheme → OpenAI's; keys it does not know pass through unchanged (the
    architecture check reports them)."""
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    if any(k.startswith(("vision_model.", "text_model.")) for k in tensors):
        return _from_transformers(tensors)
    if any(k.startswith("visual.layer1.") for k in tensors):
        raise TTDError(f"{source} is a ResNet CLIP (RN50 …): only ViT CLIPs are supported, e.g. ViT-B-16/openai")
    if "visual.conv1.weight" not in tensors:
        sample = ", ".join(list(tensors)[:3]) or "none"
        raise TTDError(f"{source} is not a CLIP checkpoint: it has no CLIP weight names (its first keys: {sample})")
    return {k: v for k, v in tensors.items() if k not in _NOT_WEIGHTS}


def _from_transformers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # (block prefix, weight|bias) → q/k/v
    for key, value in tensors.items():
        if key.endswith("position_ids"):
            continue  # a buffer of 0…n-1, not a weight
        if key in _HF_NAMES:
            out[_HF_NAMES[key]] = value
        elif key in _HF_TRANSPOSED:
            out[_HF_TRANSPOSED[key]] = value.t()
        elif m := _HF_LAYER.match(key):
            tower, index, rest = m.groups()
            block = f"{'visual.' if tower == 'vision' else ''}transformer.resblocks.{index}."
            proj = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if proj:
                qkv.setdefault((block, proj.group(2)), {})[proj.group(1)] = value
                continue
            module, _, param = rest.rpartition(".")
            out[block + _HF_BLOCK.get(module, module) + "." + param] = value
        else:
            out[key] = value
    for (block, param), parts in qkv.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"{block}attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
        else:
            out.update({f"{block}attn.{p}_proj.{param}": t for p, t in parts.items()})
    return out


# --- configuration and checks ------------------------------------------------------------------
_REQUIRED = (
    "visual.conv1.weight",
    "visual.positional_embedding",
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "text_projection",
)


def _config(state_dict: dict[str, torch.Tensor], hints: _Hints, quick_gelu: bool | None, source: str) -> CLIPConfig:
    if quick_gelu is None:
        quick_gelu = DEFAULT_QUICK_GELU if hints.quick_gelu is None else hints.quick_gelu
    if hints.config is not None:
        return CLIPConfig(**{**hints.config.to_dict(), "quick_gelu": bool(quick_gelu)})
    missing = [k for k in _REQUIRED if k not in state_dict]
    if missing:
        raise TTDError(f"{source} is not a complete ViT CLIP: missing {_listing(missing)}")
    config = config_from_state_dict(state_dict, bool(quick_gelu), hints.vision_heads, hints.text_heads)
    for tower, width, heads in (
        ("vision", config.vision_width, config.vision_heads),
        ("text", config.text_width, config.text_heads),
    ):
        if heads < 1 or width % heads:
            raise TTDError(f"{source}: the {tower} width {width} is not divisible by {heads} attention heads")
    return config


def _check_architecture(state_dict: dict[str, torch.Tensor], config: CLIPConfig, source: str) -> None:
    """Refuse, naming the first differences, any state dict that ``CLIP(config)`` would not load."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in CLIP(config).state_dict().items()}
    problems = _key_problems(state_dict, expected)
    if problems:
        raise TTDError(f"{source} does not match a ViT CLIP of its own shapes: {'; '.join(problems)}")


def _key_problems(state: dict[str, torch.Tensor], expected: dict[str, torch.Size], name=str) -> list[str]:
    """Missing, unexpected and mis-shaped keys of ``state`` against ``expected`` shapes, each kind
    one phrase listing its first keys (``name`` shows a key as the file's own format calls it)."""
    missing = [name(k) for k in expected if k not in state]
    unexpected = [name(k) for k in state if k not in expected]
    shapes = [
        f"{name(k)} is {tuple(state[k].shape)} not {tuple(s)}" for k, s in expected.items() if k in state and state[k].shape != s
    ]
    return [
        f"{label} {_listing(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shapes differ:", shapes))
        if keys
    ]


def _listing(items: list[str], first: int = 3) -> str:
    more = f" (+{len(items) - first} more)" if len(items) > first else ""
    return ", ".join(items[:first]) + more


def _corrupt(path: Path, err: BaseException) -> TTDError:
    return TTDError(f"cannot read {path}: the file is corrupt or truncated ({_first_line(err)}); download it again")


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
