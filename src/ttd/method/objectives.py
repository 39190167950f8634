"""Training objectives: one batch of pairs → a loss. The trainer is generic over these.

* :class:`TTDObjective`: Text-Tag Self-Distillation (METHOD §5) with online tag selection.
* :class:`ContrastiveObjective`: CLIP's symmetric InfoNCE (the plain baseline step; pretraining).
* :class:`DenseLabelObjective`: InfoNCE plus a per-patch class loss on object masks (pretraining a
  test bed whose dense maps localise, e.g. the mini-world's).

An objective is a callable ``(model, batch) -> (loss, metrics)`` with a ``metrics`` tuple naming
the scalar metrics it returns; the loss is the mean over the process's batch, so the trainer can
weight processes by their batch sizes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F

from ..distributed import gather_with_grad
from ..errors import TTDError
from ..models.dense import DenseCLIP
from ..models.lora import adapters_disabled
from ..models.tokenizer import tokenize
from .distill import DISTANCES, TAG_AVERAGES, ttd_loss
from .tags import TAG_SCORERS, SelectionInputs, TagSelection, batch_tags, candidate_tags

__all__ = [
    "TTDObjective",
    "ContrastiveObjective",
    "DenseLabelObjective",
    "patch_labels",
    "symmetric_infonce",
]


TEACHERS = ("online", "frozen")


class TTDObjective:
    """Text-Tag Self-Distillation: tag selection (step 1), then the losses of Eq. 4–5.

    ``teacher="online"`` (default): the CURRENT model selects. One forward pass gives the dense
    map, the caption and the tag embeddings; tags are selected from the DETACHED tag cosines of
    that same pass (no gradient, no second pass; with LoRA dropout above 0 the selection sees the
    dropped-out pass). ``teacher="frozen"``: the model as it was before training selects, in an
    extra pass without gradient (adapters switched off; a frozen copy under full fine-tuning).
    ``selection``: the settings of step 1; its scorer is one of :data:`TAG_SCORERS`.
    """

    metrics = ("l_distill", "l_tag", "selected", "candidates", "calibration_w", "calibration_b")

    def __init__(
        self,
        selection: TagSelection | None = None,
        distance: str = "mse",
        distill_weight: float = 1.0,
        tag_weight: float = 1.0,
        eps: float = 1e-6,
        teacher: str = "online",
        tag_average: str = "all",
    ):
        if teacher not in TEACHERS:
            raise TTDError(f"unknown teacher {teacher!r}; choose one of: {', '.join(TEACHERS)}")
        selection = selection or TagSelection()
        if selection.scorer not in TAG_SCORERS:
            raise TTDError(f"unknown tag scorer {selection.scorer!r}; choose one of: {', '.join(TAG_SCORERS)}")
        if teacher == "frozen" and selection.scorer in ("text", "image-text"):
            raise TTDError("the frozen teacher does not embed captions; choose scorer pixel or image")
        if tag_average not in TAG_AVERAGES:
            raise TTDError(f"unknown tag average {tag_average!r}; choose one of: {', '.join(TAG_AVERAGES)}")
        if distance not in DISTANCES:
            raise TTDError(f"unknown distance {distance!r}; choose one of: {', '.join(DISTANCES)}")
        self.selection, self.distance = selection, distance
        self.distill_weight, self.tag_weight, self.eps = distill_weight, tag_weight, eps
        self.teacher, self._frozen, self.tag_average = teacher, None, tag_average

    def prepare(self, model: DenseCLIP) -> None:
        """Called by the trainer before any update: keep a frozen copy when one is needed."""
        if self.teacher == "frozen" and model.finetune == "full":
            self._frozen = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def _teacher_pass(self, model: DenseCLIP, images: torch.Tensor, tag_tokens: torch.Tensor, index: torch.Tensor):
        """Global embeddings, tag embeddings and tag cosines of the frozen teacher."""
        teacher = self._frozen or model
        with adapters_disabled(model) if self._frozen is None else nullcontext():
            global_emb, dense = teacher.encode_image(images)
            tag_emb = teacher.encode_tokens(tag_tokens)[index]
            return global_emb, tag_emb, teacher.similarity(dense, tag_emb)

    def __call__(self, model: DenseCLIP, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        context = model.config.context_length
        tags = batch_tags(batch.captions, partial(candidate_tags, stopwords=self.selection.stopwords))
        global_emb, dense = model.encode_image(batch.images)
        caption_emb = model.encode_tokens(tokenize(batch.captions, context))
        index = tags.index.to(model.device)
        # tags are short: one call, padded only to the longest tag of the batch
        tag_tokens = tokenize([self.selection.prompt(t) for t in tags.unique] or [""], context)
        tag_emb = model.encode_tokens(tag_tokens)[index]
        if self.teacher == "frozen":
            teacher_seen = self._teacher_pass(model, batch.images, tag_tokens, index)
        # heatmaps, selection and losses in float32: bf16 cosines are too coarse for softmax at 100
        with torch.autocast(dense.device.type, enabled=False):
            dense, caption_emb, tag_emb = dense.float(), caption_emb.float(), tag_emb.float()
            caption_map = model.heatmap(dense, caption_emb[:, None])[:, 0]
            tag_cosines = model.similarity(dense, tag_emb)
            tag_maps = model.calibration(tag_cosines)
            with torch.no_grad():
                if self.teacher == "online":
                    seen = global_emb.detach().float(), tag_emb.detach(), tag_cosines.detach()
                else:
                    seen = tuple(t.float() for t in teacher_seen)
                s = self.selection
                inputs = SelectionInputs(batch.captions, tags, *seen, s.normalize, caption_emb.detach())
                scores = TAG_SCORERS[s.scorer](inputs)
                selected = s.decide(scores, tags.valid.to(scores.device))
            valid = tags.valid.to(selected.device)
            out = ttd_loss(caption_map, tag_maps, selected, valid, self.distance, self.tag_weight, self.distill_weight, self.eps,
                           self.tag_average)
        metrics = {
            "l_distill": out.distill.detach(),
            "l_tag": out.tag.detach(),
            "selected": selected.sum(dim=1).float().mean(),
            "candidates": valid.sum(dim=1).float().mean(),
            "calibration_w": model.calibration.weight.detach(),
            "calibration_b": model.calibration.bias.detach(),
        }
        return out.total, metrics


class ContrastiveObjective:
    """CLIP's symmetric InfoNCE over the global batch (negatives gathered from every process).

    Uses the plain global embeddings (``clip.encode_image``: the last block runs once) and the
    learnable logit scale, clamped at 100 as in CLIP.
    """

    metrics = ("logit_scale",)

    def __call__(self, model: DenseCLIP, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = F.normalize(model.clip.encode_image(batch.images), dim=-1)
        return self.loss(model, image, batch.captions)

    @staticmethod
    def loss(model: DenseCLIP, image: torch.Tensor, captions: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """InfoNCE of normalised image embeddings (B, C) against the captions' embeddings."""
        text = model.encode_tokens(tokenize(captions, model.config.context_length))
        scale = model.clip.logit_scale.exp().clamp(max=100)
        return symmetric_infonce(image, text, scale), {"logit_scale": scale.detach()}


