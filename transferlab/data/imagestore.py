"""Where batches are cut from the uint8 image cache: on the GPU when the cache fits comfortably in
its free memory (uploaded once), otherwise on the host (pinned for a GPU) with the next batch
gathered by a background thread while the current one trains."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..runtime.device import to_device

# Upload the cache when it takes at most this share of the device's free memory.
RESIDENT_FRACTION = 0.25


class ImageStore:
    """The decoded images (N, S, S, 3) uint8, served as tensors on ``device``."""

    def __init__(self, cache: np.ndarray, device: torch.device | str = "cpu",
                 resident_fraction: float = RESIDENT_FRACTION):
        self.cache, self.device = cache, torch.device(device)
        self.resident: torch.Tensor | None = None
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if cache.nbytes <= resident_fraction * free:
                self.resident = torch.from_numpy(np.array(cache)).to(self.device)  # a writable copy

    def gather(self, idx: np.ndarray) -> torch.Tensor:
        """Images ``idx`` (in that order) as a uint8 tensor on the device."""
        idx = np.asarray(idx)
        if self.resident is not None:
            return self.resident[to_device(torch.as_tensor(idx), self.device)]
        # Sorted reads keep memory-mapped access sequential; the requested order is restored after.
        sort = np.argsort(idx)
        return to_device(torch.from_numpy(np.ascontiguousarray(self.cache[idx[sort]][np.argsort(sort)])), self.device)

    def stream(self, chunks: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        """``gather`` of each chunk in turn; from the host, the next chunk is read ahead on a thread."""
        if self.resident is not None:
            yield from map(self.gather, chunks)
            return
        with ThreadPoolExecutor(1) as pool:
            pending = None
            for chunk in chunks:
                ahead = pool.submit(self.gather, chunk)
                if pending is not None:
                    yield pending.result()
                pending = ahead
            if pending is not None:
                yield pending.result()
