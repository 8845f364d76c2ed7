"""Likely label errors and outliers, from out-of-fold class probabilities and pretrained features.

Label errors follow confident learning (Northcutt, Jiang & Chuang 2021, "Confident Learning:
Estimating Uncertainty in Dataset Labels"): the threshold of class j is the mean probability of j
over the images labelled j; an image whose probability reaches the threshold of another class, the
most probable such class, is counted in the confident joint off its diagonal: a likely label
error, suggested that class. Images are ranked by the normalised margin (the best other class's
probability minus the given label's), one of the paper's ranking scores. ``pruned_label_issues``
repeats it on the images left after each round. The audit feeds it the mean of a probe's out-of-fold
probabilities and ``neighbour_probabilities``.

An outlier is an image far from every class in feature space: its score is one minus its largest
cosine similarity to a class's mean direction. On flower_photos this ranks first a cathedral
ceiling, a poster, tree bark, a brass band (benchmarks/audit.py; it beat the distance to the k
nearest images and a class-conditional Gaussian there, whose in-sample fit hides what it fitted).
The cut is a robust one: the median plus ``OUTLIER_MADS`` median absolute deviations of the score
over the data set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..core.arrays import unit_rows

OUTLIER_MADS = 4.0
PRUNING_ROUNDS = 3
NEIGHBOURS = 10  # out-of-fold neighbour votes: this many nearest training-fold images
NEIGHBOUR_SHARE = 0.5  # their weight in the probabilities confident learning reads (the rest: the probe's)
BLOCK_ROWS = 1024  # held-out rows whose similarities are computed at once: memory stays bounded on large data


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


def pruned_label_issues(out_of_fold: Callable[[np.ndarray], np.ndarray], labels: np.ndarray,
                        rounds: int = PRUNING_ROUNDS) -> tuple[LabelIssues, np.ndarray]:
    """Confident learning repeated on what is left, and the out-of-fold probabilities it used.

    ``out_of_fold(rows)`` gives (len(rows), K) out-of-fold probabilities of the images ``rows`` (folds
    fitted on those images only). The images a round flags are left out of the next round's folds,
    whose classes then learn from cleaner labels and reveal errors the first round's noisy classes
    hid. This is iterative pruning, as in INCV (Chen et al. 2019, "Understanding and Utilizing Deep
    Neural Networks Trained with Noisy Labels"). On flower_photos with 10% of the training labels
    flipped (benchmarks/audit.py), three rounds found 21, 24 and 27 of the 30 flips in three draws,
    against 19, 19 and 24 for one round, with 11, 6 and 9 clean training images flagged (7, 3 and 4
    for one round). The rounds stop early when one flags nothing new. An image's margin, suggestion and
    probabilities come from the last round that included it (for a flagged image, the round that
    flagged it).
    """
    n = len(labels)
    keep = np.arange(n)
    margin, suggested, flagged = np.zeros(n), np.zeros(n, np.int64), np.zeros(n, bool)
    probs: np.ndarray | None = None
    for _ in range(rounds):
        p = out_of_fold(keep)
        probs = np.zeros((n, p.shape[1])) if probs is None else probs
        found = label_issues(p, labels[keep])
        margin[keep], suggested[keep], probs[keep] = found.margin, found.suggested, p
        flagged[keep[found.flagged]] = True
        left = keep[~found.flagged]
        # Nothing new, or a class would be left with fewer than two images (too few for its folds).
        counts = np.bincount(labels[left], minlength=labels.max() + 1)[np.unique(labels)]
        if not found.flagged.any() or counts.min() < 2:
            break
        keep = left
    return LabelIssues(margin, suggested, flagged), probs


def neighbour_probabilities(features: np.ndarray, labels: np.ndarray,
                            folds: list[tuple[np.ndarray, np.ndarray]], neighbours: int = NEIGHBOURS) -> np.ndarray:
    """Out-of-fold class probabilities (N, K) by vote: for each image of a fold's held-out part, the
    share of each class among its ``neighbours`` nearest images (cosine of ``features`` (N, F)) of that
    fold's training part.

    Mixed half and half with the probe's out-of-fold probabilities, this sharpened the ranking of
    confident learning on flower_photos with 10% of the training labels flipped (benchmarks/audit.py,
    three draws): flipped images among the top N rose from 72.2% to 87.8% (83.3 / 86.7 / 93.3% against
    73.3 / 73.3 / 70.0%), with 5 or 20 neighbours and a share of 0.3 or 0.7 all between 84% and 88%;
    the flagged set kept 69 of the 90 flips against 72, and 7 clean images against 27. A wrong
    label's image sits among images of its true class, which the vote reads directly, while the
    probe, fitted on the noisy labels of its fold, bends towards them.
    """
    unit = unit_rows(features.astype(np.float32))
    k = int(labels.max()) + 1
    probs = np.zeros((len(labels), k))
    for train, held in folds:
        m = min(neighbours, len(train))
        for s in range(0, len(held), BLOCK_ROWS):
            rows = held[s:s + BLOCK_ROWS]
            near = np.argpartition(-(unit[rows] @ unit[train].T), m - 1, axis=1)[:, :m]
            votes = labels[train][near]
            probs[rows] = np.stack([(votes == c).mean(1) for c in range(k)], 1)
    return probs


def outlier_scores(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """How far each row of ``features`` (N, D) is from every class: one minus its largest cosine
    similarity to a class's mean direction (the mean of the class's unit feature vectors)."""
    unit = unit_rows(features)
    means = unit_rows(np.stack([unit[labels == c].mean(0) for c in np.unique(labels)]))
    return 1.0 - (unit @ means.T).max(1)


def outlier_cut(scores: np.ndarray, mads: float = OUTLIER_MADS) -> float:
    """The score above which an image is an outlier: median + ``mads`` median absolute deviations."""
    median = float(np.median(scores))
    return median + mads * float(np.median(np.abs(scores - median)))
