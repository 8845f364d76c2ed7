"""Decode and resize every image once into a uint8 array on disk; augmentation runs on that.

The cache holds, for each image, the short side resized to ``S`` and the centre ``S x S`` square,
where ``S = input / crop_pct`` is what the backbone's evaluation crop needs (256 for 224 at
0.875). Evaluation takes the centre ``input x input`` crop of it, which is exactly the
backbone's resize + centre-crop preprocessing; training takes random resized crops and flips of it.
The array is memory-mapped, keyed by the data fingerprint, size and interpolation, and written
atomically, so a killed build leaves no half-written cache. Batches are made from it in
``transforms``.
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.io import atomic_path
from ..core.paths import cache_home
from ..core.progress import progress_bar
from .datasets import ImageDataset

_PIL_INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def cache_side(data_config: dict[str, Any]) -> int:
    """Side of the stored square: what the evaluation crop of ``input_size`` needs."""
    size = data_config["input_size"][-1]
    return int(math.floor(size / data_config.get("crop_pct", 0.875)))


def resize_center(img: Image.Image, side: int, interpolation: str = "bicubic") -> np.ndarray:
    """Short side to ``side`` (keeping the aspect ratio), then the centre ``side x side`` square."""
    w, h = img.size
    scale = side / min(w, h)
    nw, nh = max(side, round(w * scale)), max(side, round(h * scale))
    # reducing_gap makes downscaling huge images fast at no visible cost.
    img = img.resize((nw, nh), _PIL_INTERPOLATION.get(interpolation, Image.Resampling.BICUBIC),
                     reducing_gap=3.0)
    left, top = (nw - side) // 2, (nh - side) // 2
    return np.asarray(img.crop((left, top, left + side, top + side)), dtype=np.uint8)


def cache_path(ds: ImageDataset, side: int, interpolation: str) -> Path:
    """Where the cache of ``ds`` at ``side`` px lives."""
    key = hashlib.sha256(f"{ds.fingerprint}|{side}|{interpolation}".encode()).hexdigest()[:24]
    return cache_home() / "images" / f"{key}.npy"


def build_image_cache(ds: ImageDataset, side: int, interpolation: str = "bicubic",
                      workers: int | None = None, quiet: bool = False) -> np.ndarray:
    """The (N, side, side, 3) uint8 array of ``ds``, read from disk or built once and stored."""
    path = cache_path(ds, side, interpolation)
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        if arr.shape == (len(ds), side, side, 3):
            return arr
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ds), side, side, 3))

        def work(i: int) -> None:
            out[i] = resize_center(ds.image(i, draft_size=side), side, interpolation)

        # Pillow releases the GIL while decoding and resizing, so threads use every core.
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool, \
                progress_bar(f"caching {len(ds)} images at {side}px", len(ds), quiet) as bar:
            for _ in pool.map(work, range(len(ds))):
                bar.advance()
        out.flush()
    return np.load(path, mmap_mode="r")
