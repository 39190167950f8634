"""Captions per second of pixel tag scoring (Eq. 2): batched + deduplicated vs one at a time.

Model: a random-weight ViT-B/16 MaskCLIP (``ttd.create_model()``; speed does not depend on the
weights). Data: ``--captions`` varied captions generated from small word lists, over ``--images``
distinct random images (default 256 captions over 16 images, 16 captions per image, as in
COCO-style data with several captions per picture; pass ``--images 256`` for one image each).

* batched: :meth:`ttd.method.tags.TagSelector.score_batch`, ``--batch-size`` captions per call: each
  distinct image of a batch encoded once, each distinct tag string once (cached across batches);
* naive: a loop that, per caption, encodes its image and re-encodes every tag string (no cache).

The naive loop is timed on the first ``--naive-subset`` captions (it is the slow one) and its
scores are checked equal to the batched ones there, in the same run. Run::

    PYTHONPATH=src python benchmarks/tags.py [--captions 256] [--images 16] [--device cuda]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

import ttd
from ttd.io import default_device
from ttd.method.tags import TagSelector, candidate_tags, pixel_tag_scores
from ttd.models import tokenize

DETERMINERS = ["a", "the", "two", "three", "some", "an old", "a small", "a large"]
ADJECTIVES = ["red", "wooden", "smiling", "wet", "striped", "shiny", "tall", "sleepy", "golden", "muddy"]
NOUNS = ["dog", "woman", "stop sign", "jacuzzi", "bicycle", "cat", "boat", "tree", "road", "kite",
         "horse", "umbrella", "table", "child", "train", "bench", "mountain", "pizza", "guitar", "field"]
VERBS = ["sits", "stands", "runs", "waits", "rests", "plays", "lies", "looks"]
PLACES = ["on", "near", "under", "beside", "in front of", "behind", "across"]


def make_captions(count: int, seed: int) -> list[str]:
    """Varied captions of 4–16 words: subject, optional verb and place phrases, optional clause."""
    rng = random.Random(seed)

    def phrase() -> str:
        return " ".join(w for w in (rng.choice(DETERMINERS), rng.choice(ADJECTIVES) if rng.random() < 0.6 else "", rng.choice(NOUNS)) if w)

    captions = []
    for _ in range(count):
        parts = [phrase()]
        if rng.random() < 0.7:
            parts.append(rng.choice(VERBS))
        parts += [rng.choice(PLACES), phrase()]
        if rng.random() < 0.4:
            parts += ["with", phrase()]
        captions.append(" ".join(parts).capitalize() + ".")
    return captions


@torch.no_grad()
def naive_scores(model, image: torch.Tensor, caption: str) -> torch.Tensor:
    """What a first implementation does: everything for one caption, nothing shared or cached."""
    _, dense = model.encode_image(image[None].to(model.device))
    tag_emb = model.encode_tokens(tokenize(candidate_tags(caption), model.config.context_length))
    return pixel_tag_scores(model.similarity(dense, tag_emb)[0].float()).cpu()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=256)
    parser.add_argument("--images", type=int, default=16, help="distinct random images the captions share")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--naive-subset", type=int, default=32, help="captions timed in the naive loop")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = default_device(args.device)
    model = ttd.create_model().to(device).eval()
    size = model.config.image_size
    captions = make_captions(args.captions, args.seed)
    pictures = [torch.randn(3, size, size) for _ in range(args.images)]
    per_image = -(-args.captions // args.images)
    images = [pictures[i // per_image] for i in range(args.captions)]  # captions of one image adjacent
    words = [len(candidate_tags(c)) for c in captions]
    distinct = len({w for c in captions for w in candidate_tags(c)})
    print(f"device {device}, torch threads {torch.get_num_threads()}, random-weight ViT-B/16 MaskCLIP")
    print(f"{args.captions} captions over {args.images} images; {sum(words)} candidates "
          f"({min(words)}–{max(words)} per caption), {distinct} distinct words")

    selector = TagSelector(model)
    with torch.no_grad():  # warm-up: first-call allocations and kernel selection
        model.encode_image(torch.randn(2, 3, size, size, device=device))
        model.encode_tokens(tokenize(["warm up"]).to(device))
    model.clear_text_cache()

    sync(device)
    start = time.perf_counter()
    batched = []
    for i in range(0, args.captions, args.batch_size):
        scored = selector.score_batch(images[i : i + args.batch_size], captions[i : i + args.batch_size])
        batched += [scored.row("pixel", k) for k in range(len(scored.words))]
    sync(device)
    batched_s = time.perf_counter() - start

    subset = min(args.naive_subset, args.captions)
    sync(device)
    start = time.perf_counter()
    naive = [naive_scores(model, images[i], captions[i]) for i in range(subset)]
    sync(device)
    naive_s = time.perf_counter() - start

    worst = max(float((a - b).abs().max()) for a, b in zip(naive, batched))
    if worst > 1e-4:
        raise SystemExit(f"MISMATCH: batched and naive pixel scores differ by up to {worst:.2e}")
    batched_rate, naive_rate = args.captions / batched_s, subset / naive_s
    print(f"batched+dedup : {args.captions:4d} captions in {batched_s:8.2f} s = {batched_rate:8.2f} captions/s "
          f"(batch {args.batch_size})")
    print(f"naive loop    : {subset:4d} captions in {naive_s:8.2f} s = {naive_rate:8.2f} captions/s "
          f"(first {subset} captions)")
    print(f"speed-up      : {batched_rate / naive_rate:.1f}x; scores equal within {worst:.1e} on the {subset} compared captions")


if __name__ == "__main__":
    main()
