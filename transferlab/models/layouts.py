"""How a network splits into layer groups: explicit stages for the families transferlab knows
(EfficientNet, MobileNet, ResNet, VGG), timm's own ``group_matcher`` for any other timm model.

For the known families the groups are also *runnable*: applying them in order is
``forward_features``, which lets the engine cache the input of any group. Dispatch is by model
class, not by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerGroup:
    """A unit of the backbone that is frozen or thawed as a whole."""

    name: str
    params: list[nn.Parameter]
    modules: list[nn.Module]  # whose train/eval mode follows the group (BatchNorm, dropout)


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


def timm_efficientnet(m: nn.Module) -> GroupedNet:
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


def timm_layout(model: nn.Module) -> Callable[[nn.Module], GroupedNet] | None:
    """The stage layout of a timm model's family, or None if transferlab does not know it."""
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet

    layouts = {EfficientNet: timm_efficientnet, MobileNetV3: _timm_mobilenetv3, ResNet: _timm_resnet}
    return layouts.get(type(model))


def tv_layout(model: nn.Module) -> Callable[[nn.Module], GroupedNet] | None:
    """The stage layout of a torchvision model's family, or None if transferlab does not know it."""
    from torchvision import models as tvm

    layouts = {tvm.ResNet: _tv_resnet, tvm.VGG: _tv_vgg, tvm.EfficientNet: _tv_features_net,
               tvm.MobileNetV2: _tv_features_net, tvm.MobileNetV3: _tv_features_net}
    return layouts.get(type(model))


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
