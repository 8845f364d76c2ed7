"""Grad-CAM heat maps (Selvaraju et al. 2017) of a trained model over test images, with captum's
``LayerGradCam`` on the output of the backbone's last layer group.

Each map shows where the evidence for the predicted class lies; on a misclassified image that is
often the tell (a background, a second object, a watermark).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..data.transforms import eval_batch
from ..models.heads import TransferModel
from .plots import save_figure


def last_group_module(model: TransferModel) -> torch.nn.Module | None:
    """The module whose output is the last group's feature map (None when the backbone's groups do
    not run one by one, e.g. some timm/torchvision layouts)."""
    stages = getattr(model.body, "stages", None)
    return stages[-1] if model.sequential and stages is not None and len(stages) else None


def gradcam(model: TransferModel, images: np.ndarray, data_config: dict, targets: np.ndarray) -> np.ndarray | None:
    """Heat maps (N, H, W) in 0..1 for the classes ``targets`` of the uint8 images (N, S, S, 3) at
    the evaluation crop; None when the model has no usable last layer."""
    from captum.attr import LayerAttribution, LayerGradCam

    layer = last_group_module(model)
    if layer is None or not len(images):
        return None
    model = model.float().eval()
    x = eval_batch(images, data_config).float()
    attributions = LayerGradCam(model, layer).attribute(x, target=torch.as_tensor(targets).long(),
                                                        relu_attributions=True)
    maps = LayerAttribution.interpolate(attributions, tuple(x.shape[-2:]), "bilinear")[:, 0].detach()
    top = maps.flatten(1).max(1).values.clamp_min(1e-12)
    return (maps / top[:, None, None]).numpy()


def plot_gradcam(images: np.ndarray, maps: np.ndarray, captions: list[str], size: int, path: Path) -> Path:
    """Each image's centre crop with its heat map over it, captioned, in a grid."""
    n = len(images)
    cols = min(6, n)
    rows = -(-n // cols)
    fig = Figure(figsize=(2.1 * cols, 2.3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    top = (images.shape[1] - size) // 2
    for ax, img, heat, cap in zip(axes, images, maps, captions):
        ax.imshow(img[top:top + size, top:top + size])
        ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(cap, fontsize=9)
    for ax in axes:
        ax.axis("off")
    return save_figure(fig, path)


def overlay(images: np.ndarray, maps: np.ndarray, size: int, alpha: float = 0.45) -> np.ndarray:
    """Each image's centre crop (uint8 squares N, S, S, 3) with its heat map (N, size, size) blended over
    it in the jet colours of ``plot_gradcam``: uint8 (N, size, size, 3)."""
    from matplotlib import colormaps

    top = (images.shape[1] - size) // 2
    crops = images[:, top:top + size, top:top + size].astype(np.float32)
    heat = colormaps["jet"](np.clip(maps, 0, 1))[..., :3] * 255.0
    return np.clip((1 - alpha) * crops + alpha * heat, 0, 255).astype(np.uint8)
