"""Batches from the image cache: uint8 NHWC squares -> normalised float NCHW tensors, as batched tensor
ops on whatever device the images are on (the same code serves the CPU and a GPU).

Evaluation takes the centre crop (the backbone's own resize + centre-crop preprocessing); training
takes random resized crops and flips. The crop parameters are drawn on the CPU from a generator, so
a seed fixes them on any device; the crops themselves are one ``roi_align`` over the batch, which
averages over each output pixel's footprint when a crop is shrunk (an antialiased resize) and
interpolates bilinearly when it is enlarged.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torchvision.ops import roi_align

from ..runtime.device import to_device

ImageBatch = np.ndarray | torch.Tensor  # (N, S, S, 3) uint8


def as_tensor(images: ImageBatch) -> torch.Tensor:
    """A uint8 (N, S, S, 3) tensor; numpy arrays (the memory-mapped cache) are copied once."""
    return images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))


@functools.lru_cache(maxsize=32)
def _statistics(mean: tuple[float, ...], std: tuple[float, ...], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std scaled to 0..255, shaped for NCHW, made once per device (no copy per batch)."""
    def make(v: tuple[float, ...]) -> torch.Tensor:
        return to_device(torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) * 255.0, device)
    return make(mean), make(std)


def normalise(x: torch.Tensor, data_config: dict[str, Any]) -> torch.Tensor:
    """(x - mean) / std with the backbone's statistics, for x in 0..255 (NCHW)."""
    mean, std = _statistics(tuple(data_config["mean"]), tuple(data_config["std"]), str(x.device))
    return (x.float() - mean) / std


def eval_batch(images: ImageBatch, data_config: dict[str, Any]) -> torch.Tensor:
    """Centre crop of ``input_size`` from cached squares, normalised (the eval preprocessing)."""
    size = data_config["input_size"][-1]
    side = images.shape[1]
    top = (side - size) // 2
    x = as_tensor(images[:, top:top + size, top:top + size]).permute(0, 3, 1, 2)
    return normalise(x, data_config).contiguous()


def crop_params(u: torch.Tensor, side: int, scale: tuple[float, float] = (0.25, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3),
                aspects: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (N, 4: left, top, right, bottom in pixels) and flips (N,) from uniform numbers ``u`` (N, 5):
    area ``scale`` of the picture, aspect ``ratio`` (log-uniform), position, and flip when u < 0.5.

    The picture is the ``side x side`` square; with ``aspects`` (N,) it is each original image of that
    width / height ratio squeezed into the square (``imagecache.build_whole_cache``), and area and
    aspect are those of the crop in the original image: a box of w x h square pixels covers
    (w * a) x h pixels of the original at the square's height."""
    u = u.double()
    area = side * side * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * u[:, 1])
    if aspects is not None:  # in the square, the crop is squeezed by the image's aspect along x
        a = aspects.double().to(u.device)
        w, h = torch.sqrt(area * aspect / a), torch.sqrt(area * a / aspect)
    else:
        w, h = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    w, h = w.round().clamp(1, side), h.round().clamp(1, side)
    top = torch.floor(u[:, 2] * (side - h + 1))
    left = torch.floor(u[:, 3] * (side - w + 1))
    return torch.stack([left, top, left + w, top + h], 1).float(), u[:, 4] < 0.5


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Each image's box resized to ``size`` x ``size`` (float NCHW, 0..255), flipped where asked."""
    x = images.permute(0, 3, 1, 2).float()
    rois = to_device(torch.cat([torch.arange(len(x), dtype=torch.float32).unsqueeze(1), boxes], 1), x.device)
    # aligned=True: pixel k covers [k, k + 1), so a box [left, left + w) holds exactly w pixels;
    # sampling_ratio=0 averages ceil(box / size) points per output pixel and axis.
    out = roi_align(x, rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return torch.where(to_device(flips, x.device).view(-1, 1, 1, 1), out.flip(-1), out)


def trivial_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """torchvision's TrivialAugmentWide (Mueller and Hutter, 2021) on each image of a float NCHW batch in
    0..255: one operation of random strength per image. Its random draws use torch's global generator,
    so they run under a seed drawn from ``generator`` with that generator's state set aside."""
    from torchvision.transforms import v2

    policy = v2.TrivialAugmentWide()
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([policy(img) for img in x.round().to(torch.uint8)]).float()


def train_batch(images: ImageBatch, data_config: dict[str, Any], generator: torch.Generator,
                scale: tuple[float, float] = (0.25, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                flip: bool = True, policy: str = "none", aspects: torch.Tensor | None = None) -> torch.Tensor:
    """Random resized crop (area ``scale``, aspect ``ratio``) + horizontal flip, then ``policy`` ("none" or
    "trivial": ``trivial_augment``), normalised. ``aspects``: the images are whole pictures of these
    width / height ratios squeezed into squares (``crop_params``).

    Every random choice comes from ``generator``, so a seed fixes the augmentation.
    """
    x = as_tensor(images)
    u = torch.rand(len(x), 5, generator=generator)
    boxes, flips = crop_params(u, x.shape[1], scale, ratio, aspects)
    out = resized_crops(x, boxes, flips & flip, data_config["input_size"][-1]).clamp_(0, 255)
    if policy == "trivial":
        out = trivial_augment(out, generator)
    return normalise(out, data_config)


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator,
              mixup: float = 0.0, cutmix: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's MixUp (Zhang et al. 2018) or CutMix (Yun et al. 2019) over a batch: each image
    blended with (or a box pasted from) the next one, with soft targets (N, num_classes) in
    proportion. ``mixup`` and ``cutmix`` are the alphas of their Beta distributions (0: not used; both
    given: one of the two per batch). As in ``trivial_augment``, the draws run under a seed from
    ``generator``."""
    from torchvision.transforms import v2

    mixers = [make(alpha=a, num_classes=num_classes) for make, a in ((v2.MixUp, mixup), (v2.CutMix, cutmix)) if a > 0]
    if not mixers:
        return x, y
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return v2.RandomChoice(mixers)(x, y) if len(mixers) > 1 else mixers[0](x, y)


def view_batch(images: ImageBatch, indices: np.ndarray, view: int, data_config: dict[str, Any],
               seed: int = 0) -> torch.Tensor:
    """View ``view`` of each image: 0 is the evaluation centre crop, ``v > 0`` a random crop + flip
    that depends only on (seed, image index, v), so cached views are the same in any batch or split."""
    if view == 0:
        return eval_batch(images, data_config)
    x = as_tensor(images)
    u = torch.cat([torch.rand(1, 5, generator=torch.Generator().manual_seed(hash((seed, int(i), view)) % 2**62))
                   for i in indices])
    boxes, flips = crop_params(u, x.shape[1])
    return normalise(resized_crops(x, boxes, flips, data_config["input_size"][-1]).clamp_(0, 255), data_config)
