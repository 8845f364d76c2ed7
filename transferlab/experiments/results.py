"""The results of a comparison: summaries over seeds (mean +- CI), the winner, and the files that
record them (metrics.json, history.csv, manifest.json)."""

from __future__ import annotations

import csv
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import TransferlabError
from ..core.io import atomic_path, folder_lock, remove_stale_temporaries, write_json
from ..runtime.distributed import backend, broadcast, is_main, joined, world_size
from ..train.run import Prepared, RunResult

if TYPE_CHECKING:
    from .compare import Experiment

HISTORY_FIELDS = ["strategy", "seed", "phase", "epoch", "train_loss", "val_loss", "val_acc", "seconds",
                  "ema_val_loss", "ema_val_acc"]  # the weight average's, in phases that keep one (--ema)


def check_out_folder(out: Path, source: str | None = None) -> None:
    """``--out`` must be a folder (or not exist yet), outside the data folder ``source``."""
    if out.exists() and not out.is_dir():
        raise TransferlabError(f"--out {out} is a file, not a folder; choose another --out")
    data = Path(source).expanduser() if source else None
    if data is not None and data.is_dir() and out.resolve().is_relative_to(data.resolve()):
        raise TransferlabError(f"--out {out} lies inside the data folder {data}: results would be read as "
                               "images next time; choose an --out outside it")


@contextmanager
def results_folder(out: Path, source: str | None, what: str) -> Iterator[Path]:
    """Hold the results folder ``out`` for one process (a second one stops with a message), after
    checking it (``check_out_folder``) and removing temporaries that killed processes left in it."""
    check_out_folder(out, source)
    with folder_lock(out, what=what):
        remove_stale_temporaries(out)
        yield out


@contextmanager
def main_holds(out: Path, source: str | None, what: str, checks: Callable[[], None] = lambda: None) -> Iterator[None]:
    """``results_folder`` held by rank 0 alone (the only writer of shared results), with ``checks``
    run there; a refusal on rank 0 stops every process of a torchrun job with the same message."""
    held, error = ExitStack(), None
    if is_main():
        try:
            held.enter_context(results_folder(out, source, what))
            checks()
        except TransferlabError as exc:
            held.close()
            error = str(exc)
    error = broadcast(error)
    if error is not None:
        raise TransferlabError(error)
    with held:
        yield


def model_folder(out: Path, strategy: str, seed: int) -> Path:
    """Where the run of ``strategy`` with ``seed`` keeps its weights in the results directory ``out``."""
    return out / strategy / f"seed{seed}"


def results_root(folder: Path) -> Path | None:
    """The results directory (the one holding config.yaml) that a model folder belongs to, if any."""
    return next((p for p in (folder, *folder.parents) if (p / "config.yaml").is_file()), None)


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
                     "budget_cut": sum(1 for r in rs if r.details.get("budget_cut")),
                     # BatchNorm 'auto': runs whose batch-statistics attempt was undone for frozen statistics
                     "bn_fallback": sum(1 for r in rs if "body_bn_train_epochs" in r.details),
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
    world, mode, batch = world_size(), exp.train.runtime.parallel, exp.train.schedule.batch_size
    if not joined():
        return {"count": world, "mode": "single"}
    info: dict[str, Any] = {"count": world, "mode": mode, "backend": backend()}
    if mode == "data":
        info |= {"global_batch": batch, "batch_per_process": -(-batch // world),
                 "learning_rates": "as in one process: the global batch is the --batch-size"}
    return info


def write_results(out: Path, exp: Experiment, prep: Prepared, results: list[RunResult],
                  started: float, command: str) -> dict[str, Any]:
    """(Re)write metrics.json, history.csv and manifest.json from the runs finished so far."""
    summary = summarise(results)
    metrics = {"runs": [r.summary() for r in results], "summary": summary,
               "winner": winner(summary) if summary else None}
    write_json(out / "metrics.json", metrics)
    with atomic_path(out / "history.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, HISTORY_FIELDS)
        writer.writeheader()
        for r in results:
            for h in r.history:
                writer.writerow({"strategy": r.strategy, "seed": r.seed,
                                 **{k: h.get(k, "") for k in HISTORY_FIELDS[2:]}})
    ds = prep.dataset
    write_json(out / "manifest.json", {
        "command": command, "versions": _versions(), "seeds": list(range(exp.compare.seeds)),
        "split_seed": exp.data.split_seed,
        "data": {"name": ds.name, "images": len(ds), "classes": ds.classes, "fingerprint": ds.fingerprint,
                 "counts": ds.counts(), "imbalance_warning": ds.imbalance_warning(),
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
