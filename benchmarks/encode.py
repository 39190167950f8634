"""Image and text encoding throughput of a random-weight ViT-B/16, against the machine's own peak.

Prints, for 224² and 448² inputs at batch 1 and 4: images/s, achieved GFLOP/s (FLOPs counted by
torch's FlopCounterMode on the real forward), and that figure as a fraction of the fp32
matrix-multiply peak measured in the same run. Then the text tower's prompts/s, and what TCL's
masker (its block, decoder and pixel projection) adds to a 448² MaskCLIP encode of the same CLIP,
both timed in alternation in the same run.

    python benchmarks/encode.py [--dense maskclip] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from ttd import create_model
from ttd.models.tcl import TCL, Gate


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(repeats: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_time(lambda: a @ b, repeats * 3) / 1e9


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", default="maskclip")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model(dense=args.dense).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dense={args.dense}")
    with torch.inference_mode():
        peak = matmul_peak(args.repeats)
        print(f"fp32 matmul peak (2048² @ 2048²): {peak:.1f} GFLOP/s\n")
        print("| size | batch | images/s | GFLOP/image | GFLOP/s | fraction of peak |")
        print("|---|---|---|---|---|---|")
        for size in (224, 448):
            for batch in (1, 4):
                images = torch.randn(batch, 3, size, size)
                run = lambda: model.encode_image(images)  # noqa: E731
                flops = count_flops(run)
                seconds = best_time(run, args.repeats)
                achieved = flops / seconds / 1e9
                print(
                    f"| {size}² | {batch} | {batch / seconds:.2f} | {flops / batch / 1e9:.1f} | "
                    f"{achieved:.1f} | {achieved / peak:.2f} |"
                )
            peak = matmul_peak(args.repeats)  # re-measure: these machines drift
        prompts = [f"a photo of a {i} {w}." for i, w in enumerate(["cat", "large red bus", "tree", "small cup"] * 64)]
        seconds = best_time(lambda: (model.clear_text_cache(), model.encode_text(prompts)), args.repeats)
        print(f"\ntext tower: {len(prompts) / seconds:.1f} prompts/s ({len(prompts)} distinct prompts, cache cleared)")
        tcl_overhead(model, args.repeats)


def tcl_overhead(model, repeats: int) -> None:
    """TCL on the same CLIP as a MaskCLIP, 448² batch 1: images/s of each, timed in alternation."""
    maskclip = create_model(model.config, dense="maskclip").eval()
    maskclip.clip = model.clip
    tcl = TCL(model.clip).eval()
    for gate in (m for m in tcl.modules() if isinstance(m, Gate)):
        gate.gate.data.fill_(0.5)  # as after training (zero gates compute the same, at the same cost)
    images = torch.randn(1, 3, 448, 448)
    runs = {"maskclip": lambda: maskclip.encode_image(images), "tcl": lambda: tcl.encode_image(images)}
    flops = {name: count_flops(run) for name, run in runs.items()}
    best = {name: best_time(run, 1) for name, run in runs.items()}  # warm-up and a first time
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], best_time(run, 1))
    extra = best["tcl"] / best["maskclip"] - 1
    print("\n| 448², batch 1 | images/s | GFLOP/image |")
    print("|---|---|---|")
    for name in runs:
        print(f"| {name} | {1 / best[name]:.2f} | {flops[name] / 1e9:.1f} |")
    print(f"TCL's masker adds {100 * extra:.0f} % to the MaskCLIP encode ({100 * (flops['tcl'] / flops['maskclip'] - 1):.0f} % in FLOPs)")


if __name__ == "__main__":
    main()
