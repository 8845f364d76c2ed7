"""Runtime: device and precision, BatchNorm folding, the allocator setting (later: distributed)."""

from .allocator import tune_allocator
from .device import Precision, bf16_native, resolve_device

__all__ = ["Precision", "bf16_native", "resolve_device", "tune_allocator"]
