"""The results of a comparison: summaries over seeds (mean +- CI), the winner, and the files that
record them (metrics.json, history.csv, manifest.json), with the typed records they are read back as."""

from __future__ import annotations

import csv
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.io import atomic_path, write_json
from ..core.layout import ResultsFolder, RunFolder
from ..core.records import RecordError, read_record
from ..runtime.distributed import backend, joined, world_size
from ..train.run import Prepared, RunResult
from .experiment import Experiment
from .folder import model_folder
from .verdict import verdict

HISTORY_FIELDS = ["strategy", "seed", "phase", "epoch", "train_loss", "val_loss", "val_acc", "seconds",
                  "ema_val_loss", "ema_val_acc"]  # the weight average's, in phases that keep one (--ema)


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for a single value)."""
    from scipy.stats import t

    arr = np.asarray(values, dtype=float)
    if len(arr) < 2:
        return float(arr.mean()), 0.0
    half = t.ppf(0.5 + level / 2, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr))
    return float(arr.mean()), float(half)


def summarise(results: list[RunResult]) -> dict[str, dict[str, float]]:
    """Per strategy: mean test accuracy +- 95% CI over seeds, mean val accuracy, epochs, seconds."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.strategy for r in results):
        rs = [r for r in results if r.strategy == name]
        acc, ci = mean_ci([r.test_acc for r in rs])
        out[name] = {"test_acc": acc, "test_acc_ci95": ci, "val_acc": float(np.mean([r.val_acc for r in rs])),
                     "epochs": float(np.mean([r.epochs for r in rs])),
                     "seconds": float(np.mean([r.seconds for r in rs])), "seeds": len(rs),
                     "budget_cut": sum(1 for r in rs if r.details.budget_cut),
                     # BatchNorm 'auto': runs whose batch-statistics attempt was undone for frozen statistics
                     "bn_fallback": sum(1 for r in rs if r.details.body_bn_train_epochs is not None),
                     **{k: float(np.mean([r.scores[k] for r in rs]))
                        for k in _QUOTED if all(k in r.scores for r in rs)}}
    return out


_QUOTED = ("balanced_accuracy", "macro_f1")


def winner(summary: dict[str, dict[str, float]]) -> str:
    """Highest mean *validation* accuracy; ties go to the faster strategy. The test set plays no part
    in the choice (choosing on it would make the winner's test accuracy an optimistic estimate)."""
    return max(summary, key=lambda s: (round(summary[s]["val_acc"], 6), -summary[s]["seconds"]))


def _versions() -> dict[str, str]:
    import sklearn
    import timm
    import torch
    import torchvision

    from .. import __version__

    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__,
            "transferlab": __version__}


