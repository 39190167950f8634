"""TCL's training objective (Cha et al., CVPR 2023): grounding learnt from captions alone.

A base for TTD to start from, as the paper's TCL row does. CLIP stays frozen; TCL's masker
(:class:`ttd.models.tcl.Masker`: a copy of CLIP's last block run self-attending, a gated decoder,
a per-pixel projection) and Sim2Mask learn to predict, for every caption of the batch, a soft mask
of where the caption is in each image. No mask is ever seen. The terms, as in the authors' code
(their weights are the defaults here):

* **image-level TCL** (``tcli``): the image multiplied by its own caption's hard mask (Gumbel
  sigmoid, straight-through) goes through frozen CLIP again; InfoNCE of that embedding against the
  captions, at a learned temperature;
* **feature-level TCL** (``tclf``): the masker's embedding map pooled under each caption's soft
  mask, one embedding per (image, caption), and InfoNCE between them and the captions (image b
  against caption n uses image b's map pooled under caption n's mask), at a learned temperature;
* **area prior**: the mean of each image's own-caption mask is pulled to 0.4, that of the other
  captions' masks to 0;
* **smoothness**: total variation of the embedding map and of the masks.

``total = tcl_weight·(tcli + tclf) + area_weight·(area_pos + area_neg) + tv_weight·(tv_map + tv_mask)``

TCL first trains the decoder alone (its masker block frozen) for ``decoder_only_steps`` steps,
then the whole masker.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_with_grad
from ..errors import TTDError
from ..models.dense import DenseCLIP
from ..models.tcl import TCL, self_attending
from ..models.tokenizer import tokenize
from .objectives import symmetric_infonce

__all__ = ["TCLObjective", "TCLLossScales", "gumbel_sigmoid", "total_variation", "masked_pool"]

AREA_PRIOR = 0.4  # TCL's prior on the share of an image its own caption covers


class TCLLossScales(nn.Module):
    """TCL's two learned InfoNCE logit scales (log(1/0.07) at the start, clamped at 100 when used);
    saved in TCL's checkpoints as ``tcli_loss.logit_scale`` and ``tclf_loss.logit_scale``."""

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        self.tcli = nn.Parameter(torch.tensor(math.log(1 / temperature)))
        self.tclf = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def scale(self, name: str) -> torch.Tensor:
        return getattr(self, name).exp().clamp(max=100)


def gumbel_sigmoid(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """A hard 0/1 sample of ``sigmoid(logits)`` with logistic noise, straight-through gradients."""
    u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + torch.log(u / (1 - u))) / tau)
    return (soft > 0.5).to(soft.dtype) - soft.detach() + soft


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of horizontal plus vertical neighbours of (B, C, H, W) maps."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()


