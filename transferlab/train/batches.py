"""Sources of (x, y) batches at some level of the model: images from the image cache (augmented
when training), or precomputed inputs of a level (cached features or a cached frozen prefix)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from ..data.transforms import eval_batch, train_batch


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

    @property
    def views(self) -> int:
        return self.tensors.shape[0]

    def first_view(self) -> torch.Tensor:
        """The inputs of view 0 (the centre crop) for every example, (N, ...)."""
        return self.tensors[0]
