"""What people pass as images, made into one form: a list of files or RGB Pillow images.

Accepted: a path (``str`` or ``Path``), a Pillow image, a numpy array or a torch tensor, or a list,
tuple or batch (a 4-d array or tensor) of them. Arrays and tensors may be HWC or CHW, grayscale (2-d
or one channel), RGB or RGBA, uint8 in 0..255 or float in 0..1 (what ``torchvision``'s ``ToTensor``
gives); anything else is refused with a sentence that says what was passed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import DataError
from ..data.images import to_rgb

CHANNELS = (1, 3, 4)


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def image_list(images: Any) -> list[Path | Image.Image | np.ndarray]:
    """``images`` as a list of single images: one image becomes a list of one, a batch is split."""
    if isinstance(images, str | Path | Image.Image):
        return [images]
    if _is_tensor(images):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim in (2, 3):
            return [images]
        if images.ndim == 4:
            return list(images)
        raise DataError(f"an array of shape {images.shape} is not an image (H, W[, C]) or a batch (N, H, W, C)")
    if isinstance(images, list | tuple):
        return [i.detach().cpu().numpy() if _is_tensor(i) else i for i in images]
    try:
        return list(images)
    except TypeError:
        raise DataError(f"cannot read images from a {type(images).__name__}: pass a path, a PIL image, an array "
                        "or tensor, or a list of them") from None


def _hwc(a: np.ndarray) -> np.ndarray:
    """(H, W, C) from (H, W), (H, W, C) or (C, H, W)."""
    if a.ndim == 2:
        return a[:, :, None]
    if a.ndim != 3:
        raise DataError(f"an array of shape {a.shape} is not one image (H, W[, C])")
    if a.shape[-1] in CHANNELS:
        return a
    if a.shape[0] in CHANNELS:  # channels first (a torch tensor's layout)
        return a.transpose(1, 2, 0)
    raise DataError(f"an image array of shape {a.shape} has no channel axis of 1, 3 or 4")


def _as_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise DataError(f"integer image values span {a.min()}..{a.max()}; pass uint8 pixels in 0..255")
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"an image array of dtype {a.dtype} cannot be read; pass uint8, or float in 0..1")
    if not np.isfinite(a).all():
        raise DataError("the image array holds NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 1:
        raise DataError(f"float image values span {lo:.3g}..{hi:.3g}; pass floats in 0..1 (not normalised) "
                        "or uint8 pixels in 0..255")
    return np.round(a * 255.0).astype(np.uint8)


def array_image(a: np.ndarray) -> Image.Image:
    """An upright RGB Pillow image of an array: HWC or CHW, 1, 3 or 4 channels, uint8 or float in 0..1."""
    a = _as_uint8(_hwc(np.asarray(a)))
    if a.shape[-1] == 1:
        return Image.fromarray(a[:, :, 0], "L").convert("RGB")
    return to_rgb(Image.fromarray(np.ascontiguousarray(a), "RGBA" if a.shape[-1] == 4 else "RGB"))
