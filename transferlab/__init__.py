"""transferlab: transfer learning for image classification, every classic strategy side by side."""

from .backbones import Backbone, LayerGroup, create_backbone, list_backbones
from .data import ImageDataset, load_dataset, make_splits, per_class_subset
from .errors import BackboneError, DataError, TransferlabError

__all__ = [
    "Backbone", "LayerGroup", "create_backbone", "list_backbones",
    "ImageDataset", "load_dataset", "make_splits", "per_class_subset",
    "BackboneError", "DataError", "TransferlabError",
]
__version__ = "0.1.0"
