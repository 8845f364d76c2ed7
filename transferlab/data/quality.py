"""Low-quality images: tiny, nearly uniform, very dark or very bright, or heavily blurred.

Measured on the image cache's squares (every image at the same side, so the blur measure, the
variance of the Laplacian of the grey image, compares across images of any size) and on the
original pixel size. The thresholds are absolute (benchmarks/audit.py shows where the photos of
flower_photos fall; README).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .datasets import ImageDataset
from .duplicates import grey_batches

TINY_SIDE = 64  # short side in px below which an image is upscaled more than 3x for a 224 px input
UNIFORM_STD = 6.0  # grey standard deviation (0..255) below which an image is nearly one colour
DARK_MEAN, BRIGHT_MEAN = 20.0, 235.0  # grey means beyond which an image is nearly black or white
BLUR_VARIANCE = 15.0  # Laplacian variance (on the cache square) below which an image is heavily blurred


@dataclass(frozen=True)
class QualityIssue:
    """Image ``index`` is ``kind`` (tiny, uniform, dark, bright, blurred); ``value`` the measure."""

    index: int
    kind: str
    value: float
    detail: str


def short_sides(ds: ImageDataset, indices: np.ndarray) -> np.ndarray:
    """The original short side in px of each image ``indices`` (only a file's header is read)."""
    if ds.paths is None:
        return np.full(len(indices), min(ds.arrays.shape[1:3]), np.int64)
    sides = []
    for i in indices:
        with Image.open(ds.paths[int(i)]) as img:
            sides.append(min(img.size))
    return np.array(sides, np.int64)


def grey_measures(squares: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per square ``indices``: the grey mean, standard deviation and Laplacian variance."""
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    means, stds, blurs = [], [], []
    for grey in grey_batches(squares, indices):  # (B, S, S)
        means.append(grey.mean((1, 2)))
        stds.append(grey.std((1, 2)))
        blurs.append(F.conv2d(grey[:, None], lap).var((1, 2, 3)))
    if not means:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return tuple(torch.cat(v).numpy() for v in (means, stds, blurs))  # type: ignore[return-value]


def quality_issues(squares: np.ndarray, indices: np.ndarray, short_sides: np.ndarray) -> list[QualityIssue]:
    """The low-quality images among ``indices`` (their squares in ``squares``, their original short
    sides in ``short_sides``, one per index)."""
    mean, std, blur = grey_measures(squares, indices)
    found = []
    for k, i in enumerate(indices):
        i = int(i)
        if short_sides[k] < TINY_SIDE:
            found.append(QualityIssue(i, "tiny", float(short_sides[k]), f"short side {int(short_sides[k])} px"))
        if std[k] < UNIFORM_STD:
            found.append(QualityIssue(i, "uniform", float(std[k]), f"grey spread {std[k]:.1f} of 255"))
        elif blur[k] < BLUR_VARIANCE:  # a uniform image has no edges either: said once
            found.append(QualityIssue(i, "blurred", float(blur[k]), f"edge energy {blur[k]:.1f}"))
        if mean[k] < DARK_MEAN:
            found.append(QualityIssue(i, "dark", float(mean[k]), f"mean brightness {mean[k]:.0f} of 255"))
        elif mean[k] > BRIGHT_MEAN:
            found.append(QualityIssue(i, "bright", float(mean[k]), f"mean brightness {mean[k]:.0f} of 255"))
    return found
