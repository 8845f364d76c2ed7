"""Phase runners, dispatched by the type of a phase's method: ``Gradient`` -> the engine's loop,
``Probe`` -> a scikit-learn fit on features. A runner returns the phase's history rows."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..core.progress import console
from ..models.heads import TransferModel
from ..runtime.distributed import is_main
from .batches import Batches, ImageBatches, TensorBatches
from .config import BatchNormPolicy
from .engine import PhaseContext, evaluate, fit_phase, predict_pooled
from .probe import fit_probe
from .records import RunDetails
from .selftrain import clearly_better, pseudo_labels, self_train
from .strategies import Gradient, Phase, Probe, SelfTrain, Student, Surrogate
from .surrogate import pretrained_body


@dataclass
class PhaseRun:
    """Everything a runner gets: the model, the phase, its inputs, how it runs, and a place for facts
    worth reporting (e.g. the C the probe chose)."""

    model: TransferModel
    phase: Phase
    train: Batches  # at the level where the phase's first trainable part starts
    val: Batches
    ctx: PhaseContext
    details: RunDetails
    pool: Batches | None = None  # the unlabelled pool's inputs, for runners that learn from it
    improved: bool | None = None  # set by the runner: whether the phase beat its starting weights
    # Saves the run as it stands with this phase to start afresh (the BatchNorm fallback's decision).
    restart: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Runner:
    """How one kind of phase runs.

    Attributes:
        run: does the phase, returns its history rows.
        augmented: whether it trains on augmented views of cached inputs (else the centre view only).
        pool: whether it learns from the unlabelled pool (its centre views at the phase's level).
        pool_optional: it learns from the pool when there is one, and from the training images alone otherwise.
        pool_views: it trains on the pool's augmented views too (else the centre view only).
    """

    run: Callable[[PhaseRun], list[dict[str, Any]]]
    augmented: bool
    pool: bool = False
    pool_optional: bool = False
    pool_views: bool = False


RUNNERS: dict[type, Runner] = {}


def register_runner(method: type, augmented: bool, pool: bool = False, pool_optional: bool = False,
                    pool_views: bool = False) -> Callable:
    """Decorator registering the runner of phases whose method is a ``method``."""
    def wrap(fn: Callable[[PhaseRun], list[dict[str, Any]]]) -> Callable:
        if method in RUNNERS:
            raise ValueError(f"a runner for {method.__name__} is already registered")
        RUNNERS[method] = Runner(fn, augmented, pool, pool_optional, pool_views)
        return fn
    return wrap


def runner_for(phase: Phase) -> Runner:
    """The runner of ``phase`` (by the type of its method)."""
    try:
        return RUNNERS[type(phase.method)]
    except KeyError:
        raise TypeError(f"no runner for phases of type {type(phase.method).__name__}; "
                        f"known: {', '.join(t.__name__ for t in RUNNERS)}") from None


def _fit(r: PhaseRun, bn: BatchNormPolicy) -> list[dict[str, Any]]:
    """The engine's loop over ``r.phase`` with the definite BatchNorm policy ``bn``."""
    phase = replace(r.phase, method=replace(r.phase.method, bn=bn))
    result = fit_phase(r.model, phase, r.train, r.val, r.ctx)
    if result.budget_cut:
        r.details.budget_cut = r.phase.name
    if result.best_is_average:
        r.details.kept_average.append(r.phase.name)
    r.improved = result.best_epoch > 0
    return result.history


@register_runner(Gradient, augmented=True)
def run_gradient(r: PhaseRun) -> list[dict[str, Any]]:
    """The engine's loop with early stopping and checkpoints.

    The BatchNorm policy ``auto`` is decided here, once per run: the first such phase trains with
    batch statistics; if it never beats its starting weights (which it then restores) and no time
    budget stopped it, it runs again with frozen statistics. The run's details record the policy that
    worked, which every later ``auto`` phase uses, and a resumed run continues the same way."""
    bn = r.phase.method.bn
    if bn is not BatchNormPolicy.AUTO:
        return _fit(r, bn)
    if r.details.body_bn is not None:
        return _fit(r, r.details.body_bn)
    rows = _fit(r, BatchNormPolicy.TRAIN)
    if r.improved or r.details.budget_cut:
        r.details.body_bn = BatchNormPolicy.TRAIN
        return rows
    r.details.body_bn, r.details.body_bn_train_epochs = BatchNormPolicy.FROZEN, len(rows)
    if not r.ctx.quiet and is_main():
        console.print(f"  {r.phase.name}: training BatchNorm statistics never beat the starting weights in "
                      f"{len(rows)} epoch(s); running the phase again with them frozen (--body-bn frozen)",
                      highlight=False)
    r.restart()  # decided before the second attempt starts, so that a resume continues it
    r.ctx = replace(r.ctx, resume=None)
    return _fit(r, BatchNormPolicy.FROZEN)


def all_views(batches: TensorBatches) -> tuple[torch.Tensor, torch.Tensor]:
    """Every cached view of every example as rows (V * N, F), and their labels."""
    return batches.tensors.flatten(0, 1).float(), batches.labels.repeat(batches.views)


@register_runner(Probe, augmented=True)
def run_probe(r: PhaseRun) -> list[dict[str, Any]]:
    """Fit the linear model on the features of every cached view (the centre crop and the augmented
    ones: a linear model gains from augmentation too), C chosen on validation; fold it into the output
    layer."""
    if not isinstance(r.train, TensorBatches) or not isinstance(r.val, TensorBatches):
        raise TypeError("the probe trains on cached pooled features")
    t0 = time.perf_counter()
    x, y = all_views(r.train)
    fit = fit_probe(x, y, r.phase.method.model, r.ctx.seed, r.phase.method.balanced,
                    val=(r.val.first_view(), r.val.labels))
    r.model.set_output(fit.weight, fit.bias)
    r.details.probe_C = fit.C
    val_loss, val_acc = evaluate(r.model, r.val, r.ctx.precision)
    return [{"phase": r.phase.name, "epoch": 1, "train_loss": float("nan"), "val_loss": val_loss,
             "val_acc": val_acc, "seconds": time.perf_counter() - t0}]


@register_runner(SelfTrain, augmented=True, pool=True)
def run_self_train(r: PhaseRun) -> list[dict[str, Any]]:
    """The probe, then rounds of pseudo-labels on the pool (``train.selftrain``); the round best on
    validation is folded into the output layer. A history row per round."""
    if not all(isinstance(b, TensorBatches) for b in (r.train, r.val, r.pool)):
        raise TypeError("self-train works on cached pooled features of the training, validation and pool images")
    t0 = time.perf_counter()
    x, y = all_views(r.train)
    m = r.phase.method
    fit, rounds, kept = self_train(x, y, (r.val.first_view(), r.val.labels), r.pool.first_view(), m.rounds,
                                   m.precision, r.train.views, m.balanced)
    r.model.set_output(fit.weight, fit.bias)
    r.details.probe_C, r.details.self_train_round = fit.C, kept
    r.details.pseudo_labels, r.details.pool_images = rounds[kept].pseudo_labels, len(r.pool)
    val_loss, _ = evaluate(r.model, r.val, r.ctx.precision)
    seconds = (time.perf_counter() - t0) / len(rounds)
    return [{"phase": r.phase.name, "epoch": q.round + 1, "train_loss": float("nan"),
             "val_loss": val_loss if q.round == kept else float("nan"), "val_acc": q.val_acc, "seconds": seconds}
            for q in rounds]


def with_pseudo_labels(train: TensorBatches, pool: TensorBatches, rows: np.ndarray,
                       labels: np.ndarray) -> TensorBatches:
    """The training inputs and the pool's ``rows`` labelled ``labels``, every view of each. The labelled
    images are repeated until they weigh about a quarter of the pseudo-labelled ones: five labelled
    images per class would otherwise be a few percent of the batches."""
    repeat = max(1, round(len(rows) / max(len(train), 1) / 4))
    index = torch.as_tensor(rows, device=pool.tensors.device)
    tensors = torch.cat([train.tensors] * repeat + [pool.tensors[:, index].to(train.tensors.dtype)], 1)
    y = torch.cat([train.labels.repeat(repeat), torch.as_tensor(labels).to(train.labels.device)])
    joined = TensorBatches(tensors, y, train.level, train.batch_size)
    joined.balanced = train.balanced
    return joined


@register_runner(Student, augmented=True, pool=True, pool_views=True)
def run_student(r: PhaseRun) -> list[dict[str, Any]]:
    """Rounds of a student (``strategies.Student``): the model labels the pool (calibrated on
    validation, the confidence floor and per-class shares of ``train.selftrain``); the phase's parts,
    reset to their weights at the phase's start, train on the labelled and pseudo-labelled images in
    the engine's loop; the student becomes the next round's teacher. The student with the lowest
    validation loss is kept, unless the teacher the phase started with is right on clearly more of
    the validation images they disagree on (``selftrain.clearly_better``): then it stays (round 0).

    No checkpoint is written inside the phase: a run killed here starts it again from the weights
    the phase started with (the checkpoint of the phase before), a few minutes at most on a CPU."""
    if not all(isinstance(b, TensorBatches) for b in (r.train, r.val, r.pool)):
        raise TypeError("the student trains on cached inputs of its first group")
    m, precision = r.phase.method, r.ctx.precision
    start = {k: v.detach().clone() for k, v in r.model.state_dict().items()}
    prior = np.bincount(r.train.labels.cpu().numpy(), minlength=r.model.num_classes) / len(r.train)
    ctx = replace(r.ctx, checkpoint=None, resume=None)
    first_views = TensorBatches(r.pool.first_view()[None], r.pool.labels, r.pool.level, r.pool.batch_size)
    val_y = r.val.labels.cpu()

    def val_logits() -> torch.Tensor:
        return predict_pooled(r.model, r.val, precision)[0]

    logits = val_logits()  # of the model as it stands: the teacher of the next round
    teacher_right, rows = (logits.argmax(1) == val_y).numpy(), []
    # the best student so far: (validation loss, round, pseudo-labels, weights, right on validation)
    best: tuple[float, int, int, dict[str, torch.Tensor], np.ndarray] | None = None
    for n in range(1, m.rounds + 1):
        chosen = pseudo_labels(logits, val_y, predict_pooled(r.model, first_views, precision)[0], prior, m.share,
                               m.precision)
        if chosen is None or not len(chosen[0]):
            break
        r.model.load_state_dict(start)
        phase = replace(r.phase, name=f"{r.phase.name} {n}", method=replace(m.fit, balanced=m.balanced))
        result = fit_phase(r.model, phase, with_pseudo_labels(r.train, r.pool, *chosen[:2]), r.val,
                           replace(ctx, seed=r.ctx.seed + 7919 * n))
        rows += result.history
        logits = val_logits()
        if best is None or result.best_val_loss < best[0]:
            best = (result.best_val_loss, n, len(chosen[0]),
                    {k: v.detach().clone() for k, v in r.model.state_dict().items()},
                    (logits.argmax(1) == val_y).numpy())
    kept, images = 0, 0
    if best is not None and not clearly_better(teacher_right, best[4]):
        r.model.load_state_dict(best[3])
        kept, images = best[1], best[2]
    else:
        r.model.load_state_dict(start)
    r.details.student_round, r.details.student_pseudo_labels = kept, images
    r.improved = kept > 0
    return rows


@register_runner(Surrogate, augmented=False, pool=True, pool_optional=True)
def run_surrogate(r: PhaseRun) -> list[dict[str, Any]]:
    """The body pretrained on the surrogate task over the training and pool images (from the cache when
    another run already did it) and loaded into the model; one history row, without a validation score
    (the head is not trained yet)."""
    if not isinstance(r.train, ImageBatches) or not (r.pool is None or isinstance(r.pool, ImageBatches)):
        raise TypeError("surrogate pretraining works on the images")
    t0 = time.perf_counter()
    images = r.train.indices if r.pool is None else np.concatenate([r.train.indices, r.pool.indices])
    state, info, cached = pretrained_body(r.phase.method.settings, r.train.images, images, r.train.data_config,
                                          r.ctx.precision, r.ctx.quiet)
    r.model.body.load_state_dict(state)
    r.details.surrogate_epochs, r.details.surrogate_seconds = info.epochs, round(info.seconds, 1)
    r.details.surrogate_cached, r.details.pool_images = cached, None if r.pool is None else len(r.pool)
    r.improved = True
    return [{"phase": r.phase.name, "epoch": 1, "train_loss": info.losses[-1] if info.losses else float("nan"),
             "val_loss": float("nan"), "val_acc": float("nan"), "seconds": time.perf_counter() - t0}]
