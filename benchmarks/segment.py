"""Speed of the segmentation engine against a naive reference loop, on a random ViT-B/16.

For each protocol the script segments a few generated VOC-sized images (VOC21 vocabulary) with
(a) ``ttd.segment.Segmenter``: all windows of an image in batched forwards, class text embeddings
    computed once (and cached on disk), PAMR at ``pamr_scale`` of the working resolution;
(b) a naive loop written the way the reference code bases do it: one window per forward, every
    class's prompts re-encoded for every image (per class, padded to 77 tokens like
    ``clip.tokenize``; ``--naive-text short`` pads only to the longest prompt instead), PAMR at
    the full working resolution.
It checks that both give the same score maps when their settings agree, and prints images/s, the
speed-up, the naive loop's time split and the share of the engine's time in the backbone forward
and in PAMR. With PAMR on, the same images are also segmented with PAMR on torch's own thread
count (``ttd.pamr.PAMR_THREADS = None``, the loop before it ran on one thread), interleaved.

With ``--miniworld-seg ROOT`` (a built mini-world's ``seg/val``) and/or ``--miniworld-captions
MANIFEST`` (its ``val/tags.jsonl``) it also times ``ttd eval seg|caption`` of the embedded mini CLIP
(``--model miniworld --protocol miniworld``) one image at a time (``batch_size=1``) and batched
(``--batch-size``), alternating, and checks that both give the same counts.

    PYTHONPATH=src python benchmarks/segment.py [--images 3] [--naive-images 2] [--protocols tcl,tcl+pamr,sclip]
    PYTHONPATH=src python benchmarks/segment.py --protocols none --miniworld-seg W/seg/val \
        --miniworld-captions W/val/tags.jsonl
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

import ttd.pamr
import ttd.segment
from ttd import create_model, load_model
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


def timed_pamr():
    """Wrap the engine's ``pamr`` to add up the seconds spent in it (undo: ``del``-free, returns the real one)."""
    spent = [0.0]
    real = ttd.segment.pamr

    def pamr(*args):
        start = time.perf_counter()
        out = real(*args)
        spent[0] += time.perf_counter() - start
        return out

    ttd.segment.pamr = pamr
    return spent, real


