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
from ..core.records import RecordError, load_record
from .records import RunDetails


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
    def from_dict(cls, d: Any) -> PhaseState:
        """The state from ``to_dict``'s output, its types checked (``RecordError``)."""
        _check_mapping(d, "phase_state", {f.name for f in dataclasses.fields(cls)})
        _check_tensors(d.get("best_state", {}), "phase_state.best_state")
        _check_tensors(d.get("average", {}), "phase_state.average")
        for key, kind in (("best_val_loss", float), ("best_val_acc", float), ("best_epoch", int), ("bad_epochs", int),
                          ("epoch", int), ("history", list), ("optimizer", dict), ("best_is_average", bool)):
            if key in d and not isinstance(d[key], kind if kind is not float else (int, float)):
                raise RecordError(f"phase_state.{key}", f"{type(d[key]).__name__} is not a {kind.__name__}")
        return cls(**d)


@dataclass
class RunState:
    """Where a run is: the model's weights, the next phase, and what the finished phases did."""

    model: dict[str, torch.Tensor]
    phase_index: int = 0  # the phase to run (or continue) next
    phase_state: PhaseState | None = None  # the phase in progress, if it has finished an epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    body_changed: bool = False  # whether any backbone group has trained (the feature store is stale)
    details: RunDetails = field(default_factory=RunDetails)
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["phase_state"] = self.phase_state.to_dict() if self.phase_state else None
        out["details"] = self.details.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Any) -> RunState:
        """The state from ``to_dict``'s output, its types checked (``RecordError``)."""
        _check_mapping(d, "", {f.name for f in dataclasses.fields(cls)})
        if "model" not in d:
            raise RecordError("model", "missing")
        _check_tensors(d["model"], "model")
        for key, kind in (("phase_index", int), ("history", list), ("body_changed", bool), ("elapsed", (int, float))):
            if key in d and (not isinstance(d[key], kind) or isinstance(d[key], bool) and kind is not bool):
                raise RecordError(key, f"{type(d[key]).__name__} is not the expected type")
        if d.get("phase_index", 0) < 0 or not all(isinstance(h, dict) for h in d.get("history", [])):
            raise RecordError("phase_index/history", "out of range or not a list of epochs")
        phase = d.get("phase_state")
        return cls(**{**d, "phase_state": PhaseState.from_dict(phase) if phase else None,
                      "details": load_record(RunDetails, d.get("details") or {}, "details")})


def _check_mapping(d: Any, key: str, known: set[str]) -> None:
    if not isinstance(d, dict):
        raise RecordError(key, f"{type(d).__name__} is not a mapping")
    unknown = set(d) - known
    if unknown:
        raise RecordError(f"{key}.{sorted(map(str, unknown))[0]}" if key else str(sorted(map(str, unknown))[0]),
                          "unknown key")


def _check_tensors(d: Any, key: str) -> None:
    if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items()):
        raise RecordError(key, "not a mapping of names to tensors")


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
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError,
            pickle.UnpicklingError) as exc:
        raise DamagedFileError(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
