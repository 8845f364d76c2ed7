"""The settings of a run, as frozen dataclasses in small sections: data, model, head, body, scratch,
augmentation, imbalance, budget, runtime.

A setting has one name from its flag (``--head-epochs``) through config.yaml (``head_epochs:``) to the
field the strategy builders read (``config.head.head_epochs``): the options are generated from these
fields (``core.config.option``), config.yaml is written from them and read back into them, and every
section checks its own values when built (``core.config.Settings``), so the command line, a
config.yaml and the Python API refuse the same bad values with the same words.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..core.config import Settings, option
from ..models.backbone import DEFAULT_BACKBONE


class BatchNormPolicy(str, enum.Enum):
    """What the BatchNorm layers of a thawed pretrained body do while it trains.

    FROZEN: normalise with the stored (ImageNet) statistics and leave them untouched. TRAIN:
    normalise with batch statistics and update the stored ones. AUTO: the strategy's own choice;
    for finetune, batch statistics first and frozen ones if its whole-model phase never beats the
    warm-up (``train.runners.run_gradient`` decides, once per run).
    """

    AUTO = "auto"
    FROZEN = "frozen"
    TRAIN = "train"


@dataclass(frozen=True)
class DataConfig(Settings):
    """data: which images, and how they are split"""

    source: str = option("", "digits, digits:N, flowers17[:k], or a folder", flag="--data", required=True)
    split_seed: int = option(0, "seed of the train/val/test split", minimum=0)
    strict: bool = option(False, "unreadable images are an error instead of being skipped")
    unlabelled: str | None = option(None, "a folder of unlabelled images (any nesting), or a CSV whose rows with an "
                                          "empty label are unlabelled: the pool self-train learns from")
    exclude: str | None = option(None, "a CSV with a path column (the audit.csv of transferlab audit, the rows of "
                                       "images to keep deleted): the images it lists are left out")
    dedupe: bool = option(False, "leave out training images that copy another image (equal pixels or a near copy): "
                                 "every training copy of a validation or test image, all but one of a group in train")


@dataclass(frozen=True)
class ModelConfig(Settings):
    """model: the pretrained network and its input size"""

    backbone: str = option(DEFAULT_BACKBONE, "backbone name (see transferlab backbones)")
    image_size: int | None = option(None, "input size in px instead of the backbone's own", minimum=8)


@dataclass(frozen=True)
class BudgetConfig(Settings):
    """budget: batch size and how long every phase may train"""

    batch_size: int = option(32, "images per batch", minimum=1)
    max_epochs: int | None = option(None, "cap on the epochs of every phase", minimum=1)
    patience: int | None = option(None, "cap on the early-stopping patience of every phase", minimum=1)
    time_budget: float | None = option(None, "seconds of training per run after which no new epoch starts "
                                             "(default: none)", minimum=1)
    equal_compute: bool = option(True, "in a compare, scratch trains for at most the time of the slowest "
                                       "pretrained strategy of the same seed")


@dataclass(frozen=True)
class HeadConfig(Settings):
    """head: the new layers, and how they learn on frozen features"""

    head_hidden: tuple[int, ...] = option((256, 256), "widths of the head's dense layers, comma-separated",
                                          minimum=1)
    dropout: float = option(0.3, "dropout between the head's dense layers", minimum=0, maximum=0.99)
    head_lr: float = option(1e-3, "learning rate of the head on frozen features (Adam)", minimum=1e-8, maximum=10)
    head_epochs: int = option(60, "epochs of the head phase of features, chain-thaw and gradual (early-stopped)",
                              minimum=1)
    head_patience: int = option(8, "early-stopping patience of the head phase", minimum=1)
    warmup_epochs: int = option(1, "epochs of finetune's head warm-up before the whole model thaws (a head "
                                   "trained to the end leaves the body tiny gradients; README)", minimum=1)
    probe_model: str = option("logreg", "the probe's linear model", choices=("logreg", "svm"))


@dataclass(frozen=True)
class BodyConfig(Settings):
    """body: how a pretrained body learns once it thaws (finetune, chain-thaw, gradual)"""

    body_lr: float = option(1e-4, "learning rate of finetune's whole-model phase (Adam)", minimum=1e-8, maximum=10)
    body_epochs: int = option(30, "epochs of finetune's whole-model phase", minimum=1)
    body_patience: int = option(5, "early-stopping patience of finetune's whole-model phase", minimum=1)
    step_lr: float = option(1e-4, "learning rate of every chain-thaw and gradual step after the head (Adam)",
                            minimum=1e-8, maximum=10)
    step_epochs: int = option(5, "epochs of every chain-thaw and gradual step after the head", minimum=1)
    step_patience: int = option(2, "early-stopping patience of every chain-thaw and gradual step", minimum=1)
    body_bn: BatchNormPolicy = option(BatchNormPolicy.AUTO, "BatchNorm of a thawed pretrained body: frozen "
                                      "statistics, train (batch statistics, updated), or auto (finetune: train, "
                                      "and frozen again if its whole-model phase never beats the warm-up; "
                                      "chain-thaw and gradual: frozen)",
                                      choices=tuple(p.value for p in BatchNormPolicy))
    body_schedule: str = option("constant", "learning rates of phases that train the body: constant, or cosine "
                                            "(decayed to 1/100 over the phase's epoch cap)",
                                choices=("constant", "cosine"))
    layer_decay: float = option(1.0, "layer-wise learning-rate decay of phases that train the body: each group "
                                     "below the last learns at this times the rate of the group above it (1: "
                                     "one rate for all; e.g. 0.8)", minimum=0.01, maximum=1)
    discriminative: bool = option(False, "gradual: lower learning rates for lower groups (2.6x per group, "
                                         "ULMFiT's; --layer-decay sets another factor)")
    label_smoothing: float = option(0.0, "label smoothing of the training loss in phases that train the body",
                                    minimum=0, maximum=0.99)
    ema: float = option(0.0, "a moving average of the weights in phases that train the body, decay per step "
                             "(0: off; e.g. 0.99), scored on validation beside the raw weights every epoch; "
                             "the better is kept", minimum=0, maximum=0.9999)


@dataclass(frozen=True)
class ScratchConfig(Settings):
    """scratch: training a randomly initialised backbone"""

    scratch_lr: float = option(1e-3, "learning rate of scratch (Adam)", minimum=1e-8, maximum=10)
    scratch_epochs: int = option(60, "epochs of scratch", minimum=1)
    # As many as its default epochs: at a few images per class a random body's validation loss swings
    # by up to a nat from one epoch to the next for dozens of epochs while its accuracy climbs, and patience 8
    # stopped 2 of 3 flower_photos subsets at 20 per class on their first epoch's weights (chance).
    scratch_patience: int = option(60, "early-stopping patience of scratch", minimum=1)


@dataclass(frozen=True)
class SemiConfig(Settings):
    """unlabelled images: self-train's pseudo-labels on the pool (--unlabelled) and the surrogate pretraining"""

    self_train_rounds: int = option(5, "self-train: rounds of pseudo-labelling; round r of R labels the most "
                                       "confident r/R of the pool (the round best on validation is kept when "
                                       "clearly better than the probe)", minimum=1, maximum=20)
    pseudo_precision: float = option(0.8, "self-train: no pseudo-label below the calibrated confidence at which "
                                          "this share of validation images is right", minimum=0.5, maximum=1)
    student_rounds: int = option(2, "self-train: rounds of a student (the last two backbone groups and the head) "
                                    "trained on the labelled images and the pool images the model before it "
                                    "labels; each starts from the pretrained weights, the one best on validation "
                                    "is kept (0: the probe's self-training alone)", minimum=0, maximum=10)
    student_share: float = option(0.5, "self-train: the share of the pool each student round labels (the most "
                                       "confident, per class)", minimum=0.01, maximum=1)
    surrogate_objective: str = option("exemplar", "surrogate: the self-supervised task the body learns on the "
                                                  "training and unlabelled images before the finetune recipe: "
                                                  "exemplar (every image a class of its own, its augmented views "
                                                  "the examples) or simclr (contrastive, two views per image)",
                                      choices=("exemplar", "simclr"))
    surrogate_size: int = option(64, "surrogate: side of the pretraining views in pixels (low, so that it fits a "
                                     "CPU)", minimum=16, maximum=1024)
    surrogate_epochs: int = option(40, "surrogate: pretraining passes over the images (fewer when "
                                       "--surrogate-minutes would not hold them)", minimum=1)
    surrogate_minutes: float = option(8.0, "surrogate: training time the pretraining may take; the body is cached "
                                            "and shared by every run that needs it", minimum=0.01)
    surrogate_lr: float = option(2e-3, "surrogate: AdamW's peak rate of the pretraining from random weights "
                                       "(surrogate-imagenet uses a tenth)", minimum=1e-8)


