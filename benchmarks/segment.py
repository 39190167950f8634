"""Speed of the segmentation engine against a naive reference loop, on a random ViT-B/16.

For each protocol the script segments a few generated VOC-sized images with
(a) ``ttd.segment.Segmenter``: all windows of an image in batched forwards, class text embeddings
    computed once (disk cache), PAMR at ``pamr_scale`` of the working resolution;
(b) a naive loop written the obvious way: one window per forward, every prompt re-encoded for
    every image, PAMR at the full working resolution;
checks that both give the same predictions when their settings agree, and prints images/s, the
speed-up and the share of the engine's wall time spent in the backbone forward.

    PYTHONPATH=src python benchmarks/segment.py [--images 3] [--naive-images 1] [--protocols tcl,tcl+pamr,sclip]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ttd import create_model
from ttd.images import normalize, resize_short_side, to_tensor
from ttd.pamr import pamr
from ttd.protocols import Protocol, load_protocol
from ttd.segment import Segmenter, apply_background_rule, window_boxes
from ttd.vocabulary import Vocabulary

CONFIGS = {
    "tcl": ("tcl", []),
    "tcl+pamr": ("tcl", ["pamr=true", "background_threshold=0.4"]),
    "sclip": ("sclip", []),
}
SIZES = [(500, 375), (375, 500), (500, 333), (500, 400)]


def generated_images(count: int) -> list[Image.Image]:
    """Smooth random blobs (not noise), VOC-like sizes."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        low = rng.random((6, 8, 3)).astype(np.float32)
        big = F.interpolate(torch.from_numpy(low).permute(2, 0, 1)[None], size=(h, w), mode="bicubic", align_corners=False)
        images.append(Image.fromarray((big[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)))
    return images


def naive_predict(model, protocol: Protocol, vocabulary: Vocabulary, image: Image.Image) -> torch.Tensor:
    """The straightforward implementation the engine is measured against."""
    model.clear_text_cache()
    queries, owners = vocabulary.queries(protocol.synonyms, protocol.background)
    templates = protocol.template_list()
    with torch.no_grad():
        text = torch.stack([
            F.normalize(model.encode_text([t.replace("{}", q) for t in templates]).mean(0), dim=-1) for q in queries
        ])
    x = to_tensor(image)
    h0, w0 = x.shape[-2:]
    total, views = torch.zeros(len(queries), h0, w0), 0
    for scale in protocol.scales:
        resized = resize_short_side(x, protocol.short_side * scale, protocol.max_long_side * scale, mode="bilinear")
        img = normalize(resized, protocol.pixel_mean, protocol.pixel_std)
        for flip in [False, True] if protocol.flip else [False]:
            view = img.flip(-1) if flip else img
            canvas = torch.zeros(len(queries), *view.shape[-2:])
            count = torch.zeros(1, *view.shape[-2:])
            for y1, y2, x1, x2 in window_boxes(*view.shape[-2:], protocol.crop_size, protocol.stride):
                with torch.no_grad():
                    _, dense = model.encode_image(view[None, :, y1:y2, x1:x2])
                    s = model.heatmap(dense, text) if protocol.background == "threshold" else model.similarity(dense, text)
                canvas[:, y1:y2, x1:x2] += F.interpolate(s, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0]
                count[:, y1:y2, x1:x2] += 1
            merged = F.interpolate((canvas / count)[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]
            total += merged.flip(-1) if flip else merged
            views += 1
    scores = total / views
    if protocol.pamr:  # at the full working resolution (the scale-1.0 resized image)
        work = resize_short_side(x, protocol.short_side, protocol.max_long_side, mode="bilinear")
        up = F.interpolate(scores[None], size=work.shape[-2:], mode="bilinear", align_corners=False)
        refined = pamr(work[None], up, protocol.pamr_iterations, protocol.pamr_dilations)
        scores = F.interpolate(refined, size=(h0, w0), mode="bilinear", align_corners=False)[0]
    return apply_background_rule(scores, owners, vocabulary, protocol)


def timed_backbone(model):
    """Wrap ``model.encode_image`` to add up the seconds spent in it."""
    spent = [0.0]
    real = model.encode_image

    def encode_image(images):
        start = time.perf_counter()
        out = real(images)
        spent[0] += time.perf_counter() - start
        return out

    model.encode_image = encode_image
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3, help="images segmented by the engine")
    parser.add_argument("--naive-images", type=int, default=1, help="of those, how many the naive loop segments")
    parser.add_argument("--protocols", default="tcl,tcl+pamr,sclip")
    args = parser.parse_args()
    os.environ.setdefault("TTD_CACHE", tempfile.mkdtemp(prefix="ttd-bench-cache-"))
    torch.manual_seed(0)
    model = create_model(dense="maskclip").eval()
    images = generated_images(args.images)
    vocabulary = Vocabulary.builtin("voc21")
    print(f"random ViT-B/16 (maskclip), {len(images)} images {[im.size for im in images]}, VOC21 vocabulary, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    rows = []
    for name in args.protocols.split(","):
        preset, overrides = CONFIGS[name]
        protocol = load_protocol(preset, "voc21", overrides)
        start = time.perf_counter()
        segmenter = Segmenter(model, protocol, vocabulary)  # cold: encodes and caches the vocabulary
        text_once = time.perf_counter() - start
        segmenter.predict(images[0])  # warm-up (kernel selection for these shapes), shared by both loops
        spent = timed_backbone(model)
        start = time.perf_counter()
        ours = [segmenter.predict(im) for im in images]
        ours_s = time.perf_counter() - start
        share = spent[0] / ours_s
        del model.encode_image
        start = time.perf_counter()
        subset = images[: max(1, min(args.naive_images, len(images)))]
        naive = [naive_predict(model, protocol, vocabulary, im) for im in subset]
        naive_s = time.perf_counter() - start
        same = ours
        if protocol.pamr and protocol.pamr_scale != 1.0:  # the naive loop refines at full resolution
            full = Segmenter(model, protocol.replace(pamr_scale=1.0), vocabulary)
            same = [full.predict(im) for im in subset]
        agree = np.mean([(a.labels == b[0]).float().mean().item() for a, b in zip(same, naive)])
        max_diff = max((a.scores - b[1]).abs().max().item() for a, b in zip(same, naive))
        agree_preset = np.mean([(a.labels == b[0]).float().mean().item() for a, b in zip(ours, naive)])
        classes = sorted(set().union(*(r.labels.unique().tolist() for r in ours)))
        print(f"  {name}: predicted classes {classes}; max |score difference| with the same settings {max_diff:.2e}")
        ours_ips, naive_ips = len(images) / ours_s, len(subset) / naive_s
        rows.append((name, ours_ips, naive_ips, ours_ips / naive_ips, share, agree, agree_preset, text_once))
        print(f"  {name}: ours {ours_s:.1f}s for {len(images)} images, naive {naive_s:.1f}s for {len(subset)}, "
              f"one-time vocabulary encoding {text_once:.1f}s", flush=True)

    print()
    print("| protocol | ours img/s | naive img/s | speed-up | backbone share (ours) | same predictions "
          "(same settings) | agreement (preset vs naive) | one-time text (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ours_ips, naive_ips, speedup, share, agree, agree_preset, text_once in rows:
        print(f"| {name} | {ours_ips:.3f} | {naive_ips:.4f} | {speedup:.1f}x | {100 * share:.1f}% | {100 * agree:.3f}% | "
              f"{100 * agree_preset:.2f}% | {text_once:.1f} |")
    print("\ngoals: speed-up >= 3x, backbone share >= 85%")


if __name__ == "__main__":
    main()
