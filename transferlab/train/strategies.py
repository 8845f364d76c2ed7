"""Registry of strategies. A strategy is data: whether it starts from pretrained weights, and an
ordered list of Phases. The engine runs a Phase and knows nothing about strategy names.

Learning rates follow the methods they come from:
- chain-thaw (Felbo et al. 2017, DeepMoji): Adam; 1e-3 for the new layers, 1e-4 for every later
  step (each backbone group alone, then everything), a fresh optimizer and early stopping per step.
- gradual unfreezing (Howard & Ruder 2018, ULMFiT): thaw the last group first, one more per stage;
  discriminative rates divide the rate by 2.6 per group further from the output.
- fine-tuning: train the new head on frozen features first (so random head gradients do not wreck
  the pretrained weights), then everything at a 10x lower rate.
Every rate, epoch count and patience is an option of ``train.config`` (``--head-lr``, ``--step-epochs``
...), read here under its own name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.errors import TransferlabError
from ..core.registry import Registry
from ..models.heads import HEAD
from .config import BatchNormPolicy, TrainConfig
from .surrogate import SurrogateSettings


@dataclass(frozen=True)
class Gradient:
    """How a phase learns by gradient descent (the engine's loop).

    Attributes:
        lr: learning rate (of the head, and of every group without its own).
        group_lr: per-part rates (discriminative fine-tuning); missing parts use ``lr``.
        optimizer: a name in ``engine.OPTIMIZERS`` (``adam``, ``adamw``, ``sgd``).
        weight_decay: decoupled for adamw, L2 otherwise.
        max_epochs: cap on epochs.
        patience: stop after this many epochs without a lower validation loss.
        frozen_bn_eval: keep BatchNorm of frozen parts in eval mode (statistics untouched).
        bn: the BatchNorm policy of the trainable parts: FROZEN keeps *every* BatchNorm in eval mode,
            TRAIN lets those of trainable parts normalise by batch statistics and update their
            running ones; AUTO lets the runner decide (``train.runners.run_gradient``): batch
            statistics for the first phase that trains the body, again with frozen ones if that
            phase never improves on its starting weights, and the mode that worked for every later
            phase. The engine only ever sees FROZEN or TRAIN. Frozen statistics
            suit data whose statistics are far from ImageNet's (batch statistics of upscaled 8x8
            digits wreck the features the head was warmed up on); on photos batch statistics
            fine-tune better (see the README's measurements). Scratch training needs batch
            statistics to learn.
        schedule: ``constant`` rates, or ``cosine``: each epoch's rates follow half a cosine from the
            given ones down to 1/100 of them at ``max_epochs`` (Loshchilov & Hutter 2017, without
            restarts); early stopping still applies.
        label_smoothing: the training loss's target puts this mass on the other classes evenly
            (Szegedy et al. 2016); the validation loss that early stopping watches is plain.
        mixup, cutmix: alphas of MixUp / CutMix on the training batches (0: off; ``data.transforms.mix_batch``).
        ema: decay per step of a moving average of the trained weights, evaluated on validation
            beside the raw weights after every epoch; the better of the two is the epoch's candidate
            for the best weights (0: off; ``train.averaging``).
        keep_start: the starting weights are a candidate for the best too (a phase that only makes
            validation worse is undone); off, the best epoch is kept even if it is worse than them.
    """

    lr: float = 1e-3
    group_lr: dict[str, float] = field(default_factory=dict)
    optimizer: str = "adam"
    weight_decay: float = 0.0
    max_epochs: int = 30
    patience: int = 5
    frozen_bn_eval: bool = True
    bn: BatchNormPolicy = BatchNormPolicy.FROZEN
    balanced: bool = False  # the loss weights each class by n / (k * n_c) of the training split
    schedule: str = "constant"
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: float = 0.0
    keep_start: bool = True


@dataclass(frozen=True)
class Probe:
    """How a phase fits a scikit-learn linear model on pooled features (C chosen by cross-validation).

    Attributes:
        model: ``logreg`` (LogisticRegression) or ``svm`` (LinearSVC).
    """

    model: str = "logreg"
    balanced: bool = False  # scikit-learn's class_weight="balanced"


@dataclass(frozen=True)
class SelfTrain:
    """How a phase self-trains the probe on the unlabelled pool (``train.selftrain``).

    Attributes:
        rounds: rounds of pseudo-labelling and fitting again.
        precision: the validation precision the pseudo-labels' confidence threshold must reach.
    """

    rounds: int = 5
    precision: float = 0.8
    balanced: bool = False  # scikit-learn's class_weight="balanced"


@dataclass(frozen=True)
class Student:
    """How a phase trains the top of the network as a student on pseudo-labels (noisy student: Xie et
    al. 2020; ``train.runners.run_student``): each round the model as it stands labels the pool, and
    the phase's parts, reset to their weights at the phase's start, train on the labelled images
    (every cached view) and the pool's most confident ``share`` per class.

    Attributes:
        fit: the engine's loop each round runs (rates, epochs, early stopping on validation loss).
        rounds: students trained one after another, each labelled by the one before.
        share: of the pool labelled per round, per class in the labelled images' proportions.
        precision: the calibrated confidence floor, as for ``SelfTrain``.
    """

    fit: Gradient = field(default_factory=Gradient)
    rounds: int = 2
    share: float = 0.5
    precision: float = 0.8
    balanced: bool = False  # scikit-learn's class_weight="balanced"


@dataclass(frozen=True)
class Surrogate:
    """How a phase pretrains the body on a self-supervised task over the training and pool images,
    labels unused (``train.surrogate``; the pretrained body is cached and shared).

    Attributes:
        settings: the objective, start, resolution, epochs, time and rate of the pretraining.
    """

    settings: SurrogateSettings = field(default_factory=SurrogateSettings)


@dataclass(frozen=True)
class Phase:
    """One stretch of training with a fixed set of trainable parts.

    Attributes:
        name: shown in progress and history.
        trainable: the parts that learn: ``"head"`` and/or backbone group names.
        method: how they learn; its type picks the phase runner (``train.runners``).
    """

    name: str
    trainable: tuple[str, ...]
    method: Gradient | Probe | SelfTrain | Student | Surrogate = field(default_factory=Gradient)

    @property
    def body_trainable(self) -> tuple[str, ...]:
        """The backbone groups that learn in this phase (the head left out)."""
        return tuple(n for n in self.trainable if n != HEAD)


@dataclass(frozen=True)
class Strategy:
    """A named recipe: start from ``pretrained`` weights (or random) and run ``phases`` in order."""

    name: str
    pretrained: bool
    phases: list[Phase]
    linear_head: bool = False  # a single linear layer instead of the dense head (the probe)
    needs_pool: bool = False  # learns from the unlabelled pool too (--unlabelled)

    @property
    def self_supervised(self) -> bool:
        """Whether it pretrains its body on a surrogate task first (it brings a prior of its own)."""
        return any(isinstance(p.method, Surrogate) for p in self.phases)


def body_gradient(config: TrainConfig, groups: list[str], lr: float, epochs: int, patience: int,
                  bn: BatchNormPolicy, decay: float | None = None) -> Gradient:
    """How a phase that trains (part of) the body learns: ``lr`` for the head and the last group,
    ``decay`` (default ``--layer-decay``) times less per group further down (discriminative rates:
    Howard & Ruder 2018; layer-wise rate decay: Clark et al. 2020), with the body's recipe; ``bn`` is
    the strategy's own BatchNorm policy, which ``--body-bn`` overrides unless it is auto."""
    decay = config.body.layer_decay if decay is None else decay
    rates = {g: lr * decay ** (len(groups) - 1 - i) for i, g in enumerate(groups)} if decay != 1 else {}
    chosen = config.body.body_bn if config.body.body_bn is not BatchNormPolicy.AUTO else bn
    return Gradient(lr=lr, group_lr=rates, max_epochs=config.epochs(epochs), patience=config.patience(patience),
                    bn=chosen, **body_recipe(config))


def body_recipe(config: TrainConfig) -> dict[str, Any]:
    """The ``Gradient`` fields of every phase that trains a body (scratch's too): the schedule, label
    smoothing, mixing and the weight average."""
    b, a = config.body, config.augment
    return {"schedule": b.body_schedule, "label_smoothing": b.label_smoothing, "mixup": a.mixup,
            "cutmix": a.cutmix, "ema": b.ema}


Builder = Callable[[list[str], TrainConfig], Strategy]
STRATEGIES: Registry[Builder] = Registry("strategy", TransferlabError)


def _head_phase(config: TrainConfig, epochs: int) -> Phase:
    """The new head on frozen features for ``epochs`` (early-stopped)."""
    h = config.head
    return Phase("head", (HEAD,), Gradient(lr=h.head_lr, max_epochs=config.epochs(epochs),
                                           patience=config.patience(h.head_patience)))


@STRATEGIES.register("scratch")
def scratch(groups: list[str], config: TrainConfig) -> Strategy:
    """Random initialisation, everything trainable (the baseline transfer must beat)."""
    s = config.scratch
    phase = Phase("all", (*groups, HEAD), Gradient(lr=s.scratch_lr, max_epochs=config.epochs(s.scratch_epochs),
                                                   patience=config.patience(s.scratch_patience),
                                                   bn=BatchNormPolicy.TRAIN, **body_recipe(config)))
    return Strategy("scratch", pretrained=False, phases=[phase])


@STRATEGIES.register("features")
def features(groups: list[str], config: TrainConfig) -> Strategy:
    """Frozen pretrained backbone as a feature extractor; train the dense head only."""
    return Strategy("features", pretrained=True, phases=[_head_phase(config, config.head.head_epochs)])


@STRATEGIES.register("probe")
def probe(groups: list[str], config: TrainConfig) -> Strategy:
    """Off-the-shelf features + a multinomial logistic regression (or --probe-model svm), its
    regularisation chosen on validation."""
    phase = Phase("probe", (HEAD,), Probe(model=config.head.probe_model))
    return Strategy("probe", pretrained=True, phases=[phase], linear_head=True)


# The student's recipe, measured on flower_photos (README): the last two groups at a tenth of the head's
# rate, frozen BatchNorm statistics (batches mix labelled and pool images), label smoothing as the
# noise on the targets; validation loss stops it within a few epochs. Its starting weights (the
# teacher) are no candidate for its best epoch: the teacher's C, temperature and round were chosen on
# validation, so its validation loss flatters it (at 20 per class every student lost to it there and
# won on test); the runner keeps the teacher only when validation says clearly that it is better.
STUDENT_LR = 1e-4
STUDENT_GROUPS = 2


def student_phase(groups: list[str], config: TrainConfig) -> Phase:
    """The students of self-train: the last groups and the head, on the labelled images and the pool
    the model before them labels (``Student``)."""
    s = config.semi
    top = tuple(groups[-STUDENT_GROUPS:])
    fit = Gradient(lr=STUDENT_LR * 10, group_lr={g: STUDENT_LR for g in top}, max_epochs=config.epochs(10),
                   patience=config.patience(3), bn=BatchNormPolicy.FROZEN, label_smoothing=0.1, keep_start=False)
    return Phase("student", (*top, HEAD), Student(fit, s.student_rounds, s.student_share, s.pseudo_precision))


@STRATEGIES.register("self-train")
def self_train(groups: list[str], config: TrainConfig) -> Strategy:
    """The probe, then rounds of pseudo-labels on the unlabelled images (--unlabelled) it is sure of,
    then students: the top of the network trained on the labelled images and the pool they label."""
    s = config.semi
    phases = [Phase("self-train", (HEAD,), SelfTrain(rounds=s.self_train_rounds, precision=s.pseudo_precision))]
    if s.student_rounds:
        phases.append(student_phase(groups, config))
    return Strategy("self-train", pretrained=True, phases=phases, linear_head=True, needs_pool=True)


# finetune warms its head up for one epoch only (--warmup-epochs, as fastai's fine_tune does): a head
# trained to the end on frozen features is over-confident and gives the body tiny gradients, and the
# whole-model phase then stops early without improving (measured on flower_photos, README). Its
# BatchNorm policy is auto (the runner decides). Chain-thaw and gradual keep the original methods' full
# head phase and frozen statistics, as each thaws one group at a time from an already-good model.


@STRATEGIES.register("finetune")
def finetune(groups: list[str], config: TrainConfig) -> Strategy:
    """Head warm-up on frozen features, then the whole model at a lower rate."""
    b = config.body
    whole = Phase("all", (*groups, HEAD), body_gradient(config, groups, b.body_lr, b.body_epochs, b.body_patience,
                                                        BatchNormPolicy.AUTO))
    return Strategy("finetune", pretrained=True, phases=[_head_phase(config, config.head.warmup_epochs), whole])


def _surrogate(name: str, groups: list[str], config: TrainConfig, pretrained: bool) -> Strategy:
    """Surrogate pretraining of the body from ``pretrained`` (ImageNet) or random weights, then finetune's phases."""
    s = config.semi
    settings = SurrogateSettings(objective=s.surrogate_objective, backbone=config.model.backbone, pretrained=pretrained,
                                 size=s.surrogate_size, epochs=s.surrogate_epochs, minutes=s.surrogate_minutes,
                                 lr=s.surrogate_lr / 10 if pretrained else s.surrogate_lr)
    pretrain = Phase("surrogate", tuple(groups), Surrogate(settings))
    return Strategy(name, pretrained=pretrained, phases=[pretrain, *finetune(groups, config).phases])


@STRATEGIES.register("surrogate")
def surrogate(groups: list[str], config: TrainConfig) -> Strategy:
    """Random weights pretrained on a surrogate task over all images without labels, then finetune."""
    return _surrogate("surrogate", groups, config, pretrained=False)


@STRATEGIES.register("surrogate-imagenet")
def surrogate_imagenet(groups: list[str], config: TrainConfig) -> Strategy:
    """ImageNet weights pretrained further on a surrogate task over all images, then finetune."""
    return _surrogate("surrogate-imagenet", groups, config, pretrained=True)


@STRATEGIES.register("chain-thaw")
def chain_thaw(groups: list[str], config: TrainConfig) -> Strategy:
    """New layers; then each backbone group alone, first to last; then everything."""
    b = config.body
    step = body_gradient(config, groups, b.step_lr, b.step_epochs, b.step_patience, BatchNormPolicy.FROZEN)
    steps = [Phase(f"thaw {g}", (g,), step) for g in groups]
    whole = Phase("all", (*groups, HEAD), step)
    return Strategy("chain-thaw", pretrained=True, phases=[_head_phase(config, config.head.head_epochs), *steps, whole])


@STRATEGIES.register("gradual")
def gradual(groups: list[str], config: TrainConfig) -> Strategy:
    """Head first, then thaw one more group per stage from the last one down (ULMFiT)."""
    b = config.body
    step = body_gradient(config, groups, b.step_lr, b.step_epochs, b.step_patience, BatchNormPolicy.FROZEN,
                         decay=1 / 2.6 if b.discriminative and b.layer_decay == 1 else None)
    phases = [_head_phase(config, config.head.head_epochs)]
    phases += [Phase(f"thaw last {k}", (*groups[-k:], HEAD), step) for k in range(1, len(groups) + 1)]
    return Strategy("gradual", pretrained=True, phases=phases)


def build_strategy(name: str, groups: list[str] | tuple[str, ...], config: TrainConfig | None = None) -> Strategy:
    """The strategy ``name`` for a backbone whose groups are ``groups`` (input to output), with the
    rates, epochs and recipes of ``config`` (default: the defaults)."""
    config = config or TrainConfig()
    strategy = STRATEGIES.get(name)(list(groups), config)
    if config.imbalance.class_weights == "auto":
        strategy = replace(strategy, phases=[replace(p, method=replace(p.method, balanced=True))
                                             if hasattr(p.method, "balanced") else p for p in strategy.phases])
    return strategy


def check_pool_strategies(names: list[str] | tuple[str, ...], config: TrainConfig, has_pool: bool) -> None:
    """Strategies that learn from unlabelled images need a pool (``--unlabelled``)."""
    from ..models.catalog import backbone_spec

    groups = backbone_spec(config.model.backbone, config.model.image_size).groups
    needy = [n for n in names if build_strategy(n, groups, config).needs_pool]
    if needy and not has_pool:
        raise TransferlabError(f"{', '.join(needy)} learns from unlabelled images: pass --unlabelled PATH (a folder "
                               "of images without labels), or leave it out of --strategies")


def list_strategies() -> list[str]:
    """Registered strategy names."""
    return STRATEGIES.names()


def describe_strategy(name: str) -> str:
    """The first paragraph of the strategy's docstring, on one line."""
    return " ".join((STRATEGIES.get(name).__doc__ or "").strip().split("\n\n")[0].split())
