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
