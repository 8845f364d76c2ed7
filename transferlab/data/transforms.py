"""Batches from the image cache: uint8 NHWC squares -> normalised float NCHW tensors.

Evaluation takes the centre crop (the backbone's own resize + centre-crop preprocessing); training
takes random resized crops and flips, drawn from a generator so that a seed fixes them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


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
