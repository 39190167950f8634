"""Fit a base model's heatmap calibration (w, b of sigmoid(w·cos + b)) to caption masks.

    python benchmarks/fit_calibration.py --model runs/pre/model.safetensors --dense clip \
        --data TUNE/val/tags.jsonl --out calibrated.safetensors

The calibration is the project's addition to training-free dense models (METHOD §2): its default
(w 10, b −2.5) suits OpenAI CLIP's cosines, which live in about [0.1, 0.35]. A small CLIP
pretrained here has its own cosine range, so with the default its maps can sit below any
threshold. This fits w and b by logistic regression of "pixel inside the caption's mask" on the
caption map's cosine (upsampled to the mask), i.e. H becomes the probability a pixel belongs to the
caption. Fit it on a split you do not report (the tuning build); the weights file is rewritten
with the fitted calibration and nothing else changed.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

import ttd
from ttd.evaluate.caption import CaptionMaskDataset
from ttd.images import preprocess
from ttd.models.weights import recommended_protocol, save_weights


@torch.no_grad()
def caption_cosines(model, dataset: CaptionMaskDataset, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ``stride``-th pixel's caption cosine and whether it lies in the caption's mask."""
    size = model.config.image_size
    cosines, inside = [], []
    for sample in dataset:
        _, dense = model.encode_image(preprocess(sample.image, size=size)[None])
        cos = model.similarity(dense, [sample.caption])[0, 0]
        target = sample.target.flatten()[::stride]
        cos = F.interpolate(cos[None, None], size=sample.target.shape, mode="bilinear", align_corners=False).flatten()[::stride]
        known = target != 255
        cosines.append(cos[known].numpy())
        inside.append((target[known] == 1).numpy())
    return np.concatenate(cosines), np.concatenate(inside)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dense", default="clip")
    parser.add_argument("--data", required=True, help="a tags.jsonl with caption masks (a split you do not report)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--stride", type=int, default=4, help="use every N-th pixel")
    args = parser.parse_args(argv)
    model = ttd.load_model(args.model, dense=args.dense, device="cpu").eval()
    cos, inside = caption_cosines(model, CaptionMaskDataset.from_manifest(args.data), args.stride)
    fit = LogisticRegression(C=1e6).fit(cos[:, None], inside)
    w, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    print(f"{len(cos):,} pixels, {inside.mean():.3f} inside; cosines {np.percentile(cos, 5):.3f} … {np.percentile(cos, 95):.3f}; "
          f"calibration w {model.calibration.weight.item():.2f} → {w:.2f}, b {model.calibration.bias.item():.2f} → {b:.2f}")
    model.calibration.weight.fill_(w)
    model.calibration.bias.fill_(b)
    save_weights(model, args.out, protocol=recommended_protocol(args.model))


if __name__ == "__main__":
    main()
