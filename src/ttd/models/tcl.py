"""TCL (Cha et al., CVPR 2023) as a dense model, and a reader for TCL's released checkpoints.

TCL keeps OpenAI's CLIP ViT-B/16 frozen and adds a *masker* that reads the tokens entering the
last visual block:

* a copy of that last block, run with MaskCLIP's trick as TCL runs it: every token attends only to
  itself (so the attention output is ``out_proj(v(ln_1 x))``), residual and MLP kept;
* a gated convolutional decoder (TCL's ``GDecoder``: ``n_layers`` residual stages, each a ×2
  nearest upsample and one or two pre-activation LayerNorm → GELU → k×k conv blocks scaled by
  ``tanh(gate)``, gates zero at initialisation);
* its own copy of CLIP's ``ln_post`` and image projection, applied to every pixel;
* Sim2Mask ``sigmoid(w·cos + b)`` (w = 10, b = −2.5, learnable): exactly ``HeatmapCalibration``.

So ``heatmap()`` returns TCL's soft masks at 4× the patch grid (112² for a 448² window).

Checkpoints: TCL's ``save_checkpoint`` writes ``{"model": state_dict, "optimizer": …, "config":
…}``; the CLIP towers sit under ``clip_image_encoder.clip_visual.`` (``ln_post``/``proj`` under
``clip_image_encoder.clip_proj.``) and ``clip_text_encoder.clip_text.``, the masker under
``masker.image_encoder.{backbone,decoder}.`` and ``masker.sim2mask.{w,b}``. TCL's own loader
tolerates missing CLIP towers (it builds them from OpenAI's weights first), so here too a file
without them takes them from OpenAI's ViT-B/16. The pickle is read without running anything from
it (see :func:`read_checkpoint`).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TTDError
from ..io import atomic_write_bytes
from .clip import CLIP, CLIPConfig, config_from_state_dict
from .dense import DenseCLIP, HeatmapCalibration
from .torchscript import _archive_root, _ArchiveUnpickler, _RefusedGlobal
from .weights import (
    DEFAULT_QUICK_GELU,
    _check_architecture,
    _corrupt,
    _first_line,
    _key_problems,
    _listing,
    _read_safetensors,
    load_weights,
)

__all__ = ["TCL", "GatedDecoder", "is_tcl_checkpoint", "load_tcl", "save_tcl", "tcl_state_dict", "read_checkpoint",
           "self_attending", "DEFAULT_TCL_CLIP"]

# TCL builds its towers with ``clip.load("ViT-B/16")``: OpenAI's file in clip's cache when there,
# else the same weights as ttd names them.
OPENAI_CLIP_FILE = "~/.cache/clip/ViT-B-16.pt"
DEFAULT_TCL_CLIP = "ViT-B-16/openai"
# TCL deletes the text tower's logit_scale; OpenAI's ViT-B/16 holds ln(100) (only tag scorers use it).
OPENAI_LOGIT_SCALE = math.log(100.0)

_IMAGE = "clip_image_encoder.clip_visual."
_IMAGE_PROJ = "clip_image_encoder.clip_proj."
_TEXT = "clip_text_encoder.clip_text."
_MASKER = "masker.image_encoder."
_MASKER_BLOCK = _MASKER + "backbone.transformer.resblocks."
# Saved by TCL, never used here: its loss temperatures, and the fixed kernels of its PAMR module
# (a buffer-holding module TCL creates on its first evaluation with PAMR).
_LOSS_KEYS = ("tcli_loss.logit_scale", "tclf_loss.logit_scale")
_PAMR = "pamr."
# TCL's inference mixes kp_w of sigmoid(KP_SCALE·(cos − KP_CENTRE)) of a MaskCLIP map into its masks
# (models/tcl/tcl.py, kp_branch; kp_w = 0.3 in configs/eval.yml): the protocol knob kp_weight
KP_CENTRE, KP_SCALE = 0.25, 10.0
TTD_ENTRY = "ttd"  # what save_tcl adds beside "model": the CLIP configuration


# --- the masker --------------------------------------------------------------------------------
class Gate(nn.Module):
    """``tanh(gate)·x`` with gate = 0 at initialisation: a new stage starts as the identity."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.gate) * x


