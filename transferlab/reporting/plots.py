"""The plots of a comparison report (matplotlib's object-oriented API: no pyplot, no global backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..core.io import atomic_path
from .curves import SCRATCH, curve


def save_figure(fig: Figure, path: Path) -> Path:
    """Lay out and write ``fig`` as a PNG (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path


def plot_accuracy(summary: dict[str, dict[str, float]], path: Path, winner: str | None = None) -> Path:
    """Test accuracy (mean, with its CI when there are several seeds) and time per strategy, side by
    side; the winner in a darker colour."""
    names = list(summary)
    fig = Figure(figsize=(10, 3.6))
    a, b = fig.subplots(1, 2)
    acc = [summary[n]["test_acc"] * 100 for n in names]
    seeds = max(int(summary[n].get("seeds", 1)) for n in names)
    ci = [summary[n]["test_acc_ci95"] * 100 for n in names] if seeds > 1 else None  # no zero-width caps
    colors = ["#0b4f7c" if n == winner else "#999999" if n == SCRATCH else "#7fb3d9" for n in names]
    a.bar(names, acc, yerr=ci, capsize=4 if ci else 0, color=colors)
    for i, v in enumerate(acc):
        a.text(i, v + 1, f"{v:.1f}" + (" (winner)" if names[i] == winner else ""), ha="center", fontsize=9)
    a.set_ylabel("test accuracy (%)")
    a.set_ylim(0, 105)
    a.set_title("accuracy per strategy" + (f" (mean ± 95% CI over {seeds} seeds)" if ci else " (one seed)"))
    secs = [summary[n]["seconds"] for n in names]
    b.bar(names, secs, color=colors)
    b.set_ylabel("wall seconds per run")
    b.set_title("time per strategy")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=20)
    return save_figure(fig, path)


MARKERS, LINESTYLES = "os^Dv*", ["-", "--", "-.", ":"]


def plot_curves(history: list[dict[str, Any]], strategies: list[str], path: Path) -> Path:
    """Validation accuracy against epochs and against seconds; phase starts of step-wise strategies."""
    fig = Figure(figsize=(11, 4))
    a, b = fig.subplots(1, 2)
    for name in strategies:
        c = curve(history, name)
        if len(c["epoch"]) < 2:
            continue  # single-step strategies (probe) have no curve
        # Each strategy its own marker and dash: curves that coincide (features and chain-thaw's head phase
        # train the same head) stay visible on top of each other.
        k = strategies.index(name)
        style = {"color": "#777777", "linestyle": "--"} if name == SCRATCH else \
            {"linestyle": LINESTYLES[k % len(LINESTYLES)], "marker": MARKERS[k % len(MARKERS)], "markersize": 4,
             "linewidth": 2.2 - 0.3 * (k % 3)}
        (line,) = a.plot(c["epoch"], c["val_acc"] * 100, label=name, **{"marker": ".", **style})
        b.plot(c["seconds"], c["val_acc"] * 100, label=name, **{"marker": ".", **style})
        if len(c["phase_starts"]) > 1:  # step-wise (chain-thaw, gradual): mark where each step begins
            for s in c["phase_starts"]:
                a.axvline(s + 0.5, color=line.get_color(), alpha=0.25, linewidth=1)
    a.set_xlabel("epoch (all phases)")
    b.set_xlabel("wall-clock seconds")
    for ax in (a, b):
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # nothing to label when no strategy has a curve
            ax.legend(fontsize=8)
    a.set_title("learning curves (thin lines: steps of step-wise strategies)")
    b.set_title("accuracy against time")
    return save_figure(fig, path)


def plot_confusion(cm: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    """The confusion matrix with counts, as a PNG."""
    return save_figure(confusion_figure(cm, classes, title), path)


def confusion_figure(cm: np.ndarray, classes: list[str], title: str) -> Figure:
    """The confusion matrix with counts."""
    n = len(classes)
    fig = Figure(figsize=(min(2 + 0.45 * n, 10), min(1.6 + 0.45 * n, 9)))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_misclassified(images: list[np.ndarray], captions: list[str], path: Path) -> Path | None:
    """A grid of images with captions (true -> predicted)."""
    if not images:
        return None
    cols = min(8, len(images))
    rows = (len(images) + cols - 1) // cols
    fig = Figure(figsize=(1.6 * cols, 1.9 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, cap in zip(axes.ravel(), images, captions):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(cap, fontsize=9)
    return save_figure(fig, path)


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], title: str, path: Path,
                     total: int = 0) -> Path:
    """Reliability diagram: accuracy against confidence per bin, one line per curve (name -> (mean
    confidence, accuracy, share) per bin, as ``train.calibration.reliability`` gives), the diagonal
    being perfect calibration; with ``total`` images, the last curve's points show their counts."""
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="perfect")
    for k, (name, (conf, acc, share)) in enumerate(curves.items()):
        keep = share > 0
        (line,) = ax.plot(conf[keep], acc[keep], marker="o", label=name)
        if k == len(curves) - 1 and total:  # how many images each point stands for
            for x, yv, n in zip(conf[keep], acc[keep], np.round(share[keep] * total).astype(int)):
                ax.annotate(str(n), (x, yv), textcoords="offset points", xytext=(4, -10), fontsize=7,
                            color=line.get_color())
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_risk_coverage(coverage: np.ndarray, accuracy: np.ndarray, chosen: tuple[float, float], target: float,
                       title: str, path: Path) -> Path:
    """Accuracy among the accepted images against the share accepted, most sure first, with the
    threshold's point and the target precision."""
    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.subplots()
    ax.plot(coverage * 100, accuracy * 100, color="#2b7bba")
    ax.axhline(target * 100, color="#999999", linestyle="--", linewidth=1, label=f"target {target:.0%}")
    ax.plot([chosen[0] * 100], [chosen[1] * 100], "o", color="#d62728", label="the threshold (chosen on validation)")
    ax.set_xlabel("images accepted (%)")
    ax.set_ylabel("accuracy among accepted (%)")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)
