"""Learning curves read back from history.csv, and the three benefits of transfer measured on them."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

SCRATCH = "scratch"
EARLY_EPOCHS = 5  # "slope": mean gain per epoch over the first epochs


def read_history(out: Path) -> list[dict[str, Any]]:
    """The rows of ``out/history.csv`` with numbers as numbers."""
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("seed", "epoch"):
            r[k] = int(r[k])
        for k in ("train_loss", "val_loss", "val_acc", "seconds"):
            r[k] = float(r[k])
    return rows


def curve(history: list[dict[str, Any]], strategy: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Validation accuracy per epoch (counted across phases) and cumulative seconds, with phase starts."""
    rows = [r for r in history if r["strategy"] == strategy and r["seed"] == seed]
    # A phase without a validation score (surrogate pretraining: no head yet) is no point of the
    # curve, but its time is on the clock of the points after it.
    seconds = np.cumsum([r["seconds"] for r in rows])
    scored = [i for i, r in enumerate(rows) if np.isfinite(r["val_acc"])]
    rows, seconds = [rows[i] for i in scored], seconds[scored]
    phases = [r["phase"] for r in rows]
    starts = [i for i in range(1, len(rows)) if phases[i] != phases[i - 1]]
    return {"epoch": np.arange(1, len(rows) + 1), "val_acc": np.array([r["val_acc"] for r in rows]),
            "seconds": seconds, "phase_starts": np.array(starts, dtype=int), "phases": phases}


def transfer_benefits(history: list[dict[str, Any]], pretrained: str) -> dict[str, dict[str, float]]:
    """Torrey & Shavlik's three benefits, measured on validation curves (seed 0), pretrained vs scratch.

    start: validation accuracy after the first epoch; slope: mean gain per epoch over the first
    ``EARLY_EPOCHS`` epochs (area under the curve over those epochs is given too); asymptote: the
    best validation accuracy reached.
    """
    out = {}
    for name in (pretrained, SCRATCH):
        acc = curve(history, name)["val_acc"]
        early = acc[:EARLY_EPOCHS]
        out[name] = {"start": float(acc[0]),
                     "slope": float((early[-1] - early[0]) / max(len(early) - 1, 1)),
                     "auc_early": float(early.mean()),
                     "asymptote": float(acc.max())}
    return out