class ConvBlock(nn.Module):
    """Pre-activation: per-pixel LayerNorm over channels → GELU → k×k conv → tanh gate."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.gate = Gate()

    def _activate(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.conv(self._activate(x)))

    def forward_upsampled(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(up2(x))`` for a ×2 nearest upsample ``up2``, at 4/9 of the conv's cost.

        Norm and GELU act per pixel, so they commute with the upsample; a k×k conv over a
        nearest-upsampled map is, for each of the four output phases, a smaller conv over the
        original map with summed taps (2×2 for k = 3). Same result, no 4×-sized intermediates.
        """
        a = self._activate(x)
        weight, r = self.conv.weight, self.conv.kernel_size[0] // 2
        phases = []
        for p in (0, 1):
            row, (top, bottom) = _phase_taps(p, r, weight)
            cols = []
            for q in (0, 1):
                col, (left, right) = _phase_taps(q, r, weight)
                kernel = torch.einsum("ad,oidk,bk->oiab", row, weight, col)
                cols.append(F.conv2d(F.pad(a, (left, right, top, bottom)), kernel, self.conv.bias))
            phases.append(torch.stack(cols, dim=-1))  # (B, C, H, W, q)
        b, c, h, w = a.shape
        return self.gate(torch.stack(phases, dim=3).reshape(b, c, 2 * h, 2 * w))  # (B, C, H, p, W, q)


