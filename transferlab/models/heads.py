"""The new top of a transferred network, and the model that joins it to a backbone.

The head of the reference experiment (Oxford-17) is two dense layers with ReLU and dropout, then the
output layer. The probe strategy uses a single linear layer (a scikit-learn linear model, folded in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..runtime.bnfold import FoldMemo
from .backbone import Backbone
from .layouts import LayerGroup

HEAD = "head"  # the name of the new head among the trainable parts (beside the backbone's groups)


@dataclass(frozen=True)
class HeadSpec:
    """How to build a head: ``hidden`` sizes of the dense layers (empty for a linear head)."""

    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.3

    def build(self, in_features: int, num_classes: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        width = in_features
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True), nn.Dropout(self.dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)

    def to_dict(self) -> dict:
        return {"hidden": list(self.hidden), "dropout": self.dropout}

    @classmethod
    def from_dict(cls, d: dict) -> HeadSpec:
        return cls(tuple(d["hidden"]), float(d["dropout"]))


LINEAR_HEAD = HeadSpec(hidden=(), dropout=0.0)


class TransferModel(nn.Module):
    """Backbone + new head. ``level`` says where the input enters.

    Levels: ``0`` is the image; ``k`` (1..G-1) is the input of backbone group ``k``; ``G`` is the
    final feature map; ``G + 1`` is the pooled feature vector (the head's input). Caching the input
    at the level of the first trainable group is what makes frozen work happen once.
    """

    def __init__(self, backbone: Backbone, num_classes: int, head: HeadSpec = HeadSpec()):
        super().__init__()
        self.body = backbone.model
        self.head = head.build(backbone.num_features, num_classes)
        self.num_classes = num_classes
        self.groups = backbone.groups
        self.num_groups = len(backbone.groups)
        self.sequential = backbone.sequential
        self.fold_memo = FoldMemo()  # BatchNorm folding found for this model (runtime.bnfold)

    @property
    def pooled_level(self) -> int:
        """The level of the pooled feature vector, the head's input."""
        return self.num_groups + 1

    def parts(self) -> dict[str, LayerGroup]:
        """The trainable units by name: every backbone group, plus the head."""
        out = {g.name: g for g in self.groups}
        out[HEAD] = LayerGroup(HEAD, list(self.head.parameters()), [self.head])
        return out

    def group_index(self, name: str) -> int:
        """Position of backbone group ``name`` (0 = the first, nearest the input)."""
        return [g.name for g in self.groups].index(name)

    def features(self, x: torch.Tensor, level: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run from ``level`` to ``stop`` (default: the pooled features)."""
        stop = self.pooled_level if stop is None else stop
        if level == stop:
            return x
        if not self.sequential:
            if (level, stop) != (0, self.pooled_level):
                raise ValueError("this backbone's groups are not runnable one by one")
            return self.body.forward_head(self.body.forward_features(x), pre_logits=True)
        x = self.body.forward_features(x, start=level, stop=min(stop, self.num_groups))
        if stop == self.pooled_level:
            x = self.body.forward_head(x, pre_logits=True)
        return x

    def forward(self, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        if level < self.pooled_level:
            x = self.features(x, level)
        return self.head(x)

    @property
    def output_layer(self) -> nn.Linear:
        """The head's last linear layer (the logits)."""
        return self.head[-1]

    def set_output(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Overwrite the output layer, e.g. with a linear model fitted elsewhere (the probe)."""
        with torch.no_grad():
            self.output_layer.weight.copy_(weight)
            self.output_layer.bias.copy_(bias)


def copy_groups(dst: list[LayerGroup], src: list[LayerGroup], n: int) -> None:
    """Copy the weights (and BatchNorm statistics) of the first ``n`` layer groups of ``src`` into ``dst``."""
    for d, s in zip(dst[:n], src[:n]):
        for dm, sm in zip(d.modules, s.modules):
            dm.load_state_dict(sm.state_dict())


def groups_state(groups: list[LayerGroup], n: int) -> list[dict[str, torch.Tensor]]:
    """Copies of the state of the first ``n`` groups (to check later that frozen groups did not change)."""
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for g in groups[:n] for m in g.modules]


def model_config(backbone: Backbone, num_classes: int, head: HeadSpec, classes: list[str]) -> dict:
    """What is needed to rebuild a saved model (stored beside its weights)."""
    return {"backbone": backbone.name, "data_config": {k: list(v) if isinstance(v, tuple) else v
                                                       for k, v in backbone.data_config.items()},
            "num_classes": num_classes, "head": head.to_dict(), "classes": classes}

