"""The numbers people quote for a classifier, from scikit-learn: accuracy, balanced accuracy,
macro-F1, top-k accuracy, and per class precision, recall and F1."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_recall_fscore_support, top_k_accuracy_score


def classification_scores(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Scores of class probabilities ``probs`` (N, C) against labels ``y`` (N,)."""
    labels = np.arange(len(classes))
    pred = probs.argmax(1)
    # top-5 from 10 classes on: with fewer, top-k for k near the number of classes says little (top-4 of 5
    # is nearly always right); then top-(C // 2), and none below 4 classes.
    k = min(5, len(classes) // 2)
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    scores: dict[str, Any] = {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)},
    }
    if k >= 2:
        scores[f"top{k}_accuracy"] = float(top_k_accuracy_score(y, probs, k=k, labels=labels))
    return scores


def accuracy_interval(accuracy: float, n_test: int, seeds: int = 1,
                      seed_ci95: float | None = None) -> tuple[float, float, str]:
    """A 95% interval of a test accuracy, and how it was made: with several seeds the mean ± the t interval
    over them (``seed_ci95``); with one, the Wilson score interval of ``accuracy`` on ``n_test`` images
    (what the test set alone can tell; Wilson rather than the normal approximation, which leaves [0, 1]
    near 100%)."""
    if seeds > 1 and seed_ci95 is not None:
        return max(0.0, accuracy - seed_ci95), min(1.0, accuracy + seed_ci95), f"t interval over {seeds} seeds"
    from scipy.stats import binomtest

    if n_test < 1:
        return float("nan"), float("nan"), "no test images"
    ci = binomtest(round(accuracy * n_test), n_test).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high), f"Wilson interval over {n_test} test images, one seed"