def _processes(exp: Experiment) -> dict[str, Any]:
    """How the runs were spread over a torchrun job, and the batch and learning rates that result."""
    world, mode, batch = world_size(), exp.train.runtime.parallel, exp.train.budget.batch_size
    if not joined():
        return {"count": world, "mode": "single"}
    info: dict[str, Any] = {"count": world, "mode": mode, "backend": backend()}
    if mode == "data":
        info |= {"global_batch": batch, "batch_per_process": -(-batch // world),
                 "learning_rates": "as in one process: the global batch is the --batch-size"}
    return info


def test_correctness(out: Path, prep: Prepared, results: list[RunResult]) -> dict[str, dict[int, np.ndarray]]:
    """Per strategy and seed, whether each test image was classified right (from the runs' saved test
    predictions; runs without them, or with the wrong number, are left out)."""
    y = prep.dataset.labels[prep.splits["test"]]
    out_map: dict[str, dict[int, np.ndarray]] = {}
    for r in results:
        path = RunFolder(model_folder(out, r.strategy, r.seed)).test_predictions
        if path.is_file():
            preds = np.load(path)
            if preds.shape == y.shape:
                out_map.setdefault(r.strategy, {})[r.seed] = preds == y
    return out_map


def write_results(out: Path, exp: Experiment, prep: Prepared, results: list[RunResult],
                  started: float, command: str) -> dict[str, Any]:
    """(Re)write metrics.json, history.csv and manifest.json from the runs finished so far."""
    summary = summarise(results)
    best = winner(summary) if summary else None
    found = verdict(summary, best, test_correctness(out, prep, results), len(prep.splits["val"])) if best else None
    metrics = {"runs": [r.summary() for r in results], "summary": summary, "winner": best,
               "verdict": found.to_dict() if found else None}
    folder = ResultsFolder(out)
    write_json(folder.metrics, metrics)
    with atomic_path(folder.history) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, HISTORY_FIELDS)
        writer.writeheader()
        for r in results:
            for h in r.history:
                writer.writerow({"strategy": r.strategy, "seed": r.seed,
                                 **{k: h.get(k, "") for k in HISTORY_FIELDS[2:]}})
    ds = prep.dataset
    write_json(folder.manifest, {
        "command": command, "versions": _versions(), "seeds": list(range(exp.compare.seeds)),
        "split_seed": exp.data.split_seed,
        "data": {"name": ds.name, "images": len(ds.labelled_labels), "classes": ds.classes,
                 "fingerprint": ds.fingerprint, "unlabelled": prep.pool.to_dict() if prep.pool else None,
                 "counts": ds.counts(), "imbalance_warning": ds.imbalance_warning(),
                 "copies_across_splits": prep.copies,
                 "splits": {k: len(v) for k, v in prep.splits.items()},
                 "skipped": [{"file": f, "reason": r} for f, r in ds.skipped]},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "precision": prep.precision.describe()},
        "wall_seconds": {"total": time.time() - started,
                         **{f"{r.strategy}/seed{r.seed}": r.seconds for r in results}},
        "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in prep.data_config.items()},
        "processes": _processes(exp),
    })
    return metrics


# ---------------------------------------------------------------------------------------------
# The records read back


@dataclass
class StrategySummary:
    """One strategy's row of metrics.json's summary."""

    test_acc: float
    test_acc_ci95: float
    val_acc: float
    epochs: float
    seconds: float
    seeds: int
    budget_cut: int = 0
    bn_fallback: int = 0
    balanced_accuracy: float | None = None
    macro_f1: float | None = None


@dataclass
class Metrics:
    """metrics.json: every finished run (without its history), the summary per strategy, the winner."""

    runs: list[RunResult]
    summary: dict[str, StrategySummary]
    winner: str | None
    verdict: dict[str, Any] | None = None  # experiments.verdict.Verdict, when two strategies have finished

    def check(self) -> None:
        if self.runs and self.winner is None:
            raise RecordError("winner", "missing although runs have finished")
        if self.winner is not None and self.winner not in self.summary:
            raise RecordError("winner", f"{self.winner!r} is not a strategy of the summary")
        stray = {r.strategy for r in self.runs} - set(self.summary)
        if stray:
            raise RecordError("runs", f"strategy {sorted(stray)[0]!r} has runs but no summary")


@dataclass
class ManifestData:
    """The part of manifest.json's ``data`` that a resume compares."""

    fingerprint: str
    name: str = ""
    images: int = 0
    classes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    imbalance_warning: str | None = None
    copies_across_splits: str | None = None  # compare's warning about copies across the splits
    unlabelled: dict[str, Any] | None = None  # the pool: source, images kept, duplicates left out, skipped
    splits: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Manifest:
    """manifest.json: how the results were made (only ``data`` is read back, on resume)."""

    data: ManifestData
    command: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    split_seed: int = 0
    machine: dict[str, Any] = field(default_factory=dict)
    wall_seconds: dict[str, float] = field(default_factory=dict)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    processes: dict[str, Any] = field(default_factory=dict)


def read_metrics(path: Path, fix: str = "") -> Metrics:
    """metrics.json read back (``DamagedFileError`` when it does not parse or holds the wrong content)."""
    return read_record(Metrics, path, fix)


def read_manifest(path: Path, fix: str = "") -> Manifest:
    """manifest.json read back (``DamagedFileError`` when it does not parse or holds the wrong content)."""
    return read_record(Manifest, path, fix)
