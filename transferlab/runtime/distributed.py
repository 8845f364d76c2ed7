"""Several processes under ``torchrun``: the process group from its environment, and the few
collectives the experiments need. Without torchrun (no ``WORLD_SIZE`` in the environment) every
function here is the single-process identity, so the rest of the code needs no second path.

Backends: NCCL when the processes use CUDA GPUs, gloo on CPUs. Each process of a node uses the GPU
of its local rank.

Two kinds of waiting. Data-parallel steps keep the processes in lock step, so a collective that has
not completed after ``TRANSFERLAB_COLLECTIVE_TIMEOUT`` seconds (default 1800) means a process hangs,
and the job stops. Exchanging finished results is different: in run-parallel mode a process that has
trained its share waits for the others' runs, and in a study the others wait while rank 0 alone
works, for as long as that work takes. Those object exchanges use a second, gloo, group whose timeout
is weeks. A process that *dies* closes its connections, which fails every peer's collective at once,
so neither kind of wait outlives it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
_RESULTS_WAIT = datetime.timedelta(days=28)
_results_group: Any = None  # the gloo group of the object exchanges (see the module's docstring)


def world_size() -> int:
    """Processes in the job (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank within its node."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched() -> bool:
    """Whether torchrun started this process (also as the only process of its job)."""
    return dist.is_torchelastic_launched() or int(os.environ.get("WORLD_SIZE", "1")) > 1


def joined() -> bool:
    """Whether this process is in a process group (``init_from_env`` under torchrun)."""
    return dist.is_initialized()


def backend() -> str | None:
    """The main group's backend (nccl, gloo), None outside a process group."""
    return str(dist.get_backend()) if dist.is_initialized() else None


def is_main() -> bool:
    """Whether this process writes shared results (rank 0)."""
    return rank() == 0


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> str:
    """Join the process group that torchrun describes in the environment (once); return the device
    this process should use (``cuda:<local rank>`` when the job runs on GPUs, else ``device``).
    ``timeout_s``: of lock-step collectives, unless ``TRANSFERLAB_COLLECTIVE_TIMEOUT`` says otherwise.
    A one-process torchrun job joins a group of one: ``--parallel data`` then runs the whole
    DistributedDataParallel path (NCCL on a GPU), a smoke test of it on a machine with one GPU."""
    global _results_group
    if not launched():
        return device
    cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank())
    if not dist.is_initialized():
        timeout_s = float(os.environ.get("TRANSFERLAB_COLLECTIVE_TIMEOUT", timeout_s))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
        _results_group = dist.new_group(backend="gloo", timeout=_RESULTS_WAIT)
    return f"cuda:{local_rank()}" if cuda else device


def barrier() -> None:
    """Wait for every process (no-op alone)."""
    if dist.is_initialized():
        dist.barrier()


def gather_lists(items: Sequence[T]) -> list[T]:
    """Every process's ``items``, concatenated in rank order, on every process (picklable objects)."""
    if not dist.is_initialized():
        return list(items)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(items), group=_results_group)
    return [x for part in parts for x in part]


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_results_group)
    return box[0]


def my_share(jobs: Sequence[T]) -> list[T]:
    """The jobs this process runs: every ``world_size()``-th, starting at its rank (round robin)."""
    return list(jobs[rank()::world_size()])


def shutdown() -> None:
    """Leave the process group (at the end of a command)."""
    global _results_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _results_group = None


def shard(t: torch.Tensor) -> torch.Tensor:
    """This process's rows of a batch that every process holds whole (rows rank, rank + W, ...)."""
    return t[rank()::world_size()]


def gather_rows(rows: torch.Tensor, n: int) -> torch.Tensor:
    """The whole ``(n, ...)`` tensor of which this process holds rows rank, rank + W, ... (as ``shard``
    cuts them), on every process; ``rows`` itself alone. A lock-step collective on the main group
    (NCCL moves device tensors without a copy to the host)."""
    if not dist.is_initialized():
        return rows
    w, per = dist.get_world_size(), -(-n // dist.get_world_size())
    padded = rows.new_zeros((per, *rows.shape[1:]))  # all_gather wants equal shapes
    padded[:len(rows)] = rows
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    whole = rows.new_empty((n, *rows.shape[1:]))
    for r, part in enumerate(parts):
        whole[r::w] = part[:len(range(r, n, w))]
    return whole


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the processes (a copy; ``t`` itself alone)."""
    if not dist.is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel over the parameters that require grad now (wrap
    again when that set changes); ``model`` itself outside a torchrun job."""
    if not dist.is_initialized():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every process: after data-parallel steps in which
    each process updated them from its own rows, so that every process then evaluates (and decides
    to stop) identically."""
    if dist.is_initialized():
        for b in model.buffers():
            dist.broadcast(b, src=0)
