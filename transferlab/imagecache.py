"""Decode and resize every image once into a uint8 array on disk; augmentation runs on that.

The cache holds, for each image, the short side resized to ``S`` and the centre ``S x S`` square,
where ``S = input / crop_pct`` is what the backbone's evaluation crop needs (256 for 224 at
0.875). Evaluation takes the centre ``input x input`` crop of it, which is exactly the
backbone's resize + centre-crop preprocessing; training takes random resized crops and flips of it.
The array is memory-mapped, keyed by the data fingerprint, size and interpolation, and written to a
temporary file that is renamed into place, so a killed build leaves no half-written cache.
"""

from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data import ImageDataset, cache_home
from .progress import progress_bar

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
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(ds), side, side, 3))

    def work(i: int) -> None:
        out[i] = resize_center(ds.image(i, draft_size=side), side, interpolation)

    # Pillow releases the GIL while decoding and resizing, so threads use every core.
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool, \
            progress_bar(f"caching {len(ds)} images at {side}px", len(ds), quiet) as bar:
        for _ in pool.map(work, range(len(ds))):
            bar.advance()
    out.flush()
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


# ---------------------------------------------------------------------------------------------
# Batches: uint8 NHWC from the cache -> normalised float NCHW tensors.


def _normalise(x: torch.Tensor, data_config: dict[str, Any]) -> torch.Tensor:
    mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(data_config["std"], dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return (x.float() - mean) / std


def eval_batch(images: np.ndarray, data_config: dict[str, Any]) -> torch.Tensor:
    """Centre crop of ``input_size`` from cached squares, normalised (the eval preprocessing)."""
    size = data_config["input_size"][-1]
    side = images.shape[1]
    top = (side - size) // 2
    x = torch.from_numpy(np.array(images[:, top:top + size, top:top + size])).permute(0, 3, 1, 2)
    return _normalise(x, data_config).contiguous()


def train_batch(images: np.ndarray, data_config: dict[str, Any], generator: torch.Generator,
                scale: tuple[float, float] = (0.25, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                flip: bool = True) -> torch.Tensor:
    """Random resized crop (area ``scale``, aspect ``ratio``) + horizontal flip, normalised.

    The crop parameters come from ``generator`` only, so a seed fixes the augmentation.
    """
    size = data_config["input_size"][-1]
    side = images.shape[1]
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()
    out = torch.empty(len(images), 3, size, size)
    u = torch.rand(len(images), 5, generator=generator)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for i in range(len(images)):
        area = side * side * (scale[0] + (scale[1] - scale[0]) * u[i, 0].item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[i, 1].item())
        w = min(side, max(1, round(math.sqrt(area * aspect))))
        h = min(side, max(1, round(math.sqrt(area / aspect))))
        top = int(u[i, 2].item() * (side - h + 1))
        left = int(u[i, 3].item() * (side - w + 1))
        crop = x[i:i + 1, :, top:top + h, left:left + w]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=h > size or w > size)
        if flip and u[i, 4].item() < 0.5:
            crop = crop.flip(-1)
        out[i] = crop[0]
    return _normalise(out.clamp_(0, 255), data_config)


def view_batch(images: np.ndarray, indices: np.ndarray, view: int, data_config: dict[str, Any],
               seed: int = 0) -> torch.Tensor:
    """View ``view`` of each image: 0 is the evaluation centre crop, ``v > 0`` a random crop + flip
    that depends only on (seed, image index, v), so cached views are the same in any batch or split."""
    if view == 0:
        return eval_batch(images, data_config)
    return torch.cat([
        train_batch(images[k:k + 1], data_config, torch.Generator().manual_seed(hash((seed, int(i), view)) % 2**62))
        for k, i in enumerate(indices)
    ])
