"""Unknown inputs: a score that says how unlike the training images an input is, and the threshold
above which ``predict`` answers "unknown".

The score adds two signals, each standardised on the validation images (mean 0, spread 1): one minus
the calibrated confidence (the largest class probability after temperature scaling), and the
distance to the training images in the model's own feature space (one minus the cosine similarity
to the nearest training image, the k-nearest-neighbour score of Sun et al. 2022 with k = 1). Measured
on flower_photos with the probe (benchmarks/unknown.py, README): for a held-out flower class the
confidence alone averaged AUROC 0.72 over the five choices, the distance alone 0.76, the sum 0.79
(the best single signal changes from class to class); against photos of ants and bees 0.85, 0.90
and 0.91. Those figures are the plain cosine; with the power below, the sum averaged 0.821 against
0.799 on the same CPU, ants and bees 0.913 against 0.914.

Before the cosine, each feature is raised to ``FEATURE_POWER`` keeping its sign (power
normalisation, Perronnin et al. 2010). Pooled features of a ReLU network are sparse and heavy-tailed
(on flower_photos 48% of lite0's are 0): the cosine of the raw features follows a few large ones,
the powered ones weigh which features are active. On the pretrained features
(benchmarks/unknown_scores.py) it lifted the held-out-class AUROC of the sum from 0.806 to 0.829 on
validation (0.795 to 0.816 on test) with lite0 and from 0.835 to 0.850 (0.811 to 0.821) with lite2;
0.25 and 0.35 did as well, 0.5 less, 0.1 worse; ants and bees stayed level (0.913 / 0.911, 0.921 / 0.928).

The threshold is chosen on validation: the largest score at which the accuracy among the accepted
validation images still reaches the target precision (``--reject-target``, 95%), accepting at most
``MAX_ACCEPTED`` (95%) of the validation images. Without that cap, a model right on every validation
image (hymenoptera's 49, an easy task) accepts every score up to validation's single strangest image:
the probe on hymenoptera then called 98% of flower photos ants or bees, and at the cap 43%, refusing
5% of its own test images (README, "Unknown inputs"). The cap is the usual operating point of
unknown-input detection (95% of the known inputs pass). A target of 0 never refuses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

DEFAULT_TARGET = 0.95
MAX_TRAIN_FEATURES = 20000  # training images kept for the distance (a random subset beyond)
FEATURE_POWER = 0.3  # the distance's power normalisation (see above); runs saved before it used 1
MAX_ACCEPTED = 0.95  # the largest share of the validation images the threshold accepts (see above)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x.float() / x.float().norm(dim=1, keepdim=True).clamp_min(1e-12)


def distance_rows(x: torch.Tensor, power: float = FEATURE_POWER) -> torch.Tensor:
    """The rows the distance compares: each feature of ``x`` raised to ``power`` keeping its sign, then
    the rows scaled to unit length."""
    x = x.float()
    return unit_rows(x if power == 1.0 else x.sign() * x.abs().pow(power))


def nearest_distance(train: torch.Tensor, x: torch.Tensor, power: float = FEATURE_POWER,
                     batch: int = 1024) -> np.ndarray:
    """One minus the cosine similarity of each row of ``x``, as ``distance_rows`` makes it with ``power``,
    to its nearest row of ``train`` (rows made the same way)."""
    out = [1.0 - (distance_rows(x[s:s + batch], power) @ train.float().T).max(1).values
           for s in range(0, len(x), batch)]
    return torch.cat(out).cpu().numpy() if out else np.zeros(0)


@dataclass
class UnknownRule:
    """How to score an input and where "unknown" begins; the validation scores are kept so that
    another target precision can be applied later without the data."""

    target: float
    threshold: float
    confidence_mean: float
    confidence_std: float
    distance_mean: float | None  # None: no features (an ensemble): the confidence alone
    distance_std: float | None
    val_scores: list[float]
    val_correct: list[bool]
    reachable: bool  # whether some threshold reaches the target on validation
    feature_power: float = 1.0  # distance_rows' power of the saved training features (1: runs saved before it)

    def score(self, probs: np.ndarray, distance: np.ndarray | None) -> np.ndarray:
        """The unknown-input score of calibrated ``probs`` (N, K) and ``distance`` (N,); higher: stranger."""
        s = ((1.0 - probs.max(1)) - self.confidence_mean) / self.confidence_std
        if self.distance_mean is not None and distance is not None:
            s = s + (distance - self.distance_mean) / self.distance_std
        return s

    def with_target(self, target: float) -> UnknownRule:
        """The same rule with the threshold chosen for another target precision."""
        threshold, reachable = choose_threshold(np.array(self.val_scores), np.array(self.val_correct), target)
        return UnknownRule(**{**asdict(self), "target": target, "threshold": threshold, "reachable": reachable})

    def to_dict(self) -> dict:
        return asdict(self)


def choose_threshold(scores: np.ndarray, correct: np.ndarray, target: float) -> tuple[float, bool]:
    """The largest score whose accepted images (score <= it) are right at least ``target`` of the time
    and are at most ``MAX_ACCEPTED`` of the images. When no threshold gets there, the one with the best
    precision among those within the cap (and False); a ``target`` of 0 or less accepts everything."""
    if target <= 0:
        return float("inf"), True
    order = np.argsort(scores, kind="stable")
    s, c = scores[order], correct[order].astype(float)
    accepted = np.arange(1, len(c) + 1)
    precision = np.cumsum(c) / accepted
    # Only cut between distinct scores: images with equal scores are accepted or refused together.
    last = np.r_[s[1:] != s[:-1], True]
    within = accepted <= MAX_ACCEPTED * len(c)
    if not (last & within).any():  # too few distinct scores to refuse any: the cap cannot apply
        within[:] = True
    cuts = last & within
    ok = np.flatnonzero((precision >= target) & cuts)
    if len(ok):
        return float(s[ok[-1]]), True
    best = int(np.argmax(np.where(cuts, precision, -1)))
    return float(s[best]), False


def fit_rule(val_probs: np.ndarray, val_y: np.ndarray, val_distance: np.ndarray | None,
             target: float = DEFAULT_TARGET, feature_power: float = FEATURE_POWER) -> UnknownRule:
    """The rule standardised and thresholded on the validation images (calibrated ``val_probs``;
    ``val_distance`` measured on features powered by ``feature_power``)."""
    conf = 1.0 - val_probs.max(1)
    spread = lambda v: float(max(v.std(), 1e-6))  # noqa: E731
    rule = UnknownRule(target, 0.0, float(conf.mean()), spread(conf),
                       None if val_distance is None else float(val_distance.mean()),
                       None if val_distance is None else spread(val_distance), [], [], True, feature_power)
    scores = rule.score(val_probs, val_distance)
    rule.val_scores = [round(float(x), 5) for x in scores]
    rule.val_correct = [bool(x) for x in val_probs.argmax(1) == val_y]
    return rule.with_target(target)


def risk_coverage(scores: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage (share accepted) and accuracy among the accepted, for every threshold, most sure first."""
    order = np.argsort(scores, kind="stable")
    c = correct[order].astype(float)
    n = np.arange(1, len(c) + 1)
    return n / len(c), np.cumsum(c) / n
