"""Decode and resize every image once into a uint8 array on disk; augmentation runs on that.

The cache holds, for each image, the short side resized to ``S`` and the centre ``S x S`` square,
where ``S = input / crop_pct`` is what the backbone's evaluation crop needs (256 for 224 at
0.875). Evaluation takes the centre ``input x input`` crop of it, which is exactly the
backbone's resize + centre-crop preprocessing; training takes random resized crops and flips of it.
The array is memory-mapped, keyed by the data fingerprint, size and interpolation, and written
atomically, so a killed build leaves no half-written cache. Batches are made from it in
``transforms``.

A second kind of cache, built only when training crops come from the whole image
(``--crop-from whole``), holds each whole image squeezed into the ``S x S`` square, and beside it each
image's aspect ratio (width / height), from which ``transforms.crop_params`` places crops that are
random resized crops of the original picture.
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

from ..core.io import allocate, atomic_path, ensure_free_space, folder_lock, remove_stale_temporaries
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
    """The centre square of the image (its short side), resized to ``side x side``: the same as
    resizing the short side to ``side`` and cutting the centre square, but only the square is
    ever resampled, so a 1 x 100000 strip costs one small square rather than a huge enlargement."""
    w, h = img.size
    s = min(w, h)
    return _resample(img, side, interpolation, ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2))


def _resample(img: Image.Image, side: int, interpolation: str,
              box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """``box`` of the image (all of it when None) resampled to ``side x side``, as uint8 HWC."""
    # reducing_gap makes downscaling huge images fast at no visible cost.
    img = img.resize((side, side), _PIL_INTERPOLATION.get(interpolation, Image.Resampling.BICUBIC), box=box,
                     reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def resize_whole(img: Image.Image, side: int, interpolation: str = "bicubic") -> np.ndarray:
    """The whole image resized to ``side x side`` (squeezed along its long side); its aspect ratio is
    kept apart, so crops can be placed in the original picture's proportions."""
    return _resample(img, side, interpolation)


def cache_path(ds: ImageDataset, side: int, interpolation: str, whole: bool = False) -> Path:
    """Where the cache of ``ds`` at ``side`` px lives (``whole``: of the whole images, squeezed)."""
    # v2: the centre square is resampled directly (resize_center), not cut from a resized image.
    kind = "whole" if whole else "v2"
    key = hashlib.sha256(f"{ds.fingerprint}|{side}|{interpolation}|{kind}".encode()).hexdigest()[:24]
    return cache_home() / "images" / f"{key}.npy"


def aspects_path(path: Path) -> Path:
    """The aspect ratios beside the whole-image cache at ``path``."""
    return path.with_name(path.stem + ".aspects.npy")


def build_image_cache(ds: ImageDataset, side: int, interpolation: str = "bicubic",
                      workers: int | None = None, quiet: bool = False) -> np.ndarray:
    """The (N, side, side, 3) uint8 array of the centre squares of ``ds``, read from disk or built once
    and stored."""
    return _cached(ds, side, interpolation, False, workers, quiet)[0]


def build_whole_cache(ds: ImageDataset, side: int, interpolation: str = "bicubic",
                      workers: int | None = None, quiet: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The (N, side, side, 3) uint8 array of the whole images of ``ds`` squeezed into squares, and their
    (N,) aspect ratios (width / height, float32); read from disk or built once and stored."""
    return _cached(ds, side, interpolation, True, workers, quiet)


def _cached(ds: ImageDataset, side: int, interpolation: str, whole: bool, workers: int | None,
            quiet: bool) -> tuple[np.ndarray, np.ndarray]:
    """The images and their aspect ratios (all 1 for centre squares, which are not stored)."""
    path = cache_path(ds, side, interpolation, whole)
    # One builder per cache folder at a time: a second process waits, then finds the finished file.
    with folder_lock(path.parent, wait=True):
        remove_stale_temporaries(path.parent, recursive=False)
        if path.is_file() and (not whole or aspects_path(path).is_file()):
            try:
                arr = np.load(path, mmap_mode="r")
                aspects = np.load(aspects_path(path)) if whole else np.ones(len(ds), np.float32)
                if arr.shape == (len(ds), side, side, 3) and aspects.shape == (len(ds),):
                    return arr, aspects
            except (ValueError, OSError):  # damaged (say, copied in part): built again below
                pass
        return _build(ds, path, side, interpolation, whole, workers, quiet)


def _build(ds: ImageDataset, path: Path, side: int, interpolation: str, whole: bool, workers: int | None,
           quiet: bool) -> tuple[np.ndarray, np.ndarray]:
    shape = (len(ds), side, side, 3)
    ensure_free_space(path.parent, int(np.prod(shape)), "the image cache",
                      "set TRANSFERLAB_HOME to a folder on a disk with room")
    aspects = np.ones(len(ds), np.float32)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        allocate(tmp)

        def work(i: int) -> None:
            img = ds.image(i, draft_size=side)
            if whole:  # a centre square's aspect is 1, as when the cache is read back
                aspects[i] = img.size[0] / img.size[1]
            out[i] = (resize_whole if whole else resize_center)(img, side, interpolation)

        # Pillow releases the GIL while decoding and resizing, so threads use every core.
        what = "whole images" if whole else "images"
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool, \
                progress_bar(f"caching {len(ds)} {what} at {side}px", len(ds), quiet) as bar:
            for _ in pool.map(work, range(len(ds))):
                bar.advance()
        out.flush()
        if whole:  # written before the images land, so a cache that exists has its aspects
            with atomic_path(aspects_path(path)) as atmp, open(atmp, "wb") as f:
                np.save(f, aspects)
    return np.load(path, mmap_mode="r"), aspects