def miniworld_speed(args) -> None:
    """``ttd eval seg|caption`` on the mini-world: one image at a time vs batched, alternating."""
    from ttd.data.segmentation import load_segmentation_dataset
    from ttd.evaluate.caption import CaptionMaskDataset, evaluate_captions
    from ttd.evaluate.segmentation import evaluate_segmentation

    model = load_model("miniworld").eval()
    protocol = load_protocol("miniworld")
    tasks = []
    if args.miniworld_seg:
        dataset = load_segmentation_dataset("generic", args.miniworld_seg)
        tasks.append(("eval seg", lambda b: evaluate_segmentation(
            model, dataset, protocol, None, limit=args.miniworld_limit, figures=0, batch_size=b, progress=False)))
    if args.miniworld_captions:
        captions = CaptionMaskDataset.from_manifest(args.miniworld_captions)
        tasks.append(("eval caption", lambda b: evaluate_captions(
            model, captions, protocol, None, limit=args.miniworld_limit, figures=0, batch_size=b, progress=False)))
    print(f"\nmini-world: embedded mini CLIP, protocol miniworld, {args.miniworld_limit} images per run, "
          f"{args.rounds} rounds, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print("| command | images | one at a time img/s | batched img/s | speed-up | same counts |")
    print("|---|---|---|---|---|---|")
    for name, run in tasks:
        run(args.batch_size)  # warm-up: text cache, kernel selection
        seconds = {1: 0.0, args.batch_size: 0.0}
        results = {}
        count = 0
        for _ in range(args.rounds):  # alternate, so load changes hit both
            for batch in (1, args.batch_size):
                start = time.perf_counter()
                results[batch] = run(batch)
                seconds[batch] += time.perf_counter() - start
            count += results[1].get("images", results[1].get("records"))
        same = results[1]["confusion_matrix"] == results[args.batch_size]["confusion_matrix"]
        one, many = count / seconds[1], count / seconds[args.batch_size]
        print(f"| {name} | {count // args.rounds} | {one:.1f} | {many:.1f} (batch {args.batch_size}) | "
              f"{many / one:.1f}x | {same} |", flush=True)
    print(f"goal: >= 100 img/s batched on 2 idle cores (load average now {os.getloadavg()[0]:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3, help="images segmented by the engine")
    parser.add_argument("--naive-images", type=int, default=2, help="of those, how many the naive loop segments")
    parser.add_argument("--naive-text", choices=["padded", "short"], default="padded")
    parser.add_argument("--protocols", default="tcl,tcl+pamr,sclip", help="'none': skip the ViT-B/16 part")
    parser.add_argument("--miniworld-seg", help="a built mini-world's seg/val (generic layout)")
    parser.add_argument("--miniworld-captions", help="a built mini-world's val/tags.jsonl")
    parser.add_argument("--miniworld-limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.protocols == "none":
        os.environ.setdefault("TTD_CACHE", tempfile.mkdtemp(prefix="ttd-bench-cache-"))
        miniworld_speed(args)
        return
    args.protocols = [p for p in args.protocols.split(",") if p]
    os.environ.setdefault("TTD_CACHE", tempfile.mkdtemp(prefix="ttd-bench-cache-"))
    torch.manual_seed(0)
    model = create_model(dense="maskclip").eval()
    images = generated_images(args.images)
    subset = images[: max(0, min(args.naive_images, len(images)))]
    vocabulary = Vocabulary.builtin("voc21")
    print(f"random ViT-B/16 (maskclip), engine on {len(images)} images {[im.size for im in images]}, naive loop on "
          f"{len(subset)}, VOC21 vocabulary, naive text {args.naive_text}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    rows = []
    for name in args.protocols:
        preset, overrides = CONFIGS[name]
        protocol = load_protocol(preset, "voc21", overrides)
        start = time.perf_counter()
        segmenter = Segmenter(model, protocol, vocabulary)  # cold: encodes and caches the vocabulary
        text_once = time.perf_counter() - start
        segmenter.predict(images[0])  # warm-up (kernel selection for these shapes), shared by both loops
        spent = timed_backbone(model)
        in_pamr, real_pamr = timed_pamr()
        ours, ours_times, naive, naive_times = [], [], [], []
        torch_threads_times, torch_threads_backbone, torch_threads_pamr = [], 0.0, 0.0
        clock: dict[str, float] = defaultdict(float)
        for i, image in enumerate(images):  # engine and naive loop alternate, so load changes hit both
            start = time.perf_counter()
            ours.append(segmenter.predict(image))
            ours_times.append(time.perf_counter() - start)
            if protocol.pamr:  # the same image with PAMR on torch's thread count (the loop before)
                backbone_before, pamr_before = spent[0], in_pamr[0]
                ttd.pamr.PAMR_THREADS = None
                start = time.perf_counter()
                segmenter.predict(image)
                torch_threads_times.append(time.perf_counter() - start)
                ttd.pamr.PAMR_THREADS = 1
                torch_threads_backbone += spent[0] - backbone_before
                torch_threads_pamr += in_pamr[0] - pamr_before
                spent[0], in_pamr[0] = backbone_before, pamr_before
            if i < len(subset):
                backbone_before = spent[0]
                start = time.perf_counter()
                naive.append(naive_predict(model, protocol, vocabulary, image, args.naive_text == "padded", clock))
                naive_times.append(time.perf_counter() - start)
                spent[0] = backbone_before  # only the engine's backbone time is counted
        del model.encode_image
        ttd.segment.pamr = real_pamr
        share, pamr_share = spent[0] / sum(ours_times), in_pamr[0] / sum(ours_times)
        before = (f"{100 * torch_threads_backbone / sum(torch_threads_times):.1f}% / "
                  f"{100 * torch_threads_pamr / sum(torch_threads_times):.1f}%") if torch_threads_times else "–"
        classes = sorted(set().union(*(r.labels.unique().tolist() for r in ours)))
        if subset:
            same = ours
            if protocol.pamr and protocol.pamr_scale != 1.0:  # the naive loop refines at full resolution
                full = Segmenter(model, protocol.replace(pamr_scale=1.0), vocabulary)
                same = [full.predict(im) for im in subset]
            agree = np.mean([(a.labels == b[0]).float().mean().item() for a, b in zip(same, naive)])
            max_diff = max((a.scores - b[1]).abs().max().item() for a, b in zip(same, naive))
            paired = sum(naive_times) / sum(ours_times[: len(subset)])  # same images, interleaved
            naive_ips = len(subset) / sum(naive_times)
            split = ", ".join(f"{k} {v / len(subset):.1f}s" for k, v in clock.items())
        else:
            agree = max_diff = paired = naive_ips = float("nan")
            split = "not run"
        ours_ips = len(images) / sum(ours_times)
        rows.append((name, ours_ips, naive_ips, paired, share, pamr_share, before, agree, max_diff, text_once))
        print(f"  {name}: engine {1 / ours_ips:.2f} s/img; naive {1 / naive_ips:.2f} s/img ({split}); "
              f"one-time vocabulary encoding {text_once:.1f}s; predicted classes {classes}", flush=True)

    if rows:
        print()
        print("| protocol | engine img/s | naive img/s | speed-up (same images) | backbone share (engine) | PAMR share | "
              "backbone / PAMR share, PAMR on torch threads | same labels | max abs score diff | one-time text (s) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, ours_ips, naive_ips, paired, share, pamr_share, before, agree, max_diff, text_once in rows:
            print(f"| {name} | {ours_ips:.3f} | {naive_ips:.4f} | {paired:.1f}x | {100 * share:.1f}% | "
                  f"{100 * pamr_share:.1f}% | {before} | {100 * agree:.2f}% | {max_diff:.1e} | {text_once:.1f} |")
        print(f"\ngoals: speed-up >= 3x, backbone share >= 85% (load average now {os.getloadavg()[0]:.1f})")
    if args.miniworld_seg or args.miniworld_captions:
        miniworld_speed(args)


if __name__ == "__main__":
    main()
