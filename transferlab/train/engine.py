"""The one training loop: run a gradient Phase with early stopping, best-weights restore and checkpoints.

``fit_phase`` reads top to bottom: make the phase's parts trainable (the rest frozen, their
BatchNorm in eval mode), build a fresh optimizer, then per epoch train, validate (the raw weights,
and their moving average when the phase keeps one), keep the best weights, write a checkpoint, and
stop when the validation loss has not improved for ``patience`` epochs. Every epoch draws its
randomness (shuffling, augmentation, mixing, dropout) from a seed derived from (seed, phase, epoch),
so a run resumed from a checkpoint continues exactly as if never stopped.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.progress import console, progress_bar
from ..data.transforms import mix_batch
from ..models.heads import TransferModel
from ..runtime import distributed
from ..runtime.bnfold import FoldMemo, folded_batchnorm
from ..runtime.device import Precision
from .averaging import WeightAverage
from .batches import Batches
from .checkpoints import PhaseState
from .config import BatchNormPolicy
from .probe import balanced_weights
from .strategies import Gradient, Phase

# ---------------------------------------------------------------------------------------------
# Freezing and optimizers


def freeze(model: TransferModel, trainable: tuple[str, ...]) -> list[nn.Module]:
    """Set ``requires_grad`` so that only ``trainable`` parts learn; return the frozen modules."""
    by_name = model.parts()
    unknown = set(trainable) - set(by_name)
    if unknown:
        raise ValueError(f"phase names unknown parts {sorted(unknown)}; known: {list(by_name)}")
    frozen: list[nn.Module] = []
    # Parameters outside every part (a backbone's own ImageNet classifier) never learn either: DDP
    # would otherwise wait for their gradients.
    for p in model.parameters():
        p.requires_grad_(False)
    for name, part in by_name.items():
        on = name in trainable
        for p in part.params:
            p.requires_grad_(on)
        if not on:
            frozen += part.modules
    return frozen


def set_train_mode(model: nn.Module, frozen: list[nn.Module], frozen_bn_eval: bool = True,
                   bn: BatchNormPolicy = BatchNormPolicy.TRAIN) -> None:
    """Training mode, except frozen parts stay in eval mode (BatchNorm statistics untouched), and
    with ``bn`` FROZEN every BatchNorm uses its stored statistics."""
    if bn is BatchNormPolicy.AUTO:
        raise ValueError("the BatchNorm policy must be decided before a phase trains (train.runners)")
    model.train()
    if frozen_bn_eval:
        for m in frozen:
            m.eval()
    if bn is BatchNormPolicy.FROZEN:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _adam(params: list[dict], lr: float, wd: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=wd)


def _adamw(params: list[dict], lr: float, wd: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def _sgd(params: list[dict], lr: float, wd: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True)


OPTIMIZERS: dict[str, Callable[[list[dict], float, float], torch.optim.Optimizer]] = {
    "adam": _adam, "adamw": _adamw, "sgd": _sgd}


def make_optimizer(model: TransferModel, trainable: tuple[str, ...], method: Gradient) -> torch.optim.Optimizer:
    """A fresh optimizer over the ``trainable`` parts, with per-part rates where given."""
    by_name = model.parts()
    param_groups = [{"params": by_name[n].params, "lr": method.group_lr.get(n, method.lr)}
                    for n in trainable if by_name[n].params]
    optimizer = OPTIMIZERS[method.optimizer](param_groups, method.lr, method.weight_decay)
    for g in optimizer.param_groups:
        g["base_lr"] = g["lr"]  # what the schedule scales (kept in the optimizer's state across a resume)
    return optimizer


def schedule_rates(optimizer: torch.optim.Optimizer, method: Gradient, epoch: int) -> None:
    """Set every group's rate for ``epoch`` (0-based) from its base rate and the phase's schedule.
    A function of the epoch alone, so a resumed phase continues on the same curve."""
    factor = 1.0
    if method.schedule == "cosine":
        floor = 0.01
        factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * epoch / max(method.max_epochs, 1)))
    for g in optimizer.param_groups:
        g["lr"] = g.get("base_lr", g["lr"]) * factor


# ---------------------------------------------------------------------------------------------
# Evaluation


def folded(model: nn.Module, data: Batches, precision: Precision) -> contextlib.AbstractContextManager:
    """Eval-mode BatchNorm folded into the convolutions for passes from ``data``'s level (runtime.bnfold)."""
    @functools.cache
    def sample() -> torch.Tensor:  # built only if the pairs are searched for, then once
        return next(iter(data.batches(None)))[0][:2]

    def run() -> torch.Tensor:  # float32, no autocast: see runtime.bnfold.folded_batchnorm
        return model(precision.to_input(sample().float()), level=data.level)
    memo = getattr(model, "fold_memo", None) or FoldMemo()
    return folded_batchnorm(model, run, key=("logits", data.level), enabled=precision.fold_bn and len(data) > 0,
                            memo=memo)


