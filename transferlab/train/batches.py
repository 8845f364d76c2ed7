"""Sources of (x, y) batches at some level of the model, on the model's device: images from the image
store (augmented on the device when training), or precomputed inputs of a level (cached features or
a cached frozen prefix)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from ..data.imagestore import ImageStore
from ..data.transforms import eval_batch, train_batch
from ..runtime.device import to_device


class Batches(Protocol):
    """A source of training or evaluation batches at a fixed model level."""

    level: int
    labels: torch.Tensor  # one per example, on the device
    balanced: bool  # training order from the balanced sampler (epoch_order)

    def __len__(self) -> int: ...

    def batches(self, generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled (and augmented) when ``generator`` is given; in order and plain otherwise.
        The generator lives on the CPU: a seed gives the same batches on any device."""
        ...


def epoch_order(n: int, generator: torch.Generator | None, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The examples of one epoch: in order without a generator; shuffled with one; with ``labels``
    (a balanced sampler) ``n`` draws with replacement, each class equally likely."""
    if generator is None:
        return torch.arange(n)
    if labels is None:
        return torch.randperm(n, generator=generator)
    y = labels.cpu()
    weights = (1.0 / torch.bincount(y).double())[y]
    return torch.multinomial(weights, n, replacement=True, generator=generator)


class ImageBatches:
    """Images from the image store: random crops + flips when training, centre crops otherwise.

    ``aspects`` (one per image of the store): the store holds whole pictures of these width / height
    ratios squeezed into squares, and training crops are placed in the pictures' proportions
    (``data.transforms.crop_params``); such a store serves training only, as its centre is not the
    evaluation crop."""

    level = 0
    balanced = False  # training order from the balanced sampler (epoch_order)

    def __init__(self, images: ImageStore, indices: np.ndarray, labels: np.ndarray, data_config: dict,
                 batch_size: int = 32, augment: bool = True, policy: str = "none",
                 aspects: np.ndarray | None = None):
        self.images, self.indices = images, np.asarray(indices)
        self.labels = torch.as_tensor(labels[self.indices]).to(images.device)
        self.data_config, self.batch_size, self.augment = data_config, batch_size, augment
        self.policy = policy  # data.transforms.train_batch's policy on top of crop and flip
        self.aspects = aspects

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_order(len(self), generator, self.labels if self.balanced else None)
        labels = self.labels[to_device(order, self.labels.device)]  # one copy per epoch, not per batch
        starts = range(0, len(self), self.batch_size)
        chunks = [self.indices[order[s:s + self.batch_size].numpy()] for s in starts]
        for start, chunk, images in zip(starts, chunks, self.images.stream(chunks)):
            if generator is not None and self.augment:
                aspects = None if self.aspects is None else torch.from_numpy(self.aspects[chunk])
                x = train_batch(images, self.data_config, generator, policy=self.policy, aspects=aspects)
            else:
                if self.aspects is not None:
                    raise ValueError("whole squeezed pictures serve augmented training batches only")
                x = eval_batch(images, self.data_config)
            yield x, labels[start:start + self.batch_size]


class TensorBatches:
    """Precomputed inputs of some level, ``views`` per example: each epoch picks one view per example."""

    def __init__(self, tensors: torch.Tensor, labels: torch.Tensor, level: int, batch_size: int = 32):
        # tensors: (views, N, ...), on the device the model runs on
        self.tensors, self.level, self.batch_size = tensors, level, batch_size
        self.labels = labels.to(tensors.device)
        self.balanced = False  # training order from the balanced sampler (epoch_order)

    def __len__(self) -> int:
        return self.tensors.shape[1]

    @property
    def views(self) -> int:
        return self.tensors.shape[0]

    def batches(self, generator: torch.Generator | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, device = len(self), self.tensors.device
        if generator is None:
            order, view = torch.arange(n), torch.zeros(n, dtype=torch.long)
        else:
            order = epoch_order(n, generator, self.labels if self.balanced else None)
            view = torch.randint(self.views, (n,), generator=generator)
        order, view = to_device(order, device), to_device(view, device)
        for start in range(0, n, self.batch_size):
            pos = order[start:start + self.batch_size]
            yield self.tensors[view[pos], pos].float(), self.labels[pos]

    def first_view(self) -> torch.Tensor:
        """The inputs of view 0 (the centre crop) for every example, (N, ...)."""
        return self.tensors[0]
