"""Calibration: temperature scaling fitted on validation (Guo et al. 2017, "On calibration of modern
neural networks"), expected calibration error, and the reliability curve.

Scaling works on saved probabilities as well as on logits: ``softmax(log p / T)`` equals
``softmax(z / T)`` for ``p = softmax(z)``, since the normalising constant of ``log p`` cancels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from ..core.records import RecordError, positive_finite, read_record

BINS = 15


@dataclass
class Calibration:
    """calibration.json: the temperature fitted on validation, and the test ECE before and after."""

    temperature: float
    ece: float | None = None
    ece_calibrated: float | None = None

    def check(self) -> None:
        positive_finite("temperature", self.temperature)
        for name in ("ece", "ece_calibrated"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise RecordError(name, f"{value} is not between 0 and 1")

    @classmethod
    def read(cls, path: Path, fix: str = "") -> Calibration:
        """calibration.json read back (``DamagedFileError`` if it is not one)."""
        return read_record(cls, path, fix)


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities ``probs`` (N, C) at ``temperature`` (1 leaves them as they are)."""
    z = np.log(np.clip(probs, 1e-12, None)) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the log-loss of ``probs`` on labels ``y`` (searched in
    0.05..20 on a log scale)."""
    def nll(log_t: float) -> float:
        p = scale(probs, float(np.exp(log_t)))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())
    return float(np.exp(minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin (equal width over 0..1): mean confidence, accuracy, and the share of examples."""
    conf, correct = probs.max(1), probs.argmax(1) == y
    which = np.minimum((conf * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    mean_conf = np.bincount(which, conf, bins) / np.maximum(count, 1)
    acc = np.bincount(which, correct.astype(float), bins) / np.maximum(count, 1)
    return mean_conf, acc, count / max(len(y), 1)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """ECE: the share-weighted mean gap between confidence and accuracy over the bins."""
    conf, acc, share = reliability(probs, y, bins)
    return float((share * np.abs(conf - acc)).sum())
