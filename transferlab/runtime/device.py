"""Device and precision choices: CUDA when present, bf16 autocast where the hardware has it."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from ..core.errors import TransferlabError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise TransferlabError(f"unknown device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TransferlabError(f"device {name!r} asked for, but this machine has no usable CUDA GPU; "
                               "use --device auto or cpu")
    return device


def bf16_native(device: torch.device) -> bool:
    """Whether bf16 math is fast on ``device``.

    On CPUs without AVX512-BF16/AMX, oneDNN emulates bf16 and autocast is several times *slower*
    than fp32 (measured here: lite0 forward 20 img/s fp32 + channels_last vs 2.5 img/s bf16), so it
    is only turned on where the hardware supports it.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


@dataclass(frozen=True)
class Precision:
    """How a model runs: the device, bf16 autocast on or off, channels_last memory format."""

    device: torch.device
    bf16: bool
    channels_last: bool = True
    fold_bn: bool = True  # eval-mode BatchNorm folded into the convolution before it (runtime.bnfold)
    compile: str = "none"  # torch.compile mode of the training step ("none": eager)

    @classmethod
    def choose(cls, device: str = "auto", fp32: bool = False, fold_bn: bool = True,
               compile: str = "none") -> Precision:
        """Fast defaults for ``device``; ``fp32=True`` turns mixed precision off."""
        dev = resolve_device(device)
        # channels_last: on a CPU oneDNN's fastest layout; on CUDA the contiguous layout runs as fast in
        # the steady state (lite0, H200: 0.28 s per epoch either way) while cuDNN's first use of each
        # channels_last bf16 convolution costs seconds of host time choosing kernels (first epoch
        # 16 s vs 0.8 s; benchmarks/epoch_profile.py --profile-cold).
        return cls(dev, bf16=not fp32 and bf16_native(dev), channels_last=dev.type != "cuda", fold_bn=fold_bn,
                   compile=compile)

    def compiled(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` for the training step: itself, or compiled with ``torch.compile`` when asked."""
        if self.compile == "none":
            return model
        return torch.compile(model, mode=None if self.compile == "default" else self.compile, dynamic=False)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the device when on; a no-op otherwise."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device, channels-last when it is an image batch."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def to_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on the device (in place), channels-last when on."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inference_batch(self, batch_size: int) -> int:
        """Batch size for passes without gradients: far larger on a GPU (throughput), the training
        batch on a CPU (where larger batches buy nothing)."""
        return max(batch_size, 256) if self.device.type == "cuda" else batch_size

    def describe(self) -> str:
        """One line for manifests and reports, e.g. ``cpu, fp32, channels_last, BN folded``."""
        return f"{self.device.type}, {'bf16 autocast' if self.bf16 else 'fp32'}" + \
            (", channels_last" if self.channels_last else "") + (", BN folded" if self.fold_bn else "") + \
            (f", compiled ({self.compile})" if self.compile != "none" else "")


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` on ``device`` without making the host wait for the device: a plain ``.to(cuda)`` from
    pageable memory synchronises the stream first, so a small copy in every step would serialise the
    host and the GPU; from pinned memory the copy is queued like a kernel."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type == "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def configure_torch(deterministic: bool = False) -> None:
    """Process-wide torch settings for training: with ``deterministic``, deterministic algorithms and a
    fixed cuBLAS workspace (slower, but a run resumed after a kill then matches an uninterrupted one
    on CUDA too). The CLI calls it in main; ``prepare`` calls it when a config asks for determinism.

    cuDNN autotuning stays off: on an H200 (torch 2.11, bf16, channels_last) it made the first
    whole-model epoch of lite0 take 56 s, against 0.27 s for every later one, and it pays again for
    every new shape (remainder batches, evaluation batches, folded and plain BatchNorm, each
    strategy), while its heuristic-free choice gained nothing measurable in the steady state
    (0.27 s vs 0.25 s per epoch; benchmarks/epoch_profile.py)."""
    if deterministic:
        # cuBLAS reads this when its first handle is made: before any CUDA work to take effect.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = deterministic
