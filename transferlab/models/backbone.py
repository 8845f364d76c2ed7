"""The Backbone: a network with everything needed to transfer from it, and the registry of builders.

Every backbone exposes ``forward_features`` / ``forward_head(x, pre_logits=...)`` as in timm, and
an ordered list of layer groups (input to output) that freezing, chain-thaw and gradual unfreezing
work on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..core.errors import BackboneError
from ..core.registry import Registry
from .layouts import LayerGroup

DEFAULT_BACKBONE = "efficientnet_lite0"


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


# Builders take ``pretrained`` and return a Backbone. Register with ``pretrained=False`` when a
# backbone has no pretrained weights at all (it is then listed as such, never as a download).
BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone", BackboneError)