def _phase_taps(phase: int, radius: int, like: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Which tap of a (2r+1)-tap kernel lands on which original pixel, for output pixels 2i+phase
    of a ×2 nearest-upsampled input: a 0/1 matrix (new taps × old taps) and the padding it needs."""
    offsets = [(phase + d) // 2 for d in range(-radius, radius + 1)]
    low, high = min(offsets), max(offsets)
    taps = torch.zeros(high - low + 1, 2 * radius + 1, dtype=like.dtype, device=like.device)
    taps[[o - low for o in offsets], list(range(2 * radius + 1))] = 1.0
    return taps, (-low, high)


class ResConv(nn.Module):
    """×2 nearest upsample, then one (or, ``double``, two) residual conv blocks."""

    def __init__(self, channels: int, kernel_size: int, double: bool):
        super().__init__()
        self.conv = ConvBlock(channels, kernel_size)
        self.conv2 = ConvBlock(channels, kernel_size) if double else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest") + self.conv.forward_upsampled(x)
        return x + self.conv2(x) if self.conv2 is not None else x


class GatedDecoder(nn.Module):
    """TCL's ``GDecoder`` (``tcl.yml``: 2 layers, double, kernel 3, LayerNorm, GELU): (B, C, h, w)
    → (B, C, 2ⁿh, 2ⁿw)."""

    def __init__(self, channels: int, n_layers: int = 2, kernel_size: int = 3, double: bool = True):
        super().__init__()
        self.net = nn.Sequential(*(ResConv(channels, kernel_size, double) for _ in range(n_layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PixelProjection(nn.Module):
    """CLIP's ``ln_post`` and image projection applied at every pixel: (B, C, H, W) → (B, D, H, W)."""

    def __init__(self, ln_post: nn.LayerNorm, proj: torch.Tensor):
        super().__init__()
        self.ln = copy.deepcopy(ln_post)
        self.proj = nn.Parameter(proj.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.ln(x.permute(0, 2, 3, 1)) @ self.proj).permute(0, 3, 1, 2)


class Masker(nn.Module):
    """Tokens entering CLIP's last block → TCL's un-normalised embedding map at 2ⁿ× the grid."""

    def __init__(self, clip: CLIP, n_layers: int = 2, kernel_size: int = 3, double: bool = True):
        super().__init__()
        visual = clip.visual
        self.backbone = copy.deepcopy(visual.last_block)  # TCL starts its masker from CLIP's own block
        self.decoder = GatedDecoder(visual.conv1.out_channels, n_layers, kernel_size, double)
        self.image_proj = PixelProjection(visual.ln_post, visual.proj)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.decode(self_attending(self.backbone, x), grid)

    def decode(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The backbone's output tokens → the embedding map (TCL trains this part alone first)."""
        patches = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
        return self.image_proj(self.decoder(patches))


def self_attending(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A transformer block run as TCL runs MaskCLIP's trick: every token attends only to itself
    (the attention output is ``out_proj(v(ln_1 x))``), residual and MLP kept."""
    _, _, v = block.attn.qkv(block.ln_1(x))
    x = x + block.attn.project_out(v)
    return x + block.mlp(block.ln_2(x))


class TCL(DenseCLIP):
    """CLIP's global embedding plus TCL's masker for the dense map (4× the patch grid)."""

    name = "tcl"
    # What TTD trains besides LoRA: TCL's own last training phase trains the decoder, the pixel
    # projection and Sim2Mask (the masker's block stays frozen, like CLIP).
    trainable_prefixes = ("calibration.", "masker.decoder.", "masker.image_proj.")

    def __init__(
        self,
        clip: CLIP,
        calibration: HeatmapCalibration | None = None,
        source: str = "random",
        masker: Masker | None = None,
    ):
        super().__init__(clip, calibration, source)
        self.masker = masker or Masker(clip)

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        visual = self.clip.visual
        x, grid = visual.trunk(images)
        global_emb = visual.pooled(visual.last_block(x))
        return F.normalize(global_emb, dim=-1), F.normalize(self.masker(x, grid), dim=1)

    def fingerprint_tensors(self) -> list[torch.Tensor]:
        return super().fingerprint_tensors() + [self.masker.backbone.attn.in_proj_weight]

    def heatmaps_with_kp(self, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TCL's masks (B, N, 4h, 4w) and the map its authors mix into them at inference (their
        ``kp_branch``), from one trunk pass: frozen CLIP's own last block run self-attending
        (MaskCLIP's trick as TCL runs it), projected, and ``sigmoid(10·(cos − 0.25))``, upsampled
        bilinearly to the masks' size. ``text``: (N, C) normalised embeddings."""
        visual = self.clip.visual
        x, grid = visual.trunk(images)
        masks = self.heatmap(F.normalize(self.masker(x, grid), dim=1), text)
        tokens = visual.project(self_attending(visual.last_block, x)[:, 1:])
        dense = F.normalize(tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid), dim=1)
        kp = torch.sigmoid((self.similarity(dense, text) - KP_CENTRE) * KP_SCALE)
        return masks, F.interpolate(kp, size=masks.shape[-2:], mode="bilinear", align_corners=False)


# --- reading checkpoints -----------------------------------------------------------------------
class _Inert:
    """Stands in for any class or function a checkpoint's pickle names outside the tensors (TCL
    saves its OmegaConf config, optimizer and scaler states): built, never run."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state) -> None:
        pass


class _CheckpointUnpickler(_ArchiveUnpickler):
    """The TorchScript reader's restricted unpickler, with foreign globals made inert: tensors and
    containers are rebuilt, nothing named in the file is imported or called."""

    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except _RefusedGlobal:
            return type(name, (_Inert,), {"__module__": "ttd.inert"})


def read_checkpoint(path: str | Path) -> Mapping:
    """The top-level object of a ``torch.save`` zip (or safetensors) file, read without running it.

    ``torch.load(weights_only=True)`` refuses TCL's checkpoints outright (they pickle an OmegaConf
    config); this reader keeps the tensors and dicts and turns every other object into an inert
    placeholder, so only plain tensors can come out of the ``model`` entry.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return _read_safetensors(path)[0]
    if head[:4] != b"PK\x03\x04":
        raise TTDError(f"{path} is not a TCL checkpoint: expected a torch.save zip file (TCL's tcl.pth) or safetensors")
    try:
        with zipfile.ZipFile(path) as archive:
            root = _archive_root(archive.namelist())
            if root is None:
                raise TTDError(f"{path} is not a torch.save file: it has no single */data.pkl")
            return _CheckpointUnpickler(archive.read(f"{root}/data.pkl"), archive, root).load()
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, RuntimeError, zipfile.BadZipFile, OSError) as err:
        if isinstance(err, TTDError):
            raise
        raise _corrupt(path, err) from None


def is_tcl_checkpoint(path: str | Path) -> bool:
    """Whether a local file holds TCL's masker (its keys say so); cheap: tensors are not read."""
    path = Path(path).expanduser()
    if not path.is_file():
        return False
    marker = _MASKER.encode()
    with open(path, "rb") as f:
        head = f.read(9)
        if head[:4] == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(path) as archive:
                    root = _archive_root(archive.namelist())
                    return root is not None and marker in archive.read(f"{root}/data.pkl")
            except (zipfile.BadZipFile, OSError, KeyError):
                return False
        if len(head) == 9 and head[8:9] == b"{":
            f.seek(0)
            size = int.from_bytes(f.read(8), "little")
            return size < 100_000_000 and marker in f.read(size)
    return False


