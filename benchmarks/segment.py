"""Speed of the segmentation engine against a naive reference loop, on a random ViT-B/16.

For each protocol the script segments a few generated VOC-sized images (VOC21 vocabulary) with
(a) ``ttd.segment.Segmenter``: all windows of an image in batched forwards, class text embeddings
    computed once (and cached on disk), PAMR at ``pamr_scale`` of the working resolution;
(b) a naive loop written the way the reference code bases do it: one window per forward, every
    class's prompts re-encoded for every image (per class, padded to 77 tokens like
    ``clip.tokenize``; ``--naive-text short`` pads only to the longest prompt instead), PAMR at
    the full working resolution.
It checks that both give the same score maps when their settings agree, and prints images/s, the
speed-up, the naive loop's time split and the share of the engine's time in the backbone forward.

    PYTHONPATH=src python benchmarks/segment.py [--images 3] [--naive-images 2] [--protocols tcl,tcl+pamr,sclip]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ttd import create_model
from ttd.images import normalize, resize_short_side, to_tensor
from ttd.models.tokenizer import tokenize
from ttd.pamr import pamr
from ttd.protocols import Protocol, load_protocol
from ttd.segment import Segmenter, apply_background_rule, window_boxes
from ttd.vocabulary import Vocabulary

CONFIGS = {
    "tcl": ("tcl", ["pamr=false", "background_threshold=0.5"]),  # TCL without PAMR
    "tcl+pamr": ("tcl", []),  # the preset: TCL's released evaluation
    "sclip": ("sclip", []),
}
SIZES = [(500, 375), (375, 500), (500, 333), (500, 400)]


def generated_images(count: int) -> list[Image.Image]:
    """Smooth random blobs (not noise), VOC-like sizes."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        w, h = SIZES[i % len(SIZES)]
        low = torch.from_numpy(rng.random((3, 6, 8)).astype(np.float32))[None]
        big = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)[0].clamp(0, 1)
        images.append(Image.fromarray((big.permute(1, 2, 0).numpy() * 255).astype(np.uint8)))
    return images