def masked_pool(embedding_map: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, H, W) maps averaged under (B, N, H, W) soft masks → (B, N, C)."""
    weights = masks / (masks.sum(dim=(2, 3), keepdim=True) + eps)
    return torch.einsum("bchw,bnhw->bnc", embedding_map, weights)


class TCLObjective:
    """TCL's losses on a :class:`ttd.models.tcl.TCL` model with frozen CLIP towers (see the module docstring)."""

    metrics = ("l_tcli", "l_tclf", "l_area", "l_tv", "mask_area", "calibration_w", "calibration_b")
    trained_prefixes = ("masker.", "calibration.", "tcl_loss_scales.")

    def __init__(self, tcl_weight: float = 0.1, area_weight: float = 0.4, tv_weight: float = 1.0,
                 decoder_only_steps: int = 0, gumbel_tau: float = 1.0):  # fmt: skip
        for name, value in (("tcl_weight", tcl_weight), ("area_weight", area_weight), ("tv_weight", tv_weight),
                            ("decoder_only_steps", decoder_only_steps)):  # fmt: skip
            if value < 0:
                raise TTDError(f"{name} must not be negative, got {value}")
        self.tcl_weight, self.area_weight, self.tv_weight = tcl_weight, area_weight, tv_weight
        self.decoder_only_steps, self.gumbel_tau = decoder_only_steps, gumbel_tau
        self._decoder_only = decoder_only_steps > 0

    def prepare(self, model: DenseCLIP) -> None:
        """Give the model TCL's loss temperatures (trained and checkpointed with it)."""
        if not isinstance(model, TCL):
            raise TTDError(f"the tcl objective trains TCL's masker: use --dense tcl (got {model.name!r})")
        if not hasattr(model, "tcl_loss_scales"):
            model.tcl_loss_scales = TCLLossScales().to(model.device)

    def trainable(self, model: DenseCLIP) -> list[str]:
        """The masker, Sim2Mask and the temperatures train; both CLIP towers stay frozen."""
        names = []
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(self.trained_prefixes))
            if p.requires_grad:
                names.append(name)
        model.finetune = "full"
        return names

    def begin_step(self, step: int) -> None:
        """Called by the trainer before each step: the first ``decoder_only_steps`` train the decoder alone."""
        self._decoder_only = step < self.decoder_only_steps

    def __call__(self, model: TCL, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = batch.images
        visual, masker = model.clip.visual, model.masker
        with torch.no_grad():
            x, grid = visual.trunk(images)
            text = model.encode_tokens(tokenize(batch.captions, model.config.context_length))
        with torch.no_grad() if self._decoder_only else torch.enable_grad():
            tokens = self_attending(masker.backbone, x)
        embedding_map = masker.decode(tokens, grid)  # (B, C, H, W), not normalised
        with torch.autocast(images.device.type, enabled=False):
            embedding_map = embedding_map.float()
            all_text, offset = gather_with_grad(text.float())
            b = images.shape[0]
            own = torch.arange(b, device=images.device) + offset  # each image's caption among all_text
            cosines = torch.einsum("bchw,nc->bnhw", F.normalize(embedding_map, dim=1), all_text)
            logits = model.calibration.weight * cosines + model.calibration.bias
            soft = torch.sigmoid(logits)  # (B, N, H, W): every caption's mask in every image
            rows = torch.arange(b, device=images.device)
            soft_own = soft[rows, own]
            others = torch.ones_like(soft[:, :, 0, 0], dtype=torch.bool)
            others[rows, own] = False
            area = (soft_own.mean() - AREA_PRIOR).abs() + (soft[others].mean() if others.any() else soft.sum() * 0)

            scales = model.tcl_loss_scales
            pooled = F.normalize(masked_pool(embedding_map, soft), dim=-1)  # (B, N, C)
            tclf = _extended_infonce(pooled, text.float(), all_text, offset, scales.scale("tclf"))

            hard_own = gumbel_sigmoid(logits[rows, own], self.gumbel_tau)[:, None]  # (B, 1, H, W)
            masked = F.interpolate(hard_own, size=images.shape[-2:], mode="nearest") * images.float()
        masked_emb = F.normalize(model.clip.encode_image(masked.to(images.dtype)).float(), dim=-1)  # frozen CLIP
        tcli = symmetric_infonce(masked_emb, text.float(), scales.scale("tcli"))
        tv = total_variation(embedding_map) + total_variation(soft)
        loss = self.tcl_weight * (tcli + tclf) + self.area_weight * area + self.tv_weight * tv
        metrics = {
            "l_tcli": tcli.detach(),
            "l_tclf": tclf.detach(),
            "l_area": area.detach(),
            "l_tv": tv.detach(),
            "mask_area": soft_own.detach().mean(),
            "calibration_w": model.calibration.weight.detach(),
            "calibration_b": model.calibration.bias.detach(),
        }
        return loss, metrics


def _extended_infonce(pooled: torch.Tensor, text: torch.Tensor, all_text: torch.Tensor, offset: int,
                      scale: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """TCL's ExtendedInfoNCE: image b against caption n through ``pooled[b, n]`` (image b pooled
    under caption n's mask), in both directions, across processes."""
    b = pooled.shape[0]
    labels = torch.arange(b, device=pooled.device) + offset
    per_image = torch.einsum("bnc,nc->bn", pooled, all_text)  # image b vs every caption
    mine = pooled[:, offset : offset + b]  # every local image under the local captions' masks
    all_mine, _ = gather_with_grad(mine.reshape(b, -1))  # (N, b·C): every image under these captions
    per_text = torch.einsum("nbc,bc->bn", all_mine.reshape(all_mine.shape[0], b, -1), text)  # caption b vs every image
    return (F.cross_entropy(scale * per_image, labels) + F.cross_entropy(scale * per_text, labels)) / 2