def _state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    state = obj.get("model", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping):
        raise TTDError(f"{path} is not a TCL checkpoint: expected a dict with a 'model' state dict")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}  # saved from inside DDP
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TTDError(f"{path}: the state dict holds objects that are not tensors ({_listing([str(k) for k in bad])})")
    if not any(k.startswith(_MASKER) for k in state):
        sample = ", ".join(list(state)[:3]) or "none"
        raise TTDError(f"{path} is not a TCL checkpoint: it has no masker.image_encoder.* keys (its first keys: {sample})")
    return dict(state)


def _split(state: dict[str, torch.Tensor], path: Path) -> tuple[dict, dict, dict]:
    """TCL's keys → (OpenAI-named CLIP towers, ttd-named masker, calibration); refuses strays."""
    clip, masker, calibration, stray = {}, {}, {}, []
    for key, value in state.items():
        if key.startswith(_IMAGE):
            clip["visual." + key[len(_IMAGE) :]] = value
        elif key == _IMAGE_PROJ + "proj":
            clip["visual.proj"] = value
        elif key.startswith(_IMAGE_PROJ + "ln."):
            clip["visual.ln_post." + key[len(_IMAGE_PROJ + "ln.") :]] = value
        elif key.startswith(_TEXT):
            clip[key[len(_TEXT) :]] = value
        elif key.startswith(_MASKER_BLOCK):
            index, _, rest = key[len(_MASKER_BLOCK) :].partition(".")
            if index != "0":
                raise TTDError(
                    f"{path}: the masker has more than one transformer block ({key}); only TCL's released "
                    "setting ie_freeze = depth - 1 (one block) is supported"
                )
            masker["backbone." + rest] = value
        elif key.startswith(_MASKER + "decoder.decoder."):
            masker["decoder." + key[len(_MASKER + "decoder.decoder.") :]] = value
        elif key.startswith(_MASKER + "decoder.image_proj."):
            masker["image_proj." + key[len(_MASKER + "decoder.image_proj.") :]] = value
        elif key in ("masker.sim2mask.w", "masker.sim2mask.b"):
            calibration["weight" if key.endswith("w") else "bias"] = value.reshape(())
        elif key not in _LOSS_KEYS and not key.startswith(_PAMR):
            stray.append(key)
    if stray:
        raise TTDError(f"{path} does not match TCL's layout: unexpected {_listing(stray)}")
    return clip, masker, calibration


def _decoder_shape(masker: dict[str, torch.Tensor], path: Path) -> dict:
    layers = {int(k.split(".")[2]) for k in masker if k.startswith("decoder.net.")}
    weight = masker.get("decoder.net.0.conv.conv.weight")
    if not layers or weight is None or weight.ndim != 4:
        raise TTDError(f"{path} does not match TCL's layout: missing masker.image_encoder.decoder.decoder.net.0.conv.conv.weight")
    double = any(k.startswith("decoder.net.0.conv2.") for k in masker)
    return {"n_layers": max(layers) + 1, "kernel_size": weight.shape[-1], "double": double}


