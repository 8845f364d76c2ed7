"""The one training loop: run a Phase with early stopping, best-weights restore and checkpoints.

``fit_phase`` reads top to bottom: make the phase's parts trainable (the rest frozen, their
BatchNorm in eval mode), build a fresh optimizer, then per epoch train, validate, keep the best
weights, write a checkpoint, and stop when the validation loss has not improved for ``patience``
epochs. Every epoch draws its randomness (shuffling, augmentation, dropout) from a seed derived from
(seed, phase, epoch), so a run resumed from a checkpoint continues exactly as if never stopped.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import LayerGroup
from .bnfold import folded_batchnorm
from .heads import TransferModel
from .imagecache import eval_batch, train_batch
from .progress import progress_bar
from .runtime import Precision
from .strategies import HEAD, Phase

# ---------------------------------------------------------------------------------------------
# Inputs: batches of (x, y) at some level of the model.


class Batches(Protocol):
    """A source of training or evaluation batches at a fixed model level."""

    level: int

    def __len__(self) -> int: ...

    def batches(self, generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled (and augmented) when ``generator`` is given; in order and plain otherwise."""
        ...


class ImageBatches:
    """Images from the image cache: random crops + flips when training, centre crops otherwise."""

    level = 0

    def __init__(self, cache: np.ndarray, indices: np.ndarray, labels: np.ndarray, data_config: dict,
                 batch_size: int = 32, augment: bool = True):
        self.cache, self.indices = cache, np.asarray(indices)
        self.labels = torch.as_tensor(labels[self.indices])
        self.data_config, self.batch_size, self.augment = data_config, batch_size, augment

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        for start in range(0, len(self), self.batch_size):
            pos = order[start:start + self.batch_size].numpy()
            # Sorted reads keep memory-mapped access sequential; the batch order is restored below.
            sort = np.argsort(self.indices[pos])
            images = self.cache[self.indices[pos][sort]][np.argsort(sort)]
            if generator is not None and self.augment:
                x = train_batch(images, self.data_config, generator)
            else:
                x = eval_batch(images, self.data_config)
            yield x, self.labels[pos]


