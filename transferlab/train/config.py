"""The settings of a run, as frozen dataclasses: the data, the model, the schedule, the runtime.

config.yaml is written from these and read back into them, and the command line options are
generated from their fields (``core.config.option``), so a setting has one name everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import option
from ..models.backbone import DEFAULT_BACKBONE
from .strategies import StrategyOptions


@dataclass(frozen=True)
class DataConfig:
    """Which images, and how they are split."""

    source: str = option("", "digits, digits:N, flowers17[:k], or a folder", flag="--data", required=True)
    split_seed: int = option(0, "seed of the train/val/test split", minimum=0)
    strict: bool = option(False, "unreadable images are an error instead of being skipped")


@dataclass(frozen=True)
class ModelConfig:
    """The network: which backbone, at what input size, and the new head."""

    backbone: str = option(DEFAULT_BACKBONE, "backbone name (see transferlab backbones)")
    image_size: int | None = option(None, "input size in px instead of the backbone's own", minimum=8)
    head_hidden: tuple[int, ...] = option((256, 256), "widths of the head's dense layers, comma-separated",
                                        minimum=1)
    dropout: float = option(0.3, "dropout between the head's dense layers", minimum=0, maximum=0.99)


@dataclass(frozen=True)
class ScheduleConfig:
    """How long and on what each phase trains."""

    batch_size: int = option(32, "images per batch", minimum=1)
    max_epochs: int | None = option(None, "cap on the epochs of every phase", minimum=1)
    patience: int | None = option(None, "cap on the early-stopping patience of every phase", minimum=1)
    augment: bool = option(True, "random crops and flips while training")
    views: int = option(3, "cached augmented views per image for phases with a frozen prefix", minimum=1)
    augment_policy: str = option("none", "more augmentation for phases that train on whole images (finetune's "
                                         "whole-model phase, scratch): none, or trivial (TrivialAugmentWide: one "
                                         "random operation of random strength per image, after the crop and flip)",
                                 choices=("none", "trivial"))
    crop_from: str = option("centre", "where the random crops of phases that train on whole images come from: "
                                      "centre (the square of the short side that evaluation crops too) or whole "
                                      "(the whole picture, as torchvision's RandomResizedCrop; a second image "
                                      "cache)", choices=("centre", "whole"))
    probe_model: str = option("logreg", "the probe's linear model", choices=("logreg", "svm"))
    discriminative: bool = option(False, "gradual: lower learning rates for lower groups (2.6x per group, "
                                         "ULMFiT's; --layer-decay sets another factor)")
    layer_decay: float = option(1.0, "layer-wise learning-rate decay of phases that train the body: each group "
                                     "below the last learns at this times the rate of the group above it (1: "
                                     "one rate for all; e.g. 0.8)", minimum=0.01, maximum=1)
    head_epochs: int | None = option(None, "epochs of the head warm-up before a body thaws (finetune, "
                                           "chain-thaw, gradual; default: 1 for finetune, whose body learns little "
                                           "under an over-trained head; chain-thaw and gradual train it to the "
                                           "end, 60 epochs early-stopped)", minimum=1)
    body_epochs: int | None = option(None, "epochs of finetune's whole-model phase (default 30)", minimum=1)
    body_patience: int | None = option(None, "early-stopping patience of finetune's whole-model phase "
                                             "(default 5)", minimum=1)
    class_weights: str = option("none", "auto: weight each class's loss by n / (k * n_c) of the training split "
                                        "(imbalanced data; the probe uses class_weight='balanced')",
                                choices=("none", "auto"))
    balanced_sampler: bool = option(False, "draw each epoch's training examples with replacement, every class "
                                           "equally likely (imbalanced data)")
    time_budget: float | None = option(None, "seconds of training per run after which no new epoch starts "
                                             "(default: none)", minimum=1)
    equal_compute: bool = option(True, "in a compare, scratch trains for at most the time of the slowest "
                                       "pretrained strategy of the same seed")
    body_bn: str = option("auto", "BatchNorm of a thawed pretrained body: frozen statistics, train (batch "
                                  "statistics, updated), or auto (finetune: train, and frozen again if its "
                                  "whole-model phase never beats the warm-up; chain-thaw and gradual: frozen)",
                          choices=("auto", "frozen", "train"))
    body_schedule: str = option("constant", "learning rates of phases that train the body: constant, or cosine "
                                            "(decayed to 1/100 over the phase's epoch cap)",
                                choices=("constant", "cosine"))
    label_smoothing: float = option(0.0, "label smoothing of the training loss in phases that train the body",
                                    minimum=0, maximum=0.99)
    mixup: float = option(0.0, "MixUp in phases that train the body: alpha of the Beta distribution of the "
                               "blend (0: off; e.g. 0.2)", minimum=0)
    cutmix: float = option(0.0, "CutMix in phases that train the body: alpha of the Beta distribution of the "
                                "pasted box's area (0: off; e.g. 1.0; with --mixup, one of the two per batch)",
                           minimum=0)
    ema: float = option(0.0, "a moving average of the weights in phases that train the body, decay per step "
                             "(0: off; e.g. 0.99), scored on validation beside the raw weights every epoch; "
                             "the better is kept", minimum=0, maximum=0.9999)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how fast it runs; none of it should change what is learnt beyond float rounding."""

    device: str = option("auto", "auto, cpu, cuda, cuda:1 ...")
    fp32: bool = option(False, "no bf16 autocast")
    fold_bn: bool = option(True, "fold eval-mode BatchNorm into the convolutions before it")
    prefix_cache: bool = option(True, "cache the input of the first trainable group instead of rerunning "
                                      "the frozen ones")
    compile: str = option("none", "torch.compile the training step: none, default, or reduce-overhead "
                                  "(CUDA graphs)", choices=("none", "default", "reduce-overhead"))
    checkpoint_seconds: float = option(30.0, "training time between checkpoints within a phase (0: every epoch; "
                                             "the end of every phase is always saved)", minimum=0)
    parallel: str = option("auto", "under torchrun: runs (each run trained by one process), data (every run "
                                   "by all processes, DistributedDataParallel, the batch split between "
                                   "them), auto (runs when there are at least as many runs as processes)",
                           choices=("auto", "runs", "data"))
    deterministic: bool = option(False, "deterministic algorithms (on CUDA: fixed cuBLAS workspace, no cuDNN "
                                        "autotuning), so a resumed run matches an uninterrupted one exactly")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's result besides the data."""

    model: ModelConfig = ModelConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    def strategy_options(self) -> StrategyOptions:
        """The strategy builders' knobs, with the schedule's caps applied."""
        s = self.schedule
        given = {k: getattr(s, k) for k in ("body_epochs", "body_patience") if getattr(s, k)}
        return StrategyOptions(probe_model=s.probe_model, discriminative=s.discriminative,
                               body_bn=s.body_bn, warmup_epochs=s.head_epochs,
                               balanced=s.class_weights == "auto", body_schedule=s.body_schedule,
                               label_smoothing=s.label_smoothing, layer_decay=s.layer_decay,
                               mixup=s.mixup, cutmix=s.cutmix, ema=s.ema, **given).scaled(s.max_epochs, s.patience)
