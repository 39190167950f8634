"""LoRA adapters for the CLIP towers: inject, freeze, merge, save and load.

OpenAI's attention keeps q, k and v in ONE fused weight (``attn.in_proj_weight``, 3C × C) and the
output projection as ``attn.out_proj`` (``nn.Linear``). Each adapted projection gets its own
low-rank update ``scale·B·A`` (``scale = alpha / rank``; B starts at zero, so an injected model
computes exactly what the base model did). The q/k/v updates are added to the matching third of
the fused projection's output, with dropout on their input as in the LoRA paper.

The base parameters keep their names (``…attn.in_proj_weight``, ``…attn.out_proj.weight``) and
stay frozen; adapter parameters all live under a ``lora`` child (``…attn.lora.q.A``,
``…attn.out_proj.lora.B``), so a checkpoint of the base loads unchanged into an adapted model.

Why not ``peft``: it cannot adapt slices of a fused weight of a custom module, and it would add
``transformers`` and ``accelerate`` to the install path of a package that needs neither.

An adapter file is a safetensors file holding the adapter weights (and the heatmap calibration
w, b) alone; its metadata, repeated in a JSON file beside it for people, names the base weights,
a fingerprint of them, the dense variant and the LoRA settings.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TTDError, TTDFailure
from ..io import fingerprint
from .clip import Attention
from .dense import DenseCLIP

__all__ = [
    "LORA_TARGETS",
    "LORA_TOWERS",
    "LoRAConfig",
    "LowRank",
    "LoRALinear",
    "LoRAAttention",
    "inject_lora",
    "has_lora",
    "adapters_disabled",
    "set_trainable",
    "adapter_state_dict",
    "merge_adapter",
    "base_fingerprint",
    "save_adapter",
    "load_adapter",
    "read_adapter_metadata",
]

LORA_TARGETS = ("q", "k", "v", "out")
LORA_TOWERS = ("image", "text")
FINETUNE_MODES = ("lora", "full")
ADAPTER_FORMAT = "ttd-adapter"
ADAPTER_VERSION = 1


@dataclass(frozen=True)
class LoRAConfig:
    """Where the adapters go and how big they are (METHOD §5.4; rank 8 is the project's default)."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS
    towers: tuple[str, ...] = LORA_TOWERS

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "towers", tuple(self.towers))
        if self.rank < 1:
            raise TTDError(f"LoRA rank must be at least 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise TTDError(f"LoRA dropout must lie in [0, 1), got {self.dropout}")
        for name, allowed, values in (("target", LORA_TARGETS, self.targets), ("tower", LORA_TOWERS, self.towers)):
            bad = [v for v in values if v not in allowed]
            if bad or not values:
                raise TTDError(f"unknown LoRA {name} {bad or values!r}; choose among: {', '.join(allowed)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets), "towers": list(self.towers)}


class LowRank(nn.Module):
    """The update ``scale · B · A`` of one projection; B is zero at initialisation."""

    def __init__(self, in_features: int, out_features: int, cfg: LoRAConfig, like: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(torch.empty(cfg.rank, in_features, device=like.device, dtype=like.dtype))
        self.B = nn.Parameter(torch.zeros(out_features, cfg.rank, device=like.device, dtype=like.dtype))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # nn.Linear's initialisation, as in LoRA
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()
        self.scale = cfg.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.dropout(x), self.A), self.B) * self.scale

    def delta_weight(self) -> torch.Tensor:
        return (self.B @ self.A) * self.scale


class LoRALinear(nn.Module):
    """``nn.Linear`` plus a low-rank update; shares (and keeps the names of) the base weight/bias."""

    def __init__(self, base: nn.Linear, cfg: LoRAConfig):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias
        self.lora = LowRank(base.in_features, base.out_features, cfg, base.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.lora(x)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding ``W + scale·B·A`` (the base parameter updated in place)."""
        with torch.no_grad():
            self.weight += self.lora.delta_weight().to(self.weight.dtype)
        with torch.device("meta"):  # shapes only: the parameters are this module's
            linear = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias=self.bias is not None)
        linear.weight, linear.bias = self.weight, self.bias
        return linear


class LoRAAttention(Attention):
    """CLIP attention with low-rank updates on slices q, k and/or v of the fused projection.

    It shares the base module's parameters, so every reader of ``attn.qkv`` (the dense variants
    call it directly) sees the adapted projections.
    """

    def __init__(self, base: Attention, cfg: LoRAConfig, targets: tuple[str, ...]):
        width = base.in_proj_weight.shape[1]
        with torch.device("meta"):  # shapes only: the parameters are the base module's
            super().__init__(width, base.heads)
        self.in_proj_weight, self.in_proj_bias, self.out_proj = base.in_proj_weight, base.in_proj_bias, base.out_proj
        self.lora = nn.ModuleDict({t: LowRank(width, width, cfg, base.in_proj_weight) for t in targets})

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        projections = list(super().qkv(x))
        b, h, n, d = projections[0].shape
        for i, name in enumerate("qkv"):
            if name in self.lora:
                projections[i] = projections[i] + self.lora[name](x).view(b, n, h, d).transpose(1, 2)
        return projections[0], projections[1], projections[2]

    def merged(self) -> Attention:
        """A plain ``Attention`` holding the merged fused weight (updated in place)."""
        width = self.in_proj_weight.shape[1]
        with torch.no_grad():
            for i, name in enumerate("qkv"):
                if name in self.lora:
                    self.in_proj_weight[i * width : (i + 1) * width] += self.lora[name].delta_weight().to(
                        self.in_proj_weight.dtype
                    )
        with torch.device("meta"):
            plain = Attention(width, self.heads)
        plain.in_proj_weight, plain.in_proj_bias = self.in_proj_weight, self.in_proj_bias
        plain.out_proj = self.out_proj.merged() if isinstance(self.out_proj, LoRALinear) else self.out_proj
        return plain


def _tower_blocks(model: DenseCLIP, tower: str):
    clip = model.clip
    return (clip.visual if tower == "image" else clip).transformer.resblocks


def inject_lora(model: DenseCLIP, cfg: LoRAConfig | None = None) -> DenseCLIP:
    """Add LoRA adapters to ``model`` in place (outputs unchanged until they are trained)."""
    cfg = cfg or LoRAConfig()
    if has_lora(model):
        raise TTDError("the model already holds LoRA adapters; merge them (merge_adapter) before adding new ones")
    qkv_targets = tuple(t for t in "qkv" if t in cfg.targets)
    for tower in cfg.towers:
        for block in _tower_blocks(model, tower):
            attn = block.attn
            if qkv_targets:
                attn = block.attn = LoRAAttention(attn, cfg, qkv_targets)
            if "out" in cfg.targets:
                attn.out_proj = LoRALinear(attn.out_proj, cfg)
    model.lora_config = cfg
    model.clear_text_cache()
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, (LoRAAttention, LoRALinear)) for m in model.modules())


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` computes what its base weights alone compute."""
    updates = [m for m in model.modules() if isinstance(m, LowRank)]
    scales = [m.scale for m in updates]
    for m in updates:
        m.scale = 0.0
    try:
        yield model
    finally:
        for m, scale in zip(updates, scales):
            m.scale = scale


def _is_adapter_param(model: DenseCLIP, name: str) -> bool:
    return ".lora." in name or name.startswith(model.trainable_prefixes)


def set_trainable(model: DenseCLIP, finetune: str = "lora", calibration: bool = True) -> list[str]:
    """Freeze ``model`` except what ``finetune`` trains; returns the trainable parameter names.

    ``lora``: the adapters, the model's own trained parts (TCL's decoder) and the heatmap
    calibration w, b unless ``calibration`` is False; ``full``: every parameter.
    """
    if finetune not in FINETUNE_MODES:
        raise TTDError(f"unknown finetune mode {finetune!r}; choose one of: {', '.join(FINETUNE_MODES)}")
    if finetune == "lora" and not has_lora(model):
        raise TTDError("finetune='lora' needs adapters: call inject_lora(model) first")
    names = []
    for name, p in model.named_parameters():
        if finetune == "full":
            train = True
        else:
            trained = tuple(p for p in model.trainable_prefixes if calibration or p != "calibration.")
            train = ".lora." in name or name.startswith(trained)
        p.requires_grad_(train)
        if train:
            names.append(name)
    model.finetune = finetune
    return names


def adapter_state_dict(model: DenseCLIP) -> dict[str, torch.Tensor]:
    """What an adapter file stores: LoRA weights and calibration, or everything after full fine-tuning."""
    full = model.finetune == "full"
    return {k: v.detach() for k, v in model.state_dict().items() if full or _is_adapter_param(model, k)}


def merge_adapter(model: DenseCLIP) -> DenseCLIP:
    """Fold every LoRA update into the base weights, in place; the result has the base model's
    structure and state-dict names, and computes the same outputs faster."""
    for tower in LORA_TOWERS:
        for block in _tower_blocks(model, tower):
            if isinstance(block.attn, LoRAAttention):
                block.attn = block.attn.merged()
            elif isinstance(block.attn.out_proj, LoRALinear):
                block.attn.out_proj = block.attn.out_proj.merged()
    model.lora_config = None
    model.clear_text_cache()
    return model


def base_fingerprint(model: DenseCLIP) -> str:
    """A short hash of base tensors that LoRA never touches (independent of file path and device)."""
    return fingerprint(model.fingerprint_tensors())


def _metadata(model: DenseCLIP) -> dict:
    finetune, lora = model.finetune, model.lora_config
    if finetune == "lora" and lora is None:
        raise TTDError("the model holds no LoRA adapters to save; inject_lora and train it first")
    return {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_VERSION,
        "base": model.source,
        "base_fingerprint": model.base_fingerprint or base_fingerprint(model),
        "dense": model.name,
        "clip_config": model.config.to_dict(),
        "finetune": finetune,
        "lora": lora.to_dict() if lora is not None else None,
    }


def _adapter_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / "adapter.safetensors"
    return path, path.with_suffix(".json")


def save_adapter(model: DenseCLIP, path: str | os.PathLike) -> Path:
    """Write the adapter (safetensors, metadata inside) and a JSON copy of the metadata, atomically.

    ``path``: a ``.safetensors`` file, or a folder (→ ``adapter.safetensors`` inside).
    """
    from safetensors.torch import save

    from ..io import atomic_write_bytes, save_json

    weights_path, json_path = _adapter_paths(path)
    meta = _metadata(model)
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    bad = _nonfinite(tensors)
    if bad:
        raise TTDFailure(f"refusing to write adapter {weights_path}: {bad} tensor(s) hold NaN or infinity (a diverged run)")
    atomic_write_bytes(weights_path, save(tensors, metadata={"ttd": json.dumps(meta)}))
    save_json({**meta, "tensors": len(tensors)}, json_path)
    return weights_path


def _nonfinite(tensors: dict) -> int:
    """How many tensors hold a NaN or an infinity (an adapter with any is useless and is refused)."""
    return sum(1 for t in tensors.values() if t.is_floating_point() and not bool(torch.isfinite(t).all()))


def read_adapter_metadata(path: str | os.PathLike) -> dict:
    """The metadata stored inside an adapter file (one-line errors for anything else)."""
    from safetensors import SafetensorError, safe_open

    weights_path, _ = _adapter_paths(path)
    if not weights_path.is_file():
        raise TTDError(f"adapter not found: {weights_path}")
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            raw = (f.metadata() or {}).get("ttd")
    except (SafetensorError, OSError) as err:
        raise TTDError(f"cannot read adapter {weights_path}: {err} (is it a safetensors file?)") from None
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise TTDError(f"{weights_path} is not a ttd adapter (no ttd metadata); write adapters with `ttd train` or save_adapter")
    if meta.get("version", 0) > ADAPTER_VERSION:
        raise TTDError(f"adapter {weights_path} has format version {meta['version']}; upgrade ttd to read it")
    return meta


def _check_base(model: DenseCLIP, meta: dict, where: Path) -> None:
    if meta["dense"] != model.name:
        raise TTDError(
            f"adapter {where} was trained for dense variant {meta['dense']!r} but the model is {model.name!r}; "
            f"pass --dense {meta['dense']}"
        )
    mine = {k: v for k, v in model.config.to_dict().items() if k != "quick_gelu"}
    theirs = {**type(model.config)().to_dict(), **meta["clip_config"]}  # fields added since it was saved: defaults
    for key, value in mine.items():
        if theirs.get(key) != value:
            raise TTDError(
                f"adapter {where} needs a base model with {key}={theirs.get(key)} "
                f"(trained on {meta['base']!r}) but the model has {key}={value}"
            )
    if meta["finetune"] == "lora" and meta["base_fingerprint"] != base_fingerprint(model):
        raise TTDError(
            f"adapter {where} was trained on base weights {meta['base']!r} (fingerprint {meta['base_fingerprint']}) "
            f"but the model holds {model.source!r} (fingerprint {base_fingerprint(model)}); "
            "load the matching --model"
        )


def load_adapter(model: DenseCLIP, path: str | os.PathLike, merge: bool = False) -> DenseCLIP:
    """Apply an adapter file to ``model`` (in place; returned for chaining), for inference: every
    parameter ends frozen.

    Checks that the adapter was trained on these base weights with this dense variant, then adds
    the adapters and loads their weights and the calibration. ``merge`` folds them into the base
    weights right away (faster inference, same outputs).
    """
    from safetensors.torch import load_file

    weights_path, _ = _adapter_paths(path)
    meta = read_adapter_metadata(weights_path)
    _check_base(model, meta, weights_path)
    if meta["finetune"] == "lora":
        inject_lora(model, LoRAConfig(**meta["lora"]))
    expected = {k: v for k, v in model.state_dict().items() if meta["finetune"] == "full" or _is_adapter_param(model, k)}
    tensors = load_file(str(weights_path), device=str(model.device))
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise TTDError(f"adapter {weights_path} does not fit the model: {what} ({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    for key, tensor in tensors.items():
        if tensor.shape != expected[key].shape:
            raise TTDError(
                f"adapter {weights_path} does not fit the model: {key} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[key].shape)}"
            )
    bad = _nonfinite(tensors)
    if bad:
        raise TTDError(f"adapter {weights_path} has {bad} tensor(s) with NaN or infinity (its run diverged); retrain it with a lower --lr")
    model.load_state_dict(tensors, strict=False)
    model.finetune = meta["finetune"]
    model.clear_text_cache()
    model.requires_grad_(False)  # applied for inference, like load_model's weights
    return merge_adapter(model) if merge else model
