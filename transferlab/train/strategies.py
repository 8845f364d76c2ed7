"""Registry of strategies. A strategy is data: whether it starts from pretrained weights, and an
ordered list of Phases. The engine runs a Phase and knows nothing about strategy names.

Learning rates follow the methods they come from:
- chain-thaw (Felbo et al. 2017, DeepMoji): Adam; 1e-3 for the new layers, 1e-4 for every later
  step (each backbone group alone, then everything), a fresh optimizer and early stopping per step.
- gradual unfreezing (Howard & Ruder 2018, ULMFiT): thaw the last group first, one more per stage;
  discriminative rates divide the rate by 2.6 per group further from the output.
- fine-tuning: train the new head on frozen features first (so random head gradients do not wreck
  the pretrained weights), then everything at a 10x lower rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.errors import TransferlabError
from ..core.registry import Registry
from ..models.heads import HEAD


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
        bn_eval: keep *every* BatchNorm in eval mode, trainable parts included (True), or let
            the BatchNorm of trainable parts normalise by batch statistics and update its running
            ones (False); None lets the run decide (``train.run``): batch statistics for the first
            phase that trains the body, again with frozen ones if that phase never improves on its
            starting weights, and the mode that worked for every later phase. Frozen statistics
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
    """

    lr: float = 1e-3
    group_lr: dict[str, float] = field(default_factory=dict)
    optimizer: str = "adam"
    weight_decay: float = 0.0
    max_epochs: int = 30
    patience: int = 5
    frozen_bn_eval: bool = True
    bn_eval: bool | None = True
    balanced: bool = False  # the loss weights each class by n / (k * n_c) of the training split
    schedule: str = "constant"
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    ema: float = 0.0


@dataclass(frozen=True)
class Probe:
    """How a phase fits a scikit-learn linear model on pooled features (C chosen by cross-validation).

    Attributes:
        model: ``logreg`` (LogisticRegression) or ``svm`` (LinearSVC).
    """

    model: str = "logreg"
    balanced: bool = False  # scikit-learn's class_weight="balanced"


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
    method: Gradient | Probe = field(default_factory=Gradient)

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


@dataclass(frozen=True)
class StrategyOptions:
    """Knobs shared by the builders (the defaults give good results without tuning)."""

    head_lr: float = 1e-3
    body_lr: float = 1e-4
    head_epochs: int = 60
    head_patience: int = 8
    body_epochs: int = 30
    body_patience: int = 5
    step_epochs: int = 5  # per chain-thaw / gradual step
    step_patience: int = 2
    scratch_epochs: int = 60
    scratch_patience: int = 8
    discriminative: bool = False  # gradual: lr / 2.6 per group from the top
    probe_model: str = "logreg"  # or "svm"
    body_bn: str = "auto"  # BatchNorm of a thawed pretrained body: frozen, train or auto (Gradient.bn_eval)
    warmup_epochs: int | None = None  # the head warm-up before a body thaws (None: the strategy's own)
    balanced: bool = False  # every phase weights its loss by class (imbalanced data)
    body_schedule: str = "constant"  # the learning-rate schedule of phases that train the body
    label_smoothing: float = 0.0  # of phases that train the body
    layer_decay: float = 1.0  # per group below the last, body rates are multiplied by this (1: one rate)
    mixup: float = 0.0  # MixUp's alpha in phases that train the body (0: off)
    cutmix: float = 0.0  # CutMix's alpha in phases that train the body (0: off)
    ema: float = 0.0  # decay of the weight average in phases that train the body (0: off)

    def body_gradient(self, groups: list[str], max_epochs: int, patience: int, bn_eval: bool | None,
                      decay: float | None = None) -> Gradient:
        """How a phase that trains (part of) the body learns: ``body_lr`` for the head and the last group,
        ``decay`` (default ``layer_decay``) times less per group further down (discriminative rates:
        Howard & Ruder 2018; layer-wise rate decay: Clark et al. 2020), the body schedule and smoothing."""
        decay = self.layer_decay if decay is None else decay
        rates = {g: self.body_lr * decay ** (len(groups) - 1 - i) for i, g in enumerate(groups)} \
            if decay != 1 else {}
        return Gradient(lr=self.body_lr, group_lr=rates, max_epochs=max_epochs, patience=patience,
                        bn_eval=self.body_bn_eval(bn_eval), **self.body_recipe())

    def body_recipe(self) -> dict[str, Any]:
        """The ``Gradient`` fields of every phase that trains a body (scratch's too): the schedule,
        label smoothing, mixing and the weight average."""
        return {"schedule": self.body_schedule, "label_smoothing": self.label_smoothing, "mixup": self.mixup,
                "cutmix": self.cutmix, "ema": self.ema}

    def body_bn_eval(self, auto: bool | None) -> bool | None:
        """``Gradient.bn_eval`` of phases that train the body; ``auto``: the strategy's own policy."""
        return {"frozen": True, "train": False}.get(self.body_bn, auto)

    def scaled(self, max_epochs: int | None = None, patience: int | None = None) -> StrategyOptions:
        """Cap every epoch budget at ``max_epochs`` and every patience at ``patience``."""
        out = self
        if max_epochs is not None:
            out = replace(out, **{k: min(getattr(out, k), max_epochs)
                                  for k in ("head_epochs", "body_epochs", "step_epochs", "scratch_epochs")},
                          warmup_epochs=None if out.warmup_epochs is None else min(out.warmup_epochs, max_epochs))
        if patience is not None:
            out = replace(out, **{k: min(getattr(out, k), patience)
                                  for k in ("head_patience", "body_patience", "step_patience", "scratch_patience")})
        return out


