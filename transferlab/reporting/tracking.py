"""Experiment tracking: TensorBoard event files for every run of a compare, written with torch's own
``SummaryWriter`` from the results folder's records (so a resumed compare writes them afresh, never
twice).

``<out>/tensorboard/<strategy>-seed<k>/``: per epoch ``loss/train``, ``loss/val`` and
``accuracy/val`` (step = the run's epoch count, phases one after another) and the same per phase
(``phase/<name>/...``); the run's settings as hparams with its test and validation accuracy; and,
for the winner, the test confusion matrix as a figure. ``tensorboard --logdir <out>/tensorboard``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..core.io import atomic_path
from .plots import confusion_figure


def flat_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings as TensorBoard hparams (and MLflow params) show them: numbers, strings and booleans
    (tuples as text, None as "default")."""
    out = {}
    for k, v in settings.items():
        if isinstance(v, tuple | list):
            v = ",".join(map(str, v))
        if v is None:
            v = "default"
        out[k] = v
    return out


def write_tensorboard(out: Path, settings: dict[str, Any], runs: list[dict[str, Any]], winner: str | None,
                      confusion: tuple[np.ndarray, list[str]] | None = None) -> Path:
    """Event files for ``runs`` (result dicts with ``history``) under ``out/tensorboard`` (replaced
    whole); ``confusion``: the winner's test confusion matrix and class names."""
    from torch.utils.tensorboard import SummaryWriter

    target = out / "tensorboard"
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        for run in runs:
            name = f"{run['strategy']}-seed{run['seed']}"
            with SummaryWriter(str(tmp / name)) as w:
                for step, h in enumerate(run.get("history", []), start=1):
                    for tag, key in (("loss/train", "train_loss"), ("loss/val", "val_loss"),
                                     ("accuracy/val", "val_acc")):
                        value = h.get(key)
                        if value is not None and not (isinstance(value, float) and math.isnan(value)):
                            w.add_scalar(tag, value, step)
                            w.add_scalar(f"phase/{h['phase']}/{tag}", value, step)
                w.add_hparams({**flat_settings(settings), "strategy": run["strategy"], "seed": run["seed"]},
                              {"hparam/test_acc": run["test_acc"], "hparam/val_acc": run["val_acc"]},
                              run_name=".")
                if confusion is not None and run["strategy"] == winner and run["seed"] == runs_seed(runs, winner):
                    w.add_figure("confusion/test", confusion_figure(*confusion, f"{winner}: test set"))
        if target.exists():
            shutil.rmtree(target)
    return target


def runs_seed(runs: list[dict[str, Any]], strategy: str | None) -> int | None:
    """The first seed of ``strategy`` among ``runs`` (the one the report shows)."""
    return next((r["seed"] for r in runs if r["strategy"] == strategy), None)