def load_tcl(
    path: str | Path,
    clip: str | Path | None = None,
    quick_gelu: bool | None = None,
) -> TCL:
    """TCL's checkpoint (``tcl.pth``) as a :class:`TCL` model on the CPU, every key checked.

    The CLIP towers come from the file when it holds them, else from ``clip``; by default from
    OpenAI's ``~/.cache/clip/ViT-B-16.pt`` where TCL's own ``clip.load`` keeps it, else from
    ``ViT-B-16/openai``. ``quick_gelu`` defaults to QuickGELU (OpenAI's CLIP, which TCL is built on).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise TTDError(f"no such TCL checkpoint: {path}")
    checkpoint = read_checkpoint(path)
    state = _state_dict(checkpoint, path)
    clip_sd, masker_sd, calibration = _split(state, path)
    saved_config = _ttd_clip_config(checkpoint, path)
    source = str(path)
    has_image = any(k.startswith("visual.") for k in clip_sd)
    has_text = any(not k.startswith("visual.") for k in clip_sd)
    if has_image != has_text:
        tower = "text" if has_image else "image"
        raise TTDError(f"{path} holds only one CLIP tower (no {tower} tower): save both, or neither to use OpenAI's")
    quick = DEFAULT_QUICK_GELU if quick_gelu is None else quick_gelu
    if has_image:
        clip_sd.setdefault("logit_scale", torch.tensor(OPENAI_LOGIT_SCALE))
        try:
            config = saved_config or config_from_state_dict(clip_sd, quick_gelu=quick)
            if saved_config is not None and quick_gelu is not None:
                config = dataclasses.replace(config, quick_gelu=quick_gelu)
        except (KeyError, ValueError) as err:
            raise TTDError(f"{path} holds incomplete CLIP towers ({_first_line(err)})") from None
        _check_architecture(clip_sd, config, source)
    else:
        cached = Path(OPENAI_CLIP_FILE).expanduser()
        towers = load_weights(clip or (cached if cached.is_file() else DEFAULT_TCL_CLIP), quick_gelu=quick_gelu)
        clip_sd, config = towers.state_dict, towers.config
        source = f"{path} (CLIP towers: {towers.source})"
    with torch.device("meta"):
        clip_model = CLIP(config)
        masker = Masker(clip_model, **_decoder_shape(masker_sd, path))
    clip_model.load_state_dict({k: v.float() for k, v in clip_sd.items()}, assign=True)
    _check_masker(masker, masker_sd, path)
    masker.load_state_dict({k: v.float().contiguous() for k, v in masker_sd.items()}, assign=True)
    missing = sorted({"weight", "bias"} - set(calibration))
    if missing:
        raise TTDError(f"{path} does not match TCL's layout: missing masker.sim2mask.{'w' if 'weight' in missing else 'b'}")
    model = TCL(clip_model, HeatmapCalibration(float(calibration["weight"]), float(calibration["bias"])), source, masker)
    return model.eval()


def _ttd_clip_config(checkpoint, path: Path) -> CLIPConfig | None:
    """The architecture a file written by :func:`save_tcl` records (what its tensors cannot tell,
    e.g. the pooling of the global embedding); None for TCL's own files."""
    entry = checkpoint.get(TTD_ENTRY) if isinstance(checkpoint, Mapping) else None
    if not isinstance(entry, Mapping) or not isinstance(entry.get("clip_config"), str):
        return None
    try:
        return CLIPConfig(**json.loads(entry["clip_config"]))
    except (TypeError, ValueError) as err:
        raise TTDError(f"{path}: its recorded CLIP configuration cannot be read ({_first_line(err)})") from None


def tcl_state_dict(model: TCL, loss_scales: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The model's tensors under TCL's own key names (the inverse of what :func:`load_tcl` reads);
    ``loss_scales``: TCL's two learned loss temperatures (``tcli``, ``tclf``), saved as TCL saves them."""
    state = {}
    for key, value in model.clip.state_dict().items():
        if key == "visual.proj":
            state[_IMAGE_PROJ + "proj"] = value
        elif key.startswith("visual.ln_post."):
            state[_IMAGE_PROJ + "ln." + key[len("visual.ln_post.") :]] = value
        elif key.startswith("visual."):
            state[_IMAGE + key[len("visual.") :]] = value
        else:
            state[_TEXT + key] = value
    state.update({_tcl_name(k): v for k, v in model.masker.state_dict().items()})
    state["masker.sim2mask.w"] = model.calibration.weight.reshape(())
    state["masker.sim2mask.b"] = model.calibration.bias.reshape(())
    for name, value in (loss_scales or {}).items():
        state[f"{name}_loss.logit_scale"] = value.reshape(())
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_tcl(model: TCL, path: str | Path, loss_scales: Mapping[str, torch.Tensor] | None = None,
             dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as TCL writes ``tcl.pth`` (a ``torch.save`` zip with a ``model`` state dict
    in TCL's key names), atomically, plus its CLIP configuration; :func:`load_tcl` reads it back,
    and so does ``torch.load(weights_only=True)``. ``dtype``: e.g. float16 for a smaller file."""
    state = tcl_state_dict(model, loss_scales)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save({"model": state, TTD_ENTRY: {"clip_config": json.dumps(model.config.to_dict())}}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _check_masker(masker: Masker, state: dict[str, torch.Tensor], path: Path) -> None:
    """Every masker key present and shaped as the CLIP towers imply, named in TCL's terms."""
    problems = _key_problems(state, {k: v.shape for k, v in masker.state_dict().items()}, _tcl_name)
    if problems:
        raise TTDError(f"{path} does not match TCL's masker: {'; '.join(problems)}")


def _tcl_name(key: str) -> str:
    part, _, rest = key.partition(".")
    prefix = {
        "backbone": _MASKER_BLOCK + "0.",
        "decoder": _MASKER + "decoder.decoder.",
        "image_proj": _MASKER + "decoder.image_proj.",
    }[part]
    return prefix + rest
