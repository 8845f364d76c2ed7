"""Training: configuration, strategies (lists of phases), phase runners, the engine loop, feature and
prefix caches, checkpoints, and one run from first phase to saved weights."""

from .config import (
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
)
from .run import Prepared, RunResult, prepare, train_one
from .strategies import Gradient, Phase, Probe, Strategy, build_strategy, list_strategies

__all__ = ["AugmentConfig", "BatchNormPolicy", "BodyConfig", "BudgetConfig", "DataConfig", "Gradient", "HeadConfig",
           "ImbalanceConfig", "ModelConfig", "Phase", "Prepared", "Probe", "RunResult", "RuntimeConfig",
           "ScratchConfig", "SemiConfig", "Strategy", "TrainConfig", "build_strategy", "list_strategies", "prepare",
           "train_one"]
