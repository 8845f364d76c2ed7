"""Likely label errors and outliers, from out-of-fold class probabilities and pretrained features.

Label errors follow confident learning (Northcutt, Jiang & Chuang 2021, "Confident Learning:
Estimating Uncertainty in Dataset Labels"): the threshold of class j is the mean probability of j
over the images labelled j; an image whose probability reaches the threshold of another class, the
most probable such class, is counted in the confident joint off its diagonal: a likely label
error, suggested that class. Images are ranked by the normalised margin (the best other class's
probability minus the given label's), one of the paper's ranking scores.

An outlier is an image far from every class in feature space: its score is one minus its largest
cosine similarity to a class's mean direction. On flower_photos this ranks first a cathedral
ceiling, a poster, tree bark, a brass band (benchmarks/audit.py; it beat the distance to the k
nearest images and a class-conditional Gaussian there, whose in-sample fit hides what it fitted).
The cut is a robust one: the median plus ``OUTLIER_MADS`` median absolute deviations of the score
over the data set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OUTLIER_MADS = 4.0


@dataclass(frozen=True)
class LabelIssues:
    """Per image: ``margin`` (the best other class's probability minus the label's; the higher, the
    likelier a wrong label), ``suggested`` (that class) and ``flagged`` (off the confident joint's
    diagonal)."""

    margin: np.ndarray
    suggested: np.ndarray
    flagged: np.ndarray


def label_issues(probs: np.ndarray, labels: np.ndarray) -> LabelIssues:
    """Confident learning on out-of-fold probabilities ``probs`` (N, K) of images labelled ``labels``."""
    n, k = probs.shape
    thresholds = np.array([probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(k)])
    above = probs >= thresholds[None]
    confident = np.where(above.any(1), np.where(above, probs, -1.0).argmax(1), labels)
    others = probs.copy()
    others[np.arange(n), labels] = -1.0
    suggested = others.argmax(1)
    margin = others[np.arange(n), suggested] - probs[np.arange(n), labels]
    return LabelIssues(margin, suggested, confident != labels)


def outlier_scores(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How far each row of ``features`` (N, D) is from every class: one minus its largest cosine
    similarity to a class's mean direction (the mean of the class's unit feature vectors)."""
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    means = np.stack([unit[labels == c].mean(0) for c in np.unique(labels)])
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return 1.0 - (unit @ means.T).max(1)


def outlier_cut(scores: np.ndarray, mads: float = OUTLIER_MADS) -> float:
    """The score above which an image is an outlier: median + ``mads`` median absolute deviations."""
    median = float(np.median(scores))
    return median + mads * float(np.median(np.abs(scores - median)))
