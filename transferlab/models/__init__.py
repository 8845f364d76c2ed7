"""Models: backbones (registry, builders, layer groups, metadata without weights), heads, the transfer model."""

from .backbone import BACKBONES, DEFAULT_BACKBONE, Backbone
from .catalog import (
    BackboneSpec,
    backbone_info,
    backbone_spec,
    create_backbone,
    list_backbones,
    weights_offline,
    weights_status,
)
from .heads import LINEAR_HEAD, HeadSpec, TransferModel
from .layouts import GroupedNet, LayerGroup, stage_groups

__all__ = ["BACKBONES", "DEFAULT_BACKBONE", "Backbone", "BackboneSpec", "GroupedNet", "HeadSpec", "LINEAR_HEAD",
           "LayerGroup", "TransferModel", "backbone_info", "backbone_spec", "create_backbone", "list_backbones",
           "stage_groups", "weights_offline", "weights_status"]
