"""The verdict of a comparison: is the winner's lead over the runner-up real, or within noise?

The winner is chosen on validation (``results.winner``); the verdict then looks at the test set the
choice never saw. With one seed, the paired difference in accuracy between winner and runner-up on
the same test images, with a bootstrap 95% interval over those images (each resample keeps the
pairing, so the images both get right or both get wrong add no noise). With several seeds, the
mean of the per-seed differences (seed k against seed k) with a Student-t 95% interval. A lead is
called real when its interval excludes zero.

It also says when validation cannot rank the strategies: when it is small (one image is more than
``SMALL_VALIDATION`` of its accuracy) or saturated (winner and runner-up both at 100%), in which
case the tie went to the cheaper strategy (``results.winner`` breaks ties by training time).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

BOOTSTRAP = 2000
SMALL_VALIDATION = 0.01  # one validation image above 1% of the accuracy: it cannot tell close strategies apart


@dataclass(frozen=True)
class Verdict:
    """Winner against runner-up on test: ``difference`` (accuracy, winner minus runner-up) and its 95%
    interval ``low``..``high`` by ``method``; ``real`` when the interval excludes zero."""

    winner: str
    runner_up: str
    difference: float
    low: float
    high: float
    method: str
    real: bool
    sentence: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def paired_interval(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired test images (0/1 correctness) and its bootstrap 95% interval."""
    diff = a.astype(float) - b.astype(float)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (BOOTSTRAP, len(diff)))].mean(1)
    return float(diff.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def seed_interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean of per-seed differences and its Student-t 95% interval."""
    from .results import mean_ci

    m, half = mean_ci(diffs)
    return m, m - half, m + half


def _ranked(summary: dict[str, dict[str, float]], winner: str) -> str | None:
    """The runner-up: the best of the others by the winner's own key (validation, then time)."""
    others = [s for s in summary if s != winner]
    return max(others, key=lambda s: (round(summary[s]["val_acc"], 6), -summary[s]["seconds"])) if others else None


def _validation_notes(summary: dict[str, dict[str, float]], winner: str, runner_up: str, val_images: int) -> list[str]:
    notes = []
    w, r = summary[winner], summary[runner_up]
    if val_images and 1 / val_images > SMALL_VALIDATION:
        notes.append(f"validation has {val_images} images, so one image is {1 / val_images:.1%} of its accuracy: "
                     "too few to rank strategies that differ by a few images")
    if round(w["val_acc"], 6) == round(r["val_acc"], 6):
        full = w["val_acc"] >= 1.0
        why = "saturated: both score 100%" if full else f"tied at {w['val_acc']:.1%}"
        notes.append(f"validation is {why} for {winner} and {runner_up}, so it cannot rank them: the cheaper, "
                     f"{winner} ({w['seconds']:.1f} s against {r['seconds']:.1f} s), wins the tie")
    return notes


def verdict(summary: dict[str, dict[str, float]], winner: str, correct: dict[str, dict[int, np.ndarray]],
            val_images: int) -> Verdict | None:
    """The verdict on ``winner`` against the runner-up; ``correct[strategy][seed]``: 0/1 per test image
    (the same images, in the same order, for every run). None with fewer than two strategies or
    without the runs' test predictions."""
    runner_up = _ranked(summary, winner)
    if runner_up is None or not correct.get(winner) or not correct.get(runner_up):
        return None
    seeds = sorted(set(correct[winner]) & set(correct[runner_up]))
    if not seeds:
        return None
    if len(seeds) > 1:
        diffs = [float(correct[winner][s].mean() - correct[runner_up][s].mean()) for s in seeds]
        diff, low, high = seed_interval(diffs)
        method = f"mean of {len(seeds)} paired seeds, Student-t 95% interval"
    else:
        a, b = correct[winner][seeds[0]], correct[runner_up][seeds[0]]
        diff, low, high = paired_interval(a, b)
        method = f"paired bootstrap over the {len(a)} test images, 95% interval"
    real = low > 0 or high < 0
    span = f"{diff * 100:+.1f} points on test (95% interval {low * 100:+.1f} to {high * 100:+.1f})"
    if real and diff > 0:
        sentence = f"{winner} beats {runner_up} by {span}: the lead is beyond noise."
    elif real:
        sentence = (f"{winner} won on validation, but on test {runner_up} is ahead: {span}; validation chose "
                    "the worse of the two.")
    else:
        cheaper = min((winner, runner_up), key=lambda s: summary[s]["seconds"])
        sentence = (f"{winner} against {runner_up}: {span}, within noise: the data cannot tell them apart, "
                    f"so the cheaper, {cheaper} ({summary[cheaper]['seconds']:.1f} s of training), is as good a "
                    "choice.")
    return Verdict(winner, runner_up, diff, low, high, method, real, sentence,
                   _validation_notes(summary, winner, runner_up, val_images))
