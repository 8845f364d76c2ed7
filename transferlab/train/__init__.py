"""Training: configuration, strategies (lists of phases), phase runners, the engine loop, feature and
prefix caches, checkpoints, and one run from first phase to saved weights."""

from .config import DataConfig, ModelConfig, RuntimeConfig, ScheduleConfig, TrainConfig
from .run import Prepared, RunResult, prepare, train_one
from .strategies import Gradient, Phase, Probe, Strategy, StrategyOptions, build_strategy, list_strategies

__all__ = ["DataConfig", "Gradient", "ModelConfig", "Phase", "Prepared", "Probe", "RunResult", "RuntimeConfig",
           "ScheduleConfig", "Strategy", "StrategyOptions", "TrainConfig", "build_strategy", "list_strategies",
           "prepare", "train_one"]
