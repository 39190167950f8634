"""Mini-world build speed, side by side: image sizes, masks on/off, worker processes.

    python benchmarks/miniworld_build.py [--images 1000] [--source /usr/share/openclipart/png]

Needs the clip art (apt-get install -y openclipart-png). Each row is a fresh build in a temporary
folder, and like every build (and every worker process) it first decodes the source PNGs it draws,
a cost printed on the first line.
On a shared machine wall-clock rates vary with the load: "CPU images/s" divides by the CPU time of
this process and its workers instead, which the other users of the machine do not change.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from ttd.data.miniworld import DEFAULT_SOURCE, ClipArt, MiniWorldConfig, build_miniworld, load_vocabulary
from ttd.io import markdown_table


def _cpu_seconds() -> float:
    return sum(
        r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args()

    vocabulary = load_vocabulary()
    start = time.perf_counter()
    clipart = ClipArt(args.source, vocabulary, 64)
    for i, noun in enumerate(vocabulary):
        for j in range(len(noun.files)):
            clipart.cutout(i, j)
    print(f"decoding all {sum(len(n.files) for n in vocabulary)} clip-art files once: {time.perf_counter() - start:.1f} s")

    rows = []
    for size, masks, workers in [(64, True, 0), (64, False, 0), (64, True, 2), (128, True, 0), (224, True, 0)]:
        n = args.images * 64 // size
        with tempfile.TemporaryDirectory() as tmp:
            cpu = _cpu_seconds()
            config = MiniWorldConfig(train=n, val=0, size=size, train_masks=masks)
            s = build_miniworld(Path(tmp) / "w", config, source=args.source, workers=workers, progress=False)
            cpu = _cpu_seconds() - cpu
            files = sum(1 for p in (Path(tmp) / "w").rglob("*") if p.is_file())
        rate, cpu_rate = f"{s['images_per_s']:.0f}", f"{n / cpu:.0f}"
        rows.append([size, "yes" if masks else "no", workers, n, f"{s['seconds']:.1f}", rate, cpu_rate, files])
    print(markdown_table(["size", "masks", "workers", "images", "seconds", "images/s", "CPU images/s", "files"], rows))


if __name__ == "__main__":
    main()