Builder = Callable[[list[str], StrategyOptions], Strategy]
STRATEGIES: Registry[Builder] = Registry("strategy", TransferlabError)


def _head_phase(o: StrategyOptions, warmup: int | None = None) -> Phase:
    """The new head on frozen features: the whole of ``features`` (``warmup`` None), or the warm-up of
    ``warmup`` epochs before a body thaws (the user's ``warmup_epochs`` when given)."""
    epochs = o.head_epochs if warmup is None else (o.warmup_epochs or warmup)
    return Phase("head", (HEAD,), Gradient(lr=o.head_lr, max_epochs=epochs, patience=o.head_patience))


@STRATEGIES.register("scratch")
def scratch(groups: list[str], o: StrategyOptions) -> Strategy:
    """Random initialisation, everything trainable (the baseline transfer must beat)."""
    phase = Phase("all", (*groups, HEAD), Gradient(lr=o.head_lr, max_epochs=o.scratch_epochs,
                                                   patience=o.scratch_patience, bn_eval=False, **o.body_recipe()))
    return Strategy("scratch", pretrained=False, phases=[phase])


@STRATEGIES.register("features")
def features(groups: list[str], o: StrategyOptions) -> Strategy:
    """Frozen pretrained backbone as a feature extractor; train the dense head only."""
    return Strategy("features", pretrained=True, phases=[_head_phase(o)])


@STRATEGIES.register("probe")
def probe(groups: list[str], o: StrategyOptions) -> Strategy:
    """Off-the-shelf features + a scikit-learn linear model, regularisation chosen by CV."""
    phase = Phase("probe", (HEAD,), Probe(model=o.probe_model))
    return Strategy("probe", pretrained=True, phases=[phase], linear_head=True)


# finetune warms its head up for one epoch only (as fastai's fine_tune does): a head trained to the end
# on frozen features is over-confident and gives the body tiny gradients, and the whole-model phase
# then stops early without improving (measured on flower_photos, README). It lets the run choose the
# BatchNorm policy (Gradient.bn_eval None). Chain-thaw and gradual keep the original methods' full
# head phase and frozen statistics, as each thaws one group at a time from an already-good model.
FINETUNE_WARMUP = 1


@STRATEGIES.register("finetune")
def finetune(groups: list[str], o: StrategyOptions) -> Strategy:
    """Head warm-up on frozen features, then the whole model at a lower rate."""
    whole = Phase("all", (*groups, HEAD), o.body_gradient(groups, o.body_epochs, o.body_patience, None))
    return Strategy("finetune", pretrained=True, phases=[_head_phase(o, FINETUNE_WARMUP), whole])


@STRATEGIES.register("chain-thaw")
def chain_thaw(groups: list[str], o: StrategyOptions) -> Strategy:
    """New layers; then each backbone group alone, first to last; then everything."""
    step = o.body_gradient(groups, o.step_epochs, o.step_patience, True)
    steps = [Phase(f"thaw {g}", (g,), step) for g in groups]
    whole = Phase("all", (*groups, HEAD), step)
    return Strategy("chain-thaw", pretrained=True, phases=[_head_phase(o, o.head_epochs), *steps, whole])


@STRATEGIES.register("gradual")
def gradual(groups: list[str], o: StrategyOptions) -> Strategy:
    """Head first, then thaw one more group per stage from the last one down (ULMFiT)."""
    step = o.body_gradient(groups, o.step_epochs, o.step_patience, True,
                           decay=1 / 2.6 if o.discriminative and o.layer_decay == 1 else None)
    phases = [_head_phase(o, o.head_epochs)]
    phases += [Phase(f"thaw last {k}", (*groups[-k:], HEAD), step) for k in range(1, len(groups) + 1)]
    return Strategy("gradual", pretrained=True, phases=phases)


def build_strategy(name: str, groups: list[str] | tuple[str, ...],
                   options: StrategyOptions | None = None) -> Strategy:
    """The strategy ``name`` for a backbone whose groups are ``groups`` (input to output)."""
    options = options or StrategyOptions()
    strategy = STRATEGIES.get(name)(list(groups), options)
    if options.balanced:
        strategy = replace(strategy, phases=[replace(p, method=replace(p.method, balanced=True))
                                             for p in strategy.phases])
    return strategy


def list_strategies() -> list[str]:
    """Registered strategy names."""
    return STRATEGIES.names()


def describe_strategy(name: str) -> str:
    """The first line of the strategy's docstring."""
    return (STRATEGIES.get(name).__doc__ or "").strip().splitlines()[0]