@dataclass(frozen=True)
class AugmentConfig(Settings):
    """augmentation: what training images look like"""

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
    mixup: float = option(0.0, "MixUp in phases that train the body: alpha of the Beta distribution of the "
                               "blend (0: off; e.g. 0.2)", minimum=0, maximum=100)
    cutmix: float = option(0.0, "CutMix in phases that train the body: alpha of the Beta distribution of the "
                                "pasted box's area (0: off; e.g. 1.0; with --mixup, one of the two per batch)",
                           minimum=0, maximum=100)


@dataclass(frozen=True)
class ImbalanceConfig(Settings):
    """imbalance: classes with very different numbers of images"""

    class_weights: str = option("none", "auto: weight each class's loss by n / (k * n_c) of the training split "
                                        "(imbalanced data; the probe uses class_weight='balanced')",
                                choices=("none", "auto"))
    balanced_sampler: bool = option(False, "draw each epoch's training examples with replacement, every class "
                                           "equally likely (imbalanced data)")


@dataclass(frozen=True)
class RuntimeConfig(Settings):
    """runtime: where and how fast it runs (none of it changes what is learnt beyond float rounding)"""

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
class TrainConfig(Settings):
    """Everything that decides a run's result besides the data, section by section."""

    model: ModelConfig = ModelConfig()
    budget: BudgetConfig = BudgetConfig()
    head: HeadConfig = HeadConfig()
    body: BodyConfig = BodyConfig()
    scratch: ScratchConfig = ScratchConfig()
    semi: SemiConfig = SemiConfig()
    augment: AugmentConfig = AugmentConfig()
    imbalance: ImbalanceConfig = ImbalanceConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    def epochs(self, n: int) -> int:
        """A phase's epoch count ``n`` under the budget's cap (``--max-epochs``)."""
        cap = self.budget.max_epochs
        return n if cap is None else min(n, cap)

    def patience(self, n: int) -> int:
        """A phase's patience ``n`` under the budget's cap (``--patience``)."""
        cap = self.budget.patience
        return n if cap is None else min(n, cap)


# The sections whose options every training command offers, in the order --help shows them (the few a
# beginner needs first: the data and model, then how long; the rest are for tuning).
SECTIONS = (ModelConfig, BudgetConfig, HeadConfig, BodyConfig, ScratchConfig, SemiConfig, AugmentConfig,
            ImbalanceConfig, RuntimeConfig)
