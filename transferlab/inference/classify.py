"""ImageNet top-k with a backbone's own pretrained classifier (a sanity check of the weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.errors import DataError
from ..data.imagecache import cache_side, resize_center
from ..data.images import open_rgb, to_rgb
from ..data.transforms import eval_batch
from ..models.backbone import DEFAULT_BACKBONE
from ..models.catalog import create_backbone


def preprocess(images: list, data_config: dict) -> torch.Tensor:
    """Decode, resize and centre-crop images exactly as the training pipeline evaluates them: files,
    or PIL images and uint8 (H, W, 3) arrays already in memory."""
    side = cache_side(data_config)
    arrays = []
    for path in images:
        if isinstance(path, Image.Image | np.ndarray):
            img = to_rgb(path if isinstance(path, Image.Image) else Image.fromarray(np.asarray(path, dtype=np.uint8)))
            arrays.append(resize_center(img, side, data_config["interpolation"]))
            continue
        try:
            arrays.append(resize_center(open_rgb(path, draft_size=side), side, data_config["interpolation"]))
        except FileNotFoundError:
            raise DataError(f"{path} does not exist") from None
        except PermissionError:
            raise DataError(f"{path} cannot be read: permission denied") from None
        except Image.DecompressionBombError as exc:
            raise DataError(f"{path} is too large to decode safely ({exc})") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path} is not a readable image ({exc})") from None
    return eval_batch(np.stack(arrays), data_config)


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
