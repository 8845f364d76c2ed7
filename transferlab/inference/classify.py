"""ImageNet top-k with a backbone's own pretrained classifier (a sanity check of the weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.errors import DataError
from ..data.imagecache import cache_side, resize_center
from ..data.images import open_rgb, to_rgb
from ..data.transforms import normalise
from ..models.backbone import DEFAULT_BACKBONE
from ..models.catalog import create_backbone
from .inputs import array_image


def pixels(images: list, data_config: dict) -> np.ndarray:
    """The uint8 (N, S, S, 3) centre crops that the model sees, decoded and resized exactly as the training
    pipeline evaluates images: files, Pillow images, or arrays and tensors (``inference.inputs``)."""
    side, size = cache_side(data_config), data_config["input_size"][-1]
    top = (side - size) // 2
    arrays = []
    for item in images:
        if isinstance(item, np.ndarray) and item.shape == (side, side, 3) and item.dtype == np.uint8:
            square = item  # already the stored square (the server's and the caches' form): nothing to resample
        elif isinstance(item, Image.Image | np.ndarray):
            img = to_rgb(item) if isinstance(item, Image.Image) else array_image(item)
            square = resize_center(img, side, data_config["interpolation"])
        else:
            square = resize_center(read_image(item, side), side, data_config["interpolation"])
        arrays.append(square[top:top + size, top:top + size])
    return np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)


def read_image(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """An image file decoded to RGB; every way it can fail is a ``DataError`` that names the file."""
    try:
        return open_rgb(path, draft_size=draft_size)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except PermissionError:
        raise DataError(f"{path} cannot be read: permission denied") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path} is too large to decode safely ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path} is not a readable image ({exc})") from None


def preprocess(images: list, data_config: dict) -> torch.Tensor:
    """The normalised (N, 3, H, W) batch the model takes, from ``pixels``."""
    return normalise(torch.from_numpy(pixels(images, data_config)).permute(0, 3, 1, 2), data_config).contiguous()


def imagenet_names() -> list[str]:
    """The 1,000 ImageNet class descriptions in index order (from timm's class info)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


@torch.no_grad()
def classify(paths: list[str | Path], backbone: str = DEFAULT_BACKBONE,
             top_k: int = 5) -> list[list[tuple[str, float]]]:
    """ImageNet top-``k`` (label, probability) for each image with a pretrained backbone."""
    bb = create_backbone(backbone, pretrained=True)
    x = preprocess([Path(p) for p in paths], bb.data_config)
    probs = bb.model.eval()(x).softmax(-1)
    names = imagenet_names()
    values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [[(names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]