def naive_predict(model, protocol: Protocol, vocabulary: Vocabulary, image: Image.Image, padded: bool, clock):
    """The straightforward implementation the engine is measured against; ``clock`` collects
    seconds per stage."""
    start = time.perf_counter()
    queries, owners = vocabulary.queries(protocol.synonyms, protocol.background)
    templates = protocol.template_list()
    rows = []
    with torch.no_grad():
        for q in queries:
            prompts = [t.replace("{}", q) for t in templates]
            emb = model.encode_tokens(tokenize(prompts, model.config.context_length, pad_to_context=padded))
            rows.append(F.normalize(emb.mean(0), dim=-1))
    text = torch.stack(rows)
    clock["text"] += time.perf_counter() - start

    start = time.perf_counter()
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
                    calibrated = protocol.background == "threshold"
                    s = model.heatmap(dense, text) if calibrated else model.similarity(dense, text)
                window = F.interpolate(s, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0]
                canvas[:, y1:y2, x1:x2] += window
                count[:, y1:y2, x1:x2] += 1
            merged = F.interpolate((canvas / count)[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]
            total += merged.flip(-1) if flip else merged
            views += 1
    scores = total / views
    clock["windows"] += time.perf_counter() - start

    start = time.perf_counter()
    if protocol.pamr:  # at the full working resolution (the scale-1.0 resized image)
        work = resize_short_side(x, protocol.short_side, protocol.max_long_side, mode="bilinear")
        up = F.interpolate(scores[None], size=work.shape[-2:], mode="bilinear", align_corners=False)
        refined = pamr(work[None], up, protocol.pamr_iterations, protocol.pamr_dilations)
        scores = F.interpolate(refined, size=(h0, w0), mode="bilinear", align_corners=False)[0]
    result = apply_background_rule(scores, owners, vocabulary, protocol)
    clock["pamr+rule"] += time.perf_counter() - start
    return result


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
    parser.add_argument("--naive-images", type=int, default=2, help="of those, how many the naive loop segments")
    parser.add_argument("--naive-text", choices=["padded", "short"], default="padded")
    parser.add_argument("--protocols", default="tcl,tcl+pamr,sclip")
    args = parser.parse_args()
    os.environ.setdefault("TTD_CACHE", tempfile.mkdtemp(prefix="ttd-bench-cache-"))
    torch.manual_seed(0)
    model = create_model(dense="maskclip").eval()
    images = generated_images(args.images)
    subset = images[: max(1, min(args.naive_images, len(images)))]
    vocabulary = Vocabulary.builtin("voc21")
    print(f"random ViT-B/16 (maskclip), engine on {len(images)} images {[im.size for im in images]}, naive loop on "
          f"{len(subset)}, VOC21 vocabulary, naive text {args.naive_text}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    rows = []
    for name in args.protocols.split(","):
        preset, overrides = CONFIGS[name]
        protocol = load_protocol(preset, "voc21", overrides)
        start = time.perf_counter()
        segmenter = Segmenter(model, protocol, vocabulary)  # cold: encodes and caches the vocabulary
        text_once = time.perf_counter() - start
        segmenter.predict(images[0])  # warm-up (kernel selection for these shapes), shared by both loops
        spent = timed_backbone(model)
        ours, ours_times, naive, naive_times = [], [], [], []
        clock: dict[str, float] = defaultdict(float)
        for i, image in enumerate(images):  # engine and naive loop alternate, so load changes hit both
            start = time.perf_counter()
            ours.append(segmenter.predict(image))
            ours_times.append(time.perf_counter() - start)
            if i < len(subset):
                backbone_before = spent[0]
                start = time.perf_counter()
                naive.append(naive_predict(model, protocol, vocabulary, image, args.naive_text == "padded", clock))
                naive_times.append(time.perf_counter() - start)
                spent[0] = backbone_before  # only the engine's backbone time is counted
        del model.encode_image
        share = spent[0] / sum(ours_times)
        same = ours
        if protocol.pamr and protocol.pamr_scale != 1.0:  # the naive loop refines at full resolution
            full = Segmenter(model, protocol.replace(pamr_scale=1.0), vocabulary)
            same = [full.predict(im) for im in subset]
        agree = np.mean([(a.labels == b[0]).float().mean().item() for a, b in zip(same, naive)])
        max_diff = max((a.scores - b[1]).abs().max().item() for a, b in zip(same, naive))
        classes = sorted(set().union(*(r.labels.unique().tolist() for r in ours)))
        paired = sum(naive_times) / sum(ours_times[: len(subset)])  # same images, interleaved
        ours_ips, naive_ips = len(images) / sum(ours_times), len(subset) / sum(naive_times)
        split = ", ".join(f"{k} {v / len(subset):.1f}s" for k, v in clock.items())
        rows.append((name, ours_ips, naive_ips, paired, share, agree, max_diff, text_once))
        print(f"  {name}: engine {1 / ours_ips:.2f} s/img; naive {1 / naive_ips:.2f} s/img ({split}); "
              f"one-time vocabulary encoding {text_once:.1f}s; predicted classes {classes}", flush=True)

    print()
    print("| protocol | engine img/s | naive img/s | speed-up (same images) | backbone share (engine) | same labels | "
          "max abs score diff | one-time text (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ours_ips, naive_ips, paired, share, agree, max_diff, text_once in rows:
        print(f"| {name} | {ours_ips:.3f} | {naive_ips:.4f} | {paired:.1f}x | {100 * share:.1f}% | "
              f"{100 * agree:.2f}% | {max_diff:.1e} | {text_once:.1f} |")
    print(f"\ngoals: speed-up >= 3x, backbone share >= 85% (load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
