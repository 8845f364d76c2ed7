"""What a run records: facts worth reporting (``RunDetails``) and its result (result.json, a row of
metrics.json), as typed records read back through ``core.records``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.records import RecordError, load_record, read_record
from .config import BatchNormPolicy


@dataclass
class RunDetails:
    """Facts about a run beyond its numbers, kept in its checkpoint and in result.json.

    Attributes:
        probe_C: the C the probe chose on validation.
        kept_average: phases whose kept weights are the moving average's (``--ema``).
        budget_cut: the phase the run's time budget stopped.
        budget_s: the run's time budget in seconds (given, or scratch's equal-compute one).
        body_bn: the BatchNorm policy an ``auto`` run settled on (train or frozen).
        body_bn_train_epochs: epochs of the batch-statistics attempt undone for frozen statistics.
        weights: an ensemble's members and their weights.
        pseudo_labels: self-train: the pool images labelled in the round kept (0: the probe's round).
        self_train_round: self-train: the round kept (best on validation).
        student_round: self-train: the student round kept (0: the probe's self-training, clearly
            better on validation, or no pool image above the confidence floor).
        student_pseudo_labels: self-train: the pool images the kept student trained on.
        pool_images: self-train and surrogate: the unlabelled images it could learn from.
        surrogate_epochs, surrogate_seconds: surrogate: the pretraining's epochs and training time.
        surrogate_cached: surrogate: the body came from the cache (another run pretrained it).
    """

    probe_C: float | None = None
    kept_average: list[str] = field(default_factory=list)
    budget_cut: str | None = None
    budget_s: float | None = None
    body_bn: BatchNormPolicy | None = None
    body_bn_train_epochs: int | None = None
    weights: dict[str, float] | None = None
    pseudo_labels: int | None = None
    self_train_round: int | None = None
    student_round: int | None = None
    student_pseudo_labels: int | None = None
    pool_images: int | None = None
    surrogate_epochs: int | None = None
    surrogate_seconds: float | None = None
    surrogate_cached: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The facts that are set, as plain values (JSON, a checkpoint)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or value == []:
                continue
            out[f.name] = value.value if isinstance(value, BatchNormPolicy) else value
        return out


@dataclass
class RunResult:
    """What one run of a strategy with a seed gave (result.json; a row of metrics.json)."""

    strategy: str
    seed: int
    test_acc: float
    val_acc: float
    test_loss: float
    epochs: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    details: RunDetails = field(default_factory=RunDetails)
    scores: dict[str, Any] = field(default_factory=dict)  # test: balanced accuracy, macro-F1, top-k, per class

    def check(self) -> None:
        for name in ("test_acc", "val_acc"):
            if not 0 <= getattr(self, name) <= 1:
                raise RecordError(name, f"{getattr(self, name)} is not an accuracy between 0 and 1")
        if self.seed < 0 or self.epochs < 0 or self.seconds < 0:
            raise RecordError("seed/epochs/seconds", "a count or a time is negative")

    def to_dict(self) -> dict[str, Any]:
        """result.json's content."""
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "details": self.details.to_dict()}

    def summary(self) -> dict[str, Any]:
        """Everything but the per-epoch history (a row of metrics.json)."""
        return {k: v for k, v in self.to_dict().items() if k != "history"}

    @classmethod
    def from_dict(cls, data: Any) -> RunResult:
        """A result from parsed JSON, every field checked (``core.records.RecordError``)."""
        return load_record(cls, data)

    @classmethod
    def read(cls, path: Path, fix: str = "") -> RunResult:
        """result.json read back (``DamagedFileError`` if it is not one)."""
        return read_record(cls, path, fix)
