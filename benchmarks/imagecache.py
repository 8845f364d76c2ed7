"""One pass over a dataset's images: straight from JPEG (the naive loop) vs from the image cache.

    python benchmarks/imagecache.py --data ../shared/datasets/hymenoptera [--repeats 3]

Naive reference: every epoch decodes each file with Pillow and runs timm's eval transform
(resize + centre crop + normalise), one image at a time, as a torchvision ImageFolder loop does.
Cached: the uint8 memory-mapped array built once, centre-cropped and normalised in batches of 32.
The one-off cost of building the cache is reported separately. Medians over ``--repeats`` passes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("TRANSFERLAB_HOME", tempfile.mkdtemp(prefix="tl-bench-"))

    import torch
    from PIL import Image
    from timm.data import create_transform

    from transferlab.data import load_dataset
    from transferlab.data.imagecache import build_image_cache, cache_side
    from transferlab.data.transforms import eval_batch
    from transferlab.models import backbone_spec

    cfg = backbone_spec(args.backbone).data_config
    ds = load_dataset(args.data)
    transform = create_transform(**cfg)

    def naive_pass() -> None:
        for p in ds.paths:
            with Image.open(p) as img:
                transform(img.convert("RGB"))

    t = time.perf_counter()
    cache = build_image_cache(ds, cache_side(cfg), cfg["interpolation"], quiet=True)
    build = time.perf_counter() - t

    def cached_pass() -> None:
        for i in range(0, len(ds), 32):
            eval_batch(cache[i:i + 32], cfg)

    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for name, fn in (("naive (JPEG decode + timm transform)", naive_pass), ("image cache", cached_pass)):
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        rows.append((name, statistics.median(times)))
    base = rows[0][1]
    print(f"{len(ds)} images, {args.backbone} preprocessing, cache side {cache_side(cfg)}px; "
          f"one-off cache build {build:.2f}s")
    print(f"{'pass':40s} {'median s':>9s} {'img/s':>8s} {'speed-up':>9s}")
    for name, sec in rows:
        print(f"{name:40s} {sec:9.3f} {len(ds) / sec:8.0f} {base / sec:8.1f}x")


if __name__ == "__main__":
    main()
