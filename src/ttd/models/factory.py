"""Build dense CLIP models: from a configuration (random weights) or from real weights."""

from __future__ import annotations

import torch

from ..errors import TTDError
from ..io import default_device
from .clip import CLIP, CLIPConfig
from .dense import DenseCLIP
from .registry import dense_variant
from .tcl import is_tcl_checkpoint, load_tcl
from .weights import default_readout, embedded_file, load_weights

__all__ = ["create_model", "load_model"]


def create_model(config: CLIPConfig | None = None, dense: str = "maskclip", **overrides) -> DenseCLIP:
    """A randomly initialised dense CLIP (ViT-B/16 shapes unless told otherwise)."""
    config = config or CLIPConfig()
    if overrides:
        config = CLIPConfig(**{**config.to_dict(), **overrides})
    return dense_variant(dense)(CLIP(config))


def load_model(
    name_or_path: str,
    dense: str | None = None,
    device: str | None = None,
    quick_gelu: bool | None = None,
) -> DenseCLIP:
    """Load real CLIP weights (a known name such as ``ViT-B-16/openai`` or a local file) as a
    dense model in eval mode.

    ``quick_gelu=None`` takes the activation from the source (named weights, ``config.json``,
    ttd's metadata), else QuickGELU; ``True``/``False`` overrides it (a bare state dict does not
    say which one its weights were trained with; see :mod:`ttd.models.weights`).

    ``dense=None`` takes the variant from the file: ``tcl`` for TCL's checkpoint (``tcl.pth``,
    read by :func:`ttd.models.tcl.load_tcl`), the registered readout for a known name (``clip``
    for the embedded ``miniworld-clip``), else ``maskclip``.
    """
    packaged = embedded_file(name_or_path)  # an embedded TCL-like base is a TCL checkpoint too
    if is_tcl_checkpoint(packaged or name_or_path):
        if dense not in (None, "tcl"):
            raise TTDError(f"{name_or_path} is a TCL checkpoint: pass --dense tcl (or no --dense), not {dense!r}")
        model = load_tcl(packaged or name_or_path, quick_gelu=quick_gelu)
        if packaged:
            model.source = str(name_or_path)  # the embedded name, not its path inside the package
        return model.to(default_device(device)).eval().requires_grad_(False)
    variant = dense_variant(dense or default_readout(name_or_path)[0])
    loaded = load_weights(name_or_path, quick_gelu=quick_gelu)
    # Built on the meta device, then given the loaded tensors: no random initialisation to
    # throw away (seconds for ViT-L). load_weights has checked every key and shape already.
    with torch.device("meta"):
        clip = CLIP(loaded.config)
    clip.load_state_dict(loaded.state_dict, assign=True)
    model = variant(clip, source=loaded.source)
    if loaded.calibration is not None:
        model.calibration.load_state_dict(loaded.calibration)
    # an inference model: outputs carry no autograd graph; training unfreezes what it trains (set_trainable)
    return model.to(default_device(device)).eval().requires_grad_(False)