def symmetric_infonce(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's loss for normalised pairs (B, C): each image against every process's texts and each
    text against every process's images, at logit scale ``scale``."""
    all_image, offset = gather_with_grad(image)
    all_text, _ = gather_with_grad(text)
    labels = torch.arange(offset, offset + image.shape[0], device=image.device)
    return (F.cross_entropy(scale * image @ all_text.T, labels) + F.cross_entropy(scale * text @ all_image.T, labels)) / 2


def patch_labels(labels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Class-id maps (B, H, W) → the majority id of each patch (B, h, w); ties go to the lowest id."""
    b, height, width = labels.shape
    h, w = grid
    if height % h or width % w:
        raise TTDError(f"label maps of {height}×{width} do not tile into the {h}×{w} patch grid; use the image size of the model")
    ph, pw = height // h, width // w
    patches = labels.reshape(b, h, ph, w, pw).permute(0, 1, 3, 2, 4).reshape(b, h, w, ph * pw)
    counts = torch.zeros(b, h, w, int(labels.max()) + 1, dtype=torch.long, device=labels.device)
    counts.scatter_add_(-1, patches, torch.ones_like(patches))
    return counts.argmax(dim=-1)  # argmax returns the first maximum: the lowest id


class DenseLabelObjective:
    """CLIP's InfoNCE plus ``weight`` × a per-patch class loss on object masks.

    The dense loss is a cross-entropy, at every patch of the dense map (the model's dense variant,
    e.g. MaskCLIP), over the text embeddings of the class names (raw words; id 0 names the
    background, e.g. ``"background"``) at the patch's majority class, scaled by the learnable logit
    scale. Each sample's classes are named by the words its caption uses (``batch.label_words``,
    caption word → class id; synonyms allowed); a synonym of the target class is not a negative.
    The caption never enters this loss, so the caption embedding stays free to follow one word:
    the model localises every object while its image-level tag scores keep single tag bias (like
    TCL, a dense model trained with a region-level objective). It needs ``batch.labels`` (B, H, W).
    """

    metrics = ("logit_scale", "l_contrastive", "l_dense", "dense_acc")
    needs_labels = True

    def __init__(self, class_names: Sequence[str], weight: float = 1.0):
        if len(class_names) < 2:
            raise TTDError("the dense objective needs a background name and at least one class name")
        if weight < 0:
            raise TTDError(f"dense weight must not be negative, got {weight}")
        self.class_names, self.weight = list(class_names), weight

    def _entries(self, label_words: Sequence[dict[str, int]]) -> tuple[list[str], list[int], list[dict[int, int]]]:
        """Texts to embed, the class id each names, and per sample class id → its text's index."""
        texts, owner = list(self.class_names), list(range(len(self.class_names)))
        index = {t: i for i, t in enumerate(texts)}
        per_sample = []
        for words in label_words:
            mine = {}
            for word, cid in words.items():
                if not 0 < cid < len(self.class_names):
                    raise TTDError(f"class id {cid} of {word!r} is not among the {len(self.class_names)} class names; pass the world's classes.txt as dense_classes")
                if word not in index or owner[index[word]] != cid:
                    index[word] = len(texts)
                    texts.append(word)
                    owner.append(cid)
                mine[cid] = index[word]
            per_sample.append(mine)
        return texts, owner, per_sample

    def dense_loss(self, model: DenseCLIP, dense: torch.Tensor, labels: torch.Tensor, label_words) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy, accuracy) of the dense map (B, C, h, w) against the class-id maps."""
        texts, owner, per_sample = self._entries(label_words)
        grid = patch_labels(labels.to(dense.device), dense.shape[-2:])  # (B, h, w) class ids
        if int(grid.max()) >= len(self.class_names):
            raise TTDError(f"the masks hold class id {int(grid.max())} but only {len(self.class_names)} class names are known; pass the world's classes.txt as dense_classes")
        # class id → text index, per sample (default: the class's own name)
        lookup = torch.arange(len(self.class_names)).repeat(len(per_sample), 1)
        for b, mine in enumerate(per_sample):
            for cid, i in mine.items():
                lookup[b, cid] = i
        lookup = lookup.to(dense.device)
        target = torch.gather(lookup, 1, grid.flatten(1)).view_as(grid)  # (B, h, w) text index
        text = model.encode_tokens(tokenize(texts, model.config.context_length))
        scale = model.clip.logit_scale.exp().clamp(max=100)
        logits = scale * torch.einsum("bchw,nc->bnhw", dense, text)
        # the other names of the target's class are not negatives
        owner = torch.tensor(owner, device=dense.device)
        same_class = (owner[None, :, None, None] == grid[:, None]) & (torch.arange(len(texts), device=dense.device)[None, :, None, None] != target[:, None])
        logits = logits.masked_fill(same_class, float("-inf"))
        loss = F.cross_entropy(logits, target)
        accuracy = (logits.argmax(dim=1) == target).float().mean()
        return loss, accuracy

    def __call__(self, model: DenseCLIP, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if batch.labels is None:
            raise TTDError("the dense objective needs object masks: read shards with labels (PairLoader(labels=True))")
        image, dense = model.encode_image(batch.images)  # one trunk pass for both
        contrastive, metrics = ContrastiveObjective.loss(model, image, batch.captions)
        with torch.autocast(dense.device.type, enabled=False):
            dense_loss, accuracy = self.dense_loss(model, dense.float(), batch.labels, batch.label_words)
        metrics.update(l_contrastive=contrastive.detach(), l_dense=dense_loss.detach(), dense_acc=accuracy.detach())
        return contrastive + self.weight * dense_loss, metrics
