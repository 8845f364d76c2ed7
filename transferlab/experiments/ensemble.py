"""The ``ensemble`` of a compare: a weighted average of the class probabilities of the runs it trained,
with members and weights chosen on the validation split only.

Selection is Caruana et al.'s greedy forward selection with replacement (ICML 2004, "Ensemble
selection from libraries of models"): start from the single best run, then repeatedly add (again)
the run that most lowers the validation log-loss of the average, for a fixed number of rounds, and
keep the best prefix. A run added k times has weight k / rounds. Because the weights are fitted on
validation, the ensemble's validation accuracy would flatter it when the winner is chosen; the
validation accuracy it reports is cross-fitted instead (weights chosen on one half of the validation
split, scored on the other, both ways), and the test split is scored once with the weights chosen on
all of validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedKFold

from ..core.errors import DamagedFileError
from ..core.layout import RunFolder
from ..train.run import load_probabilities
from .experiment import ENSEMBLE

__all__ = ["ENSEMBLE", "fit_ensemble", "select_weights"]

ROUNDS = 20


def _log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())


def select_weights(probs: dict[str, np.ndarray], y: np.ndarray, rounds: int = ROUNDS) -> dict[str, float]:
    """Weights (summing to 1) of the members ``probs`` (name -> (N, C) probabilities on the same N
    examples with labels ``y``) by greedy forward selection with replacement on log-loss."""
    names = sorted(probs)
    counts = dict.fromkeys(names, 0)
    total = np.zeros_like(probs[names[0]], dtype=np.float64)
    best_loss, best_counts = np.inf, dict(counts)
    for k in range(1, rounds + 1):
        pick = min(names, key=lambda n: (_log_loss((total + probs[n]) / k, y), n))
        counts[pick] += 1
        total += probs[pick]
        loss = _log_loss(total / k, y)
        if loss < best_loss - 1e-12:
            best_loss, best_counts = loss, dict(counts)
    used = sum(best_counts.values())
    return {n: c / used for n, c in best_counts.items() if c}


def combine(probs: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """The weighted average of the members' probabilities."""
    return sum(w * probs[n] for n, w in weights.items())


def cross_fitted_accuracy(probs: dict[str, np.ndarray], y: np.ndarray, seed: int = 0) -> float:
    """Validation accuracy of the selection procedure itself: weights chosen on one half of the
    examples, accuracy measured on the other, both ways, averaged (falls back to 0 folds = plain
    accuracy when a class has a single example)."""
    if np.bincount(y).min() < 2:
        return float((combine(probs, select_weights(probs, y)).argmax(1) == y).mean())
    correct = 0
    for fit, score in StratifiedKFold(2, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        w = select_weights({n: p[fit] for n, p in probs.items()}, y[fit])
        correct += int((combine({n: p[score] for n, p in probs.items()}, w).argmax(1) == y[score]).sum())
    return correct / len(y)


@dataclass
class EnsembleFit:
    """The chosen weights, and the accuracies and loss to report."""

    weights: dict[str, float]
    val_acc: float  # cross-fitted
    test_acc: float
    test_loss: float
    test_probs: np.ndarray
    val_probs: np.ndarray


def fit_ensemble(folders: dict[str, Path], y_val: np.ndarray, y_test: np.ndarray, seed: int = 0) -> EnsembleFit | None:
    """The ensemble of the runs in ``folders`` (name -> run folder with val_probs.npy/test_probs.npy);
    None when fewer than two runs have their probabilities saved."""
    have = {n: RunFolder(f) for n, f in folders.items()
            if RunFolder(f).val_probs.is_file() and RunFolder(f).test_probs.is_file()}
    if len(have) < 2:
        return None
    val = {n: load_probabilities(f.val_probs, len(y_val), None).astype(np.float64) for n, f in have.items()}
    test = {n: load_probabilities(f.test_probs, len(y_test), None).astype(np.float64) for n, f in have.items()}
    if len({p.shape[1] for p in (*val.values(), *test.values())}) > 1:
        raise DamagedFileError(next(iter(have.values())).val_probs, "the runs' probabilities have different numbers "
                               "of classes")
    weights = select_weights(val, y_val)
    test_probs, val_probs = combine(test, weights), combine(val, weights)
    return EnsembleFit(weights, cross_fitted_accuracy(val, y_val, seed), float((test_probs.argmax(1) == y_test).mean()),
                       _log_loss(test_probs, y_test), test_probs, val_probs)
