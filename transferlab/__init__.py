"""transferlab: transfer learning for image classification, every classic strategy side by side.

Importing it changes nothing in the caller's process (no allocator, Pillow or matplotlib settings);
the command line makes those choices in its ``main``.
"""

from .core.errors import BackboneError, DataError, TransferlabError
from .data import ImageDataset, allow_large_images, load_dataset, make_splits, per_class_subset
from .experiments.compare import CompareConfig, compare
from .inference.classifier import TransferClassifier
from .models import Backbone, BackboneSpec, LayerGroup, backbone_spec, create_backbone, list_backbones
from .runtime.allocator import tune_allocator
from .train import (
    AugmentConfig,
    BatchNormPolicy,
    BodyConfig,
    BudgetConfig,
    DataConfig,
    HeadConfig,
    ImbalanceConfig,
    ModelConfig,
    RuntimeConfig,
    ScratchConfig,
    SemiConfig,
    TrainConfig,
    list_strategies,
    train_one,
)
from .train.features import FeatureExtractor

__all__ = [
    "Backbone", "BackboneError", "BackboneSpec", "CompareConfig", "DataConfig", "DataError", "FeatureExtractor",
    "ImageDataset", "LayerGroup", "ModelConfig", "RuntimeConfig", "BudgetConfig", "TrainConfig", "AugmentConfig",
    "BatchNormPolicy", "BodyConfig", "HeadConfig", "ImbalanceConfig", "ScratchConfig", "SemiConfig",
    "TransferClassifier", "TransferlabError", "allow_large_images", "backbone_spec", "compare", "create_backbone",
    "list_backbones", "list_strategies", "load_dataset", "make_splits", "per_class_subset", "train_one",
    "tune_allocator",
]
__version__ = "0.1.0"