@torch.no_grad()
def _logits(model: nn.Module, data: Batches, precision: Precision,
            shard: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32) and labels for every example of ``data``, in order, on the device; with
    ``shard``, only this process's rows of every batch (``distributed.shard``)."""
    model.eval()
    outs, ys = [], []
    with folded(model, data, precision):
        for x, y in data.batches(None):
            if shard:
                x, y = distributed.shard(x), distributed.shard(y)
            with precision.autocast():
                outs.append(model(precision.to_input(x), level=data.level).float())
            ys.append(y.to(precision.device))
    return torch.cat(outs), torch.cat(ys)


@torch.no_grad()
def predict_pooled(model: nn.Module, data: Batches, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and pooled features (the head's input), float32 on the CPU, for every example of ``data``."""
    model.eval()
    logits, pooled = [], []
    with folded(model, data, precision):
        for x, _ in data.batches(None):
            with precision.autocast():
                feats = model.features(precision.to_input(x), data.level)
                logits.append(model.head(feats).float().cpu())
            pooled.append(feats.float().cpu())
    return torch.cat(logits), torch.cat(pooled)


def evaluate(model: nn.Module, data: Batches, precision: Precision,
             data_parallel: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``data`` (computed on the device: one transfer at the end).
    With ``data_parallel`` each process of a torchrun job scores its share of the examples and the
    sums are added up, so every process gets the same numbers for a fraction of the work."""
    logits, y = _logits(model, data, precision, shard=data_parallel)
    sums = torch.stack([F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum().float(),
                        torch.tensor(float(len(y)), device=logits.device)]).double()
    if data_parallel:
        sums = distributed.all_sum(sums)
    loss, correct, n = sums.tolist()
    return loss / max(n, 1), correct / max(n, 1)


# ---------------------------------------------------------------------------------------------
# The loop


def epoch_seed(seed: int, phase_index: int, epoch: int) -> int:
    """The seed of one epoch's randomness: a function of (run seed, phase, epoch) only."""
    return (seed * 1_000_003 + phase_index * 10_007 + epoch) % (2**63)


@dataclass
class PhaseContext:
    """How a phase runs, beyond what it trains.

    Attributes:
        precision: device, autocast and memory format.
        seed, phase_index: fix every epoch's randomness (``epoch_seed``).
        resume: the state an interrupted run of this phase saved.
        checkpoint: called at an epoch end with the state to save, at most every ``checkpoint_seconds``.
        epoch_end: called at every epoch end with the phase's state (live logging: MLflow).
        checkpoint_seconds: training time between mid-phase checkpoints (0: every epoch). A
            checkpoint of a whole model with its optimizer is tens of MB; on a GPU an epoch of a small
            data set takes less time than writing it.
        quiet: no progress bar.
        deadline: a ``time.perf_counter()`` time after which no new epoch starts (the run's time
            budget); None for no limit.
    """

    precision: Precision
    seed: int = 0
    phase_index: int = 0
    resume: PhaseState | None = None
    checkpoint: Callable[[PhaseState], None] | None = None
    epoch_end: Callable[[PhaseState], None] | None = None
    checkpoint_seconds: float = 0.0
    quiet: bool = False
    deadline: float | None = None
    data_parallel: bool = False  # torchrun: each process trains on its share of every batch (DDP)


@dataclass
class PhaseResult:
    """What a phase did: per-epoch history, the best validation loss/accuracy, and when it stopped."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float = float("inf")
    best_val_acc: float = 0.0
    best_epoch: int = -1  # 0: the starting weights were best
    stopped_early: bool = False
    budget_cut: bool = False  # stopped by the run's time budget, not by early stopping or the epoch cap
    best_is_average: bool = False  # the weights kept are the moving average's (Gradient.ema)


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of what training can change: parameters that require grad, and all buffers."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in keep}


@dataclass
class StepRecipe:
    """What a training step does besides forward, backward and the optimizer's step.

    Attributes:
        class_weights: per-class weights of the loss (imbalanced data), or None.
        label_smoothing: of the training loss's targets.
        mix: blends the images of a batch and softens its targets (MixUp / CutMix), or None; it sees
            the whole batch, before a data-parallel process takes its share.
        after_step: called after every optimizer step (the weight average's update), or None.
    """

    class_weights: torch.Tensor | None = None
    label_smoothing: float = 0.0
    mix: Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None = None
    after_step: Callable[[], None] | None = None


# An epoch of the head on cached features is several passes over a tiny training set, each shuffled
# (and over other cached views) anew: at 5 images per class (25 images, one batch) finetune's one-epoch
# warm-up was one step, its head nearly untrained, and when the whole-model phase then never beat it
# the run ended with that head (finetune fell to 30-40% in some seeds on flower_photos; README). Head
# steps on cached features cost microseconds; phases that run the body keep one pass per epoch.
MIN_HEAD_STEPS = 8


def _epoch_batches(train: Batches, generator: torch.Generator,
                   min_steps: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches of one epoch: one whole pass over ``train``, and for a set of fewer than
    ``min_steps`` batches more passes until that many."""
    steps = 0
    while True:
        before = steps
        for batch in train.batches(generator):
            if before and steps >= min_steps:
                return
            steps += 1
            yield batch
        if steps >= min_steps or steps == before:  # enough, or no examples at all
            return


def _train_epoch(model: nn.Module, train: Batches, optimizer: torch.optim.Optimizer, precision: Precision,
                 generator: torch.Generator, recipe: StepRecipe, data_parallel: bool = False,
                 min_steps: int = 1) -> float:
    # ``model`` may be the compiled module (Precision.compiled) or its DDP wrapper: same parameters.
    """One pass over ``train``; the mean training loss. Nothing waits on the device until the end.

    With ``data_parallel`` every process draws the same batches and trains on its rows of each
    (``distributed.shard``); the loss is the shard's sum over the whole batch's size times the number
    of processes, so DDP's average of the processes' gradients is exactly the whole batch's mean
    gradient, however unevenly a batch divides."""
    total = torch.zeros((), dtype=torch.float64, device=precision.device)
    count, world = 0, distributed.world_size() if data_parallel else 1
    for x, y in _epoch_batches(train, generator, min_steps):
        n = len(y)
        if recipe.mix is not None:
            x, y = recipe.mix(x, y, generator)
        if data_parallel:
            x, y = distributed.shard(x), distributed.shard(y)
        with precision.autocast():
            logits = model(precision.to_input(x), level=train.level).float()
        loss_sum = F.cross_entropy(logits, y.to(precision.device), weight=recipe.class_weights, reduction="sum",
                                   label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        (loss_sum * (world / n)).backward()
        optimizer.step()
        if recipe.after_step is not None:
            recipe.after_step()
        total += loss_sum.detach().double()
        count += n
    if data_parallel:
        total = distributed.all_sum(total)
    return total.item() / max(count, 1)


def _record(state: PhaseState, model: nn.Module, row: dict[str, Any], average: WeightAverage | None = None) -> None:
    """Add an epoch to the history; keep the weights if the validation loss improved (the raw weights'
    or, when the row has it, the weight average's, whichever is lower)."""
    state.history.append(row)
    state.epoch = row["epoch"] - 1
    use_average = average is not None and row["ema_val_loss"] < row["val_loss"]
    loss, acc = (row["ema_val_loss"], row["ema_val_acc"]) if use_average else (row["val_loss"], row["val_acc"])
    if loss < state.best_val_loss - 1e-6:
        state.best_val_loss, state.best_val_acc, state.best_epoch = loss, acc, row["epoch"]
        state.best_state = _trainable_state(model) | (average.weights() if use_average else {})
        state.best_is_average, state.bad_epochs = use_average, 0
    else:
        state.bad_epochs += 1


def _past(ctx: PhaseContext) -> bool:
    """Whether the deadline has passed; in a data-parallel job rank 0's clock decides for all, so that
    every process runs the same epochs."""
    past = time.perf_counter() >= ctx.deadline
    return distributed.broadcast(past) if ctx.data_parallel else past


def _recipe(model: TransferModel, method: Gradient, train: Batches, ctx: PhaseContext,
            average: WeightAverage | None) -> StepRecipe:
    """The phase's loss weights, smoothing, mixing and weight-average update."""
    weights = balanced_weights(train.labels, model.num_classes).to(ctx.precision.device) if method.balanced else None
    mix = None
    if method.mixup or method.cutmix:
        def mix(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            return mix_batch(x, y, model.num_classes, g, method.mixup, method.cutmix)
    return StepRecipe(weights, method.label_smoothing, mix, average.update if average is not None else None)


def _validate(model: nn.Module, val: Batches, ctx: PhaseContext, average: WeightAverage | None) -> dict[str, float]:
    """The epoch's validation numbers: the raw weights', and the weight average's when there is one."""
    val_loss, val_acc = evaluate(model, val, ctx.precision, ctx.data_parallel)
    row = {"val_loss": val_loss, "val_acc": val_acc}
    if average is not None:
        with average.swapped_in():
            row["ema_val_loss"], row["ema_val_acc"] = evaluate(model, val, ctx.precision, ctx.data_parallel)
    return row


def _say_why_it_stopped(name: str, state: PhaseState, method: Gradient, budget_cut: bool) -> None:
    """One line when a phase ended before its epoch cap: early stopping or the time budget."""
    done = len(state.history)
    if budget_cut:
        console.print(f"  {name}: stopped by the time budget after {done} epoch(s) of {method.max_epochs}; "
                      f"the best (epoch {state.best_epoch}) is kept", highlight=False)
    elif state.bad_epochs >= method.patience and done < method.max_epochs:
        console.print(f"  {name}: stopped early after {done} epoch(s) of {method.max_epochs}: validation loss did "
                      f"not improve for {method.patience}; the best (epoch {state.best_epoch}) is kept",
                      highlight=False)


def fit_phase(model: TransferModel, phase: Phase, train: Batches, val: Batches, ctx: PhaseContext) -> PhaseResult:
    """Train ``model`` for one gradient phase; return its history with the best weights restored.

    ``train`` and ``val`` give batches at the level where the first trainable part starts.
    """
    method: Gradient = phase.method
    frozen = freeze(model, phase.trainable)
    optimizer = make_optimizer(model, phase.trainable, method)
    step_model = ctx.precision.compiled(model)
    if ctx.data_parallel:  # wrapped per phase: DDP syncs the gradients of the parameters trainable now
        step_model = distributed.data_parallel(step_model, ctx.precision.device)
    if ctx.resume is not None:
        state = ctx.resume
        optimizer.load_state_dict(state.optimizer)
    else:
        # The starting weights are a candidate too: a step that only makes validation worse
        # (common in chain-thaw) is undone rather than passed on to the next step.
        val_loss, val_acc = evaluate(model, val, ctx.precision, ctx.data_parallel)
        state = PhaseState(best_val_loss=val_loss if method.keep_start else float("inf"), best_val_acc=val_acc,
                           best_epoch=0, best_state=_trainable_state(model))
    average = WeightAverage(model, method.ema, state.average) if method.ema else None
    recipe = _recipe(model, method, train, ctx, average)
    saved = time.perf_counter()
    with folded(model, val, ctx.precision), \
            progress_bar(f"{phase.name:>14s}", method.max_epochs, ctx.quiet, status=True) as bar:
        bar.advance(state.epoch + 1)
        budget_cut = False
        for epoch in range(state.epoch + 1, method.max_epochs):
            if state.bad_epochs >= method.patience:
                break
            if ctx.deadline is not None and _past(ctx):
                budget_cut = True
                break
            t0 = time.perf_counter()
            seed_e = epoch_seed(ctx.seed, ctx.phase_index, epoch)
            torch.manual_seed(seed_e)  # dropout
            set_train_mode(model, frozen, method.frozen_bn_eval, method.bn)
            schedule_rates(optimizer, method, epoch)
            train_loss = _train_epoch(step_model, train, optimizer, ctx.precision,
                                      torch.Generator().manual_seed(seed_e),  # order and augmentation
                                      recipe, ctx.data_parallel, MIN_HEAD_STEPS if not phase.body_trainable else 1)
            if ctx.data_parallel:
                distributed.sync_buffers(model)
            row = _validate(model, val, ctx, average)
            _record(state, model, {"phase": phase.name, "epoch": epoch + 1, "train_loss": train_loss, **row,
                                   "seconds": time.perf_counter() - t0}, average)
            bar.advance(info=f"train {train_loss:.3f}  val {row['val_loss']:.3f}  acc {row['val_acc']:.1%}")
            if ctx.epoch_end is not None:
                ctx.epoch_end(state)
            if ctx.checkpoint is not None and time.perf_counter() - saved >= ctx.checkpoint_seconds:
                state.optimizer = optimizer.state_dict()
                state.average = average.state_dict() if average is not None else {}
                ctx.checkpoint(state)
                saved = time.perf_counter()
    model.load_state_dict(state.best_state, strict=False)
    if not ctx.quiet and distributed.is_main():
        _say_why_it_stopped(phase.name, state, method, budget_cut)
    return PhaseResult(state.history, state.best_val_loss, state.best_val_acc, state.best_epoch,
                       stopped_early=state.bad_epochs >= method.patience, budget_cut=budget_cut,
                       best_is_average=state.best_is_average)