class TensorBatches:
    """Precomputed inputs of some level, ``views`` per example: each epoch picks one view per example."""

    def __init__(self, tensors: torch.Tensor, labels: torch.Tensor, level: int, batch_size: int = 32):
        # tensors: (views, N, ...)
        self.tensors, self.labels, self.level, self.batch_size = tensors, labels, level, batch_size

    def __len__(self) -> int:
        return self.tensors.shape[1]

    def batches(self, generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, views = len(self), self.tensors.shape[0]
        if generator is None:
            order, view = torch.arange(n), torch.zeros(n, dtype=torch.long)
        else:
            order = torch.randperm(n, generator=generator)
            view = torch.randint(views, (n,), generator=generator)
        for start in range(0, n, self.batch_size):
            pos = order[start:start + self.batch_size]
            yield self.tensors[view[pos], pos].float(), self.labels[pos]


# ---------------------------------------------------------------------------------------------
# Freezing and optimizers


def parts(model: TransferModel, groups: list[LayerGroup]) -> dict[str, LayerGroup]:
    """The trainable units by name: every backbone group, plus the head."""
    out = {g.name: g for g in groups}
    out[HEAD] = LayerGroup(HEAD, list(model.head.parameters()), [model.head])
    return out


def freeze(model: TransferModel, groups: list[LayerGroup], trainable: tuple[str, ...]) -> list[nn.Module]:
    """Set ``requires_grad`` so that only ``trainable`` parts learn; return the frozen modules."""
    by_name = parts(model, groups)
    unknown = set(trainable) - set(by_name)
    if unknown:
        raise ValueError(f"phase names unknown parts {sorted(unknown)}; known: {list(by_name)}")
    frozen: list[nn.Module] = []
    for name, part in by_name.items():
        on = name in trainable
        for p in part.params:
            p.requires_grad_(on)
        if not on:
            frozen += part.modules
    return frozen


def set_train_mode(model: nn.Module, frozen: list[nn.Module], frozen_bn_eval: bool = True,
                   bn_eval: bool = False) -> None:
    """Training mode, except frozen parts stay in eval mode (BatchNorm statistics untouched), and
    with ``bn_eval`` every BatchNorm uses its stored statistics."""
    model.train()
    if frozen_bn_eval:
        for m in frozen:
            m.eval()
    if bn_eval:
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


def make_optimizer(model: TransferModel, groups: list[LayerGroup], phase: Phase) -> torch.optim.Optimizer:
    """A fresh optimizer over the phase's trainable parts, with per-part rates where given."""
    by_name = parts(model, groups)
    param_groups = [{"params": by_name[n].params, "lr": phase.group_lr.get(n, phase.lr)}
                    for n in phase.trainable if by_name[n].params]
    return OPTIMIZERS[phase.optimizer](param_groups, phase.lr, phase.weight_decay)


# ---------------------------------------------------------------------------------------------
# Evaluation and the loop


def folded(model: TransferModel, data: Batches, precision: Precision) -> contextlib.AbstractContextManager:
    """Eval-mode BatchNorm folded into the convolutions for passes from ``data``'s level (bnfold.py)."""
    @functools.cache
    def sample() -> torch.Tensor:  # built only if the pairs are searched for, then once
        return next(iter(data.batches(None)))[0][:2]

    def run() -> torch.Tensor:
        x = sample()
        with precision.autocast():
            return model(precision.to_input(x), level=data.level)
    return folded_batchnorm(model, run, key=("logits", data.level), enabled=precision.fold_bn and len(data) > 0)


@torch.no_grad()
def predict_logits(model: TransferModel, data: Batches, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels for every example of ``data``, in order."""
    model.eval()
    outs, ys = [], []
    with folded(model, data, precision):
        for x, y in data.batches(None):
            with precision.autocast():
                outs.append(model(precision.to_input(x), level=data.level).float().cpu())
            ys.append(y)
    return torch.cat(outs), torch.cat(ys)


def evaluate(model: TransferModel, data: Batches, precision: Precision) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on ``data``."""
    logits, y = predict_logits(model, data, precision)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def epoch_seed(seed: int, phase_index: int, epoch: int) -> int:
    return (seed * 1_000_003 + phase_index * 10_007 + epoch) % (2**63)


@dataclass
class PhaseResult:
    """What a phase did: per-epoch history, the best validation loss/accuracy, and when it stopped."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_val_acc: float = 0.0
    best_epoch: int = -1  # 0: the starting weights were best
    stopped_early: bool = False


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of what training can change: parameters that require grad, and all buffers."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in keep}


def fit_phase(model: TransferModel, groups: list[LayerGroup], phase: Phase, train: Batches, val: Batches,
              precision: Precision, seed: int = 0, phase_index: int = 0,
              resume: dict[str, Any] | None = None,
              checkpoint: Callable[[dict[str, Any]], None] | None = None,
              quiet: bool = False) -> PhaseResult:
    """Train ``model`` for one phase; return its history with the best weights restored.

    Args:
        groups: the backbone's layer groups (``phase.trainable`` names them, plus ``"head"``).
        train, val: batches at the level where the first trainable part starts.
        resume: state saved by ``checkpoint`` during an earlier, interrupted run of this phase.
        checkpoint: called at every epoch end with the state to save (weights, optimizer, best).
    """
    frozen = freeze(model, groups, phase.trainable)
    optimizer = make_optimizer(model, groups, phase)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        result = PhaseResult(resume["history"], resume["best_val_loss"], resume["best_val_acc"],
                             resume["best_epoch"])
        best_state, bad_epochs, start = resume["best_state"], resume["bad_epochs"], resume["epoch"] + 1
    else:
        # The starting weights are a candidate too: a step that only makes validation worse
        # (common in chain-thaw) is undone rather than passed on to the next step.
        val_loss, val_acc = evaluate(model, val, precision)
        result, best_state, bad_epochs, start = PhaseResult([], val_loss, val_acc, 0), _trainable_state(model), 0, 0

    with folded(model, val, precision), \
            progress_bar(f"{phase.name:>14s}", phase.max_epochs, quiet, status=True) as bar:
        bar.advance(start)
        for epoch in range(start, phase.max_epochs):
            if bad_epochs >= phase.patience:
                break
            t0 = time.perf_counter()
            seed_e = epoch_seed(seed, phase_index, epoch)
            torch.manual_seed(seed_e)  # dropout
            generator = torch.Generator().manual_seed(seed_e)  # order and augmentation
            set_train_mode(model, frozen, phase.frozen_bn_eval, phase.bn_eval)
            total, count = 0.0, 0
            for x, y in train.batches(generator):
                with precision.autocast():
                    loss = F.cross_entropy(model(precision.to_input(x), level=train.level).float(),
                                           y.to(precision.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * len(y), count + len(y)
            val_loss, val_acc = evaluate(model, val, precision)
            seconds = time.perf_counter() - t0
            result.history.append({"phase": phase.name, "epoch": epoch + 1, "train_loss": total / max(count, 1),
                                   "val_loss": val_loss, "val_acc": val_acc, "seconds": seconds})
            if val_loss < result.best_val_loss - 1e-6:
                result.best_val_loss, result.best_val_acc, result.best_epoch = val_loss, val_acc, epoch + 1
                best_state, bad_epochs = _trainable_state(model), 0
            else:
                bad_epochs += 1
            bar.advance(info=f"train {total / max(count, 1):.3f}  val {val_loss:.3f}  acc {val_acc:.1%}")
            if checkpoint is not None:
                checkpoint({"optimizer": optimizer.state_dict(), "history": result.history,
                            "best_val_loss": result.best_val_loss, "best_val_acc": result.best_val_acc,
                            "best_epoch": result.best_epoch, "best_state": best_state,
                            "bad_epochs": bad_epochs, "epoch": epoch})
    result.stopped_early = bad_epochs >= phase.patience
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    return result
