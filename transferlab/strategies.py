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

from .errors import TransferlabError
from .registry import Registry

HEAD = "head"


@dataclass(frozen=True)
class Phase:
    """One stretch of training with a fixed set of trainable parts.

    Attributes:
        name: shown in progress and history.
        trainable: the parts that learn: ``"head"`` and/or backbone group names.
        lr: learning rate (of the head, and of every group without its own).
        group_lr: per-part rates (discriminative fine-tuning); missing parts use ``lr``.
        optimizer: a name in ``engine.OPTIMIZERS`` (``adam``, ``adamw``, ``sgd``).
        weight_decay: decoupled for adamw, L2 otherwise.
        max_epochs: cap on epochs.
        patience: stop after this many epochs without a lower validation loss.
        frozen_bn_eval: keep BatchNorm of frozen parts in eval mode (statistics untouched).
        bn_eval: keep *every* BatchNorm in eval mode, trainable parts included. Pretrained
            statistics are better estimates than those of small batches of a small dataset, and
            batch statistics of a thawed group shift everything above it (Keras' transfer-learning
            guide recommends the same); scratch training needs them to learn.
        kind: ``torch`` (the engine's loop) or ``probe`` (a scikit-learn model on features).
        options: extra settings of the kind (e.g. the probe's classifier).
    """

    name: str
    trainable: tuple[str, ...]
    lr: float = 1e-3
    group_lr: dict[str, float] = field(default_factory=dict)
    optimizer: str = "adam"
    weight_decay: float = 0.0
    max_epochs: int = 30
    patience: int = 5
    frozen_bn_eval: bool = True
    bn_eval: bool = True
    kind: str = "torch"
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Strategy:
    """A named recipe: start from ``pretrained`` weights (or random) and run ``phases`` in order."""

    name: str
    pretrained: bool
    phases: list[Phase]
    linear_head: bool = False


@dataclass(frozen=True)
class StrategyOptions:
    """Knobs shared by the builders (the defaults give good results without tuning)."""

    head_lr: float = 1e-3
    body_lr: float = 1e-4
    head_epochs: int = 60
    head_patience: int = 8
    body_epochs: int = 15
    body_patience: int = 3
    step_epochs: int = 5  # per chain-thaw / gradual step
    step_patience: int = 2
    scratch_epochs: int = 60
    scratch_patience: int = 8
    discriminative: bool = False  # gradual: lr / 2.6 per group from the top
    probe_model: str = "logreg"  # or "svm"

    def scaled(self, max_epochs: int | None = None, patience: int | None = None) -> StrategyOptions:
        """Cap every epoch budget at ``max_epochs`` and every patience at ``patience``."""
        out = self
        if max_epochs is not None:
            out = replace(out, **{k: min(getattr(out, k), max_epochs)
                                  for k in ("head_epochs", "body_epochs", "step_epochs", "scratch_epochs")})
        if patience is not None:
            out = replace(out, **{k: min(getattr(out, k), patience)
                                  for k in ("head_patience", "body_patience", "step_patience", "scratch_patience")})
        return out


Builder = Callable[[list[str], StrategyOptions], Strategy]
STRATEGIES: Registry[Builder] = Registry("strategy", TransferlabError)


def _head_phase(o: StrategyOptions) -> Phase:
    return Phase("head", (HEAD,), lr=o.head_lr, max_epochs=o.head_epochs, patience=o.head_patience)


@STRATEGIES.register("scratch")
def scratch(groups: list[str], o: StrategyOptions) -> Strategy:
    """Random initialisation, everything trainable (the baseline transfer must beat)."""
    phase = Phase("all", (*groups, HEAD), lr=o.head_lr, max_epochs=o.scratch_epochs, patience=o.scratch_patience,
                  bn_eval=False)
    return Strategy("scratch", pretrained=False, phases=[phase])


@STRATEGIES.register("features")
def features(groups: list[str], o: StrategyOptions) -> Strategy:
    """Frozen pretrained backbone as a feature extractor; train the dense head only."""
    return Strategy("features", pretrained=True, phases=[_head_phase(o)])


@STRATEGIES.register("probe")
def probe(groups: list[str], o: StrategyOptions) -> Strategy:
    """Off-the-shelf features + a scikit-learn linear model, regularisation chosen by CV."""
    phase = Phase("probe", (HEAD,), kind="probe", max_epochs=1, options={"model": o.probe_model})
    return Strategy("probe", pretrained=True, phases=[phase], linear_head=True)


@STRATEGIES.register("finetune")
def finetune(groups: list[str], o: StrategyOptions) -> Strategy:
    """Head warm-up on frozen features, then the whole model at a lower rate."""
    whole = Phase("all", (*groups, HEAD), lr=o.body_lr, max_epochs=o.body_epochs, patience=o.body_patience)
    return Strategy("finetune", pretrained=True, phases=[_head_phase(o), whole])


@STRATEGIES.register("chain-thaw")
def chain_thaw(groups: list[str], o: StrategyOptions) -> Strategy:
    """New layers; then each backbone group alone, first to last; then everything."""
    steps = [Phase(f"thaw {g}", (g,), lr=o.body_lr, max_epochs=o.step_epochs, patience=o.step_patience)
             for g in groups]
    whole = Phase("all", (*groups, HEAD), lr=o.body_lr, max_epochs=o.step_epochs, patience=o.step_patience)
    return Strategy("chain-thaw", pretrained=True, phases=[_head_phase(o), *steps, whole])


@STRATEGIES.register("gradual")
def gradual(groups: list[str], o: StrategyOptions) -> Strategy:
    """Head first, then thaw one more group per stage from the last one down (ULMFiT)."""
    phases = [_head_phase(o)]
    for k in range(1, len(groups) + 1):
        thawed = groups[-k:]
        rates = {g: o.body_lr / 2.6 ** (len(groups) - 1 - i) for i, g in enumerate(groups)} \
            if o.discriminative else {}
        phases.append(Phase(f"thaw last {k}", (*thawed, HEAD), lr=o.body_lr, group_lr=rates,
                            max_epochs=o.step_epochs, patience=o.step_patience))
    return Strategy("gradual", pretrained=True, phases=phases)


def build_strategy(name: str, groups: list[str], options: StrategyOptions | None = None) -> Strategy:
    """The strategy ``name`` for a backbone whose groups are ``groups`` (input to output)."""
    return STRATEGIES.get(name)(groups, options or StrategyOptions())


def list_strategies() -> list[str]:
    return STRATEGIES.names()
