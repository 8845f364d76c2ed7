"""An exponential moving average (EMA) of the weights a phase trains, evaluated beside the raw weights.

Averaging the weights of the last steps smooths the noise of small-batch training on a small data
set (Polyak & Juditsky 1992; the "EMA of weights" of many ImageNet recipes). Like TensorFlow's
``tf.train.ExponentialMovingAverage`` with ``num_updates``, the decay of step t is
``min(decay, (1 + t) / (10 + t))``, so the average follows the weights closely while there are few
steps (a phase of ~10 steps per epoch would otherwise stay near its starting weights for epochs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """The moving average of ``model``'s trainable parameters and floating-point buffers (BatchNorm's
    running statistics, which batch-statistics training changes too).

    ``state`` (from ``state_dict``) continues an average saved in a checkpoint.
    """

    def __init__(self, model: nn.Module, decay: float, state: dict[str, torch.Tensor] | None = None):
        self.decay = decay
        live = {n: p for n, p in model.named_parameters() if p.requires_grad}
        live |= {n: b for n, b in model.named_buffers() if b.is_floating_point()}
        self.names = list(live)
        self.live = [live[n].data for n in self.names]
        state = state or {}
        self.steps = int(state.get("_steps", torch.tensor(0)))
        self.average = [state[n].to(t.device).clone() if n in state else t.detach().clone()
                        for n, t in zip(self.names, self.live)]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (after an optimizer step)."""
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for avg, w in zip(self.average, self.live):
            avg.lerp_(w, 1 - decay)
        self.steps += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: the averaged weights and the number of steps taken."""
        return self.weights() | {"_steps": torch.tensor(self.steps)}

    def weights(self) -> dict[str, torch.Tensor]:
        """Copies of the averaged weights, by name (for ``load_state_dict(strict=False)``)."""
        return {n: a.clone() for n, a in zip(self.names, self.average)}

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own again after it."""
        with torch.no_grad():
            raw = [w.clone() for w in self.live]
            for w, a in zip(self.live, self.average):
                w.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for w, r in zip(self.live, raw):
                    w.copy_(r)
