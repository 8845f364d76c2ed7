"""Checkpoint state as typed dataclasses, written atomically after every epoch.

A run's checkpoint is a ``RunState`` (the model, which phase comes next, what happened so far)
holding the ``PhaseState`` of the phase in progress (optimizer, best weights, early-stopping
counter). They are stored as plain dicts of tensors and numbers so that ``torch.load`` can read
them with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.errors import DamagedFileError
from ..core.io import atomic_path


@dataclass
class PhaseState:
    """Where a phase is: its history, the best weights so far and the early-stopping counter."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_val_acc: float = 0.0
    best_epoch: int = -1  # 0: the starting weights were best
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    bad_epochs: int = 0
    epoch: int = -1  # the last finished epoch (0-based)
    optimizer: dict[str, Any] = field(default_factory=dict)
    average: dict[str, torch.Tensor] = field(default_factory=dict)  # the weight average (Gradient.ema)
    best_is_average: bool = False  # the best weights are the average's

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhaseState:
        return cls(**d)


@dataclass
class RunState:
    """Where a run is: the model's weights, the next phase, and what the finished phases did."""

    model: dict[str, torch.Tensor]
    phase_index: int = 0  # the phase to run (or continue) next
    phase_state: PhaseState | None = None  # the phase in progress, if it has finished an epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    body_changed: bool = False  # whether any backbone group has trained (the feature store is stale)
    details: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["phase_state"] = self.phase_state.to_dict() if self.phase_state else None
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        phase = d.get("phase_state")
        return cls(**{**d, "phase_state": PhaseState.from_dict(phase) if phase else None})


def save_checkpoint(state: RunState, path: Path) -> None:
    """``torch.save`` atomically: a kill never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state.to_dict(), tmp)


def load_checkpoint(path: Path) -> RunState | None:
    """The saved state, or None if there is no checkpoint.

    Raises:
        DamagedFileError: the file cannot be read back (cut short by a full disk, copied in part).
    """
    if not path.is_file():
        return None
    try:
        return RunState.from_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as exc:
        raise DamagedFileError(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
