"""Compare strategies x seeds on the same splits and write the results directory.

```
<out>/config.yaml      everything needed to rerun
<out>/manifest.json    versions, seeds, data fingerprint, machine, wall times
<out>/metrics.json     per strategy and seed: test/val accuracy, epochs, seconds; summary mean +- 95% CI
<out>/history.csv      strategy, seed, phase, epoch, train_loss, val_loss, val_acc, seconds
<out>/<strategy>/seed<k>/model.safetensors + model.json
```
Finished runs are recorded as they end, so an interrupted comparison resumes with ``resume=True``
and skips them; a run cut short mid-way continues from its last epoch checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .data import ImageDataset, load_dataset, make_splits
from .errors import TransferlabError
from .strategies import list_strategies
from .training import Prepared, RunResult, TrainConfig, prepare, train_one

DEFAULT_STRATEGIES = ["scratch", "features", "probe", "finetune", "chain-thaw"]
HISTORY_FIELDS = ["strategy", "seed", "phase", "epoch", "train_loss", "val_loss", "val_acc", "seconds"]


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
                     "seconds": float(np.mean([r.seconds for r in rs])), "seeds": len(rs)}
    return out


def winner(summary: dict[str, dict[str, float]]) -> str:
    """Highest mean test accuracy; ties go to the faster strategy."""
    return max(summary, key=lambda s: (round(summary[s]["test_acc"], 6), -summary[s]["seconds"]))


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    import sklearn
    import timm
    import torch
    import torchvision

    from . import __version__

    return {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__,
            "transferlab": __version__}


@dataclass
class Experiment:
    """The inputs of a comparison (what config.yaml records)."""

    data: str
    strategies: list[str]
    seeds: int = 1
    split_seed: int = 0
    config: TrainConfig = TrainConfig()
    strict: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data, "strategies": self.strategies, "seeds": self.seeds,
                "split_seed": self.split_seed, "strict": self.strict, "train": self.config.to_dict()}


def write_results(out: Path, exp: Experiment, prep: Prepared, results: list[RunResult],
                  started: float, command: str) -> dict[str, Any]:
    """(Re)write metrics.json, history.csv and manifest.json from the runs finished so far."""
    summary = summarise(results)
    metrics = {"runs": [r.summary() for r in results], "summary": summary,
               "winner": winner(summary) if summary else None}
    _write_json(out / "metrics.json", metrics)
    tmp = out / f".history.csv.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, HISTORY_FIELDS)
        writer.writeheader()
        for r in results:
            for h in r.history:
                writer.writerow({"strategy": r.strategy, "seed": r.seed, **{k: h[k] for k in HISTORY_FIELDS[2:]}})
    os.replace(tmp, out / "history.csv")
    ds = prep.dataset
    _write_json(out / "manifest.json", {
        "command": command, "versions": _versions(), "seeds": list(range(exp.seeds)), "split_seed": exp.split_seed,
        "data": {"name": ds.name, "images": len(ds), "classes": ds.classes, "fingerprint": ds.fingerprint,
                 "splits": {k: len(v) for k, v in prep.splits.items()},
                 "skipped": [{"file": f, "reason": r} for f, r in ds.skipped]},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "precision": prep.precision.describe()},
        "wall_seconds": {"total": time.time() - started,
                         **{f"{r.strategy}/seed{r.seed}": r.seconds for r in results}},
        "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in prep.data_config.items()},
    })
    return metrics


def run_experiment(exp: Experiment, out: str | Path, resume: bool = False, quiet: bool = False,
                   dataset: ImageDataset | None = None, command: str = "") -> dict[str, Any]:
    """Train every strategy for every seed on the same splits; write the results directory.

    Args:
        exp: data, strategies, seeds and training settings.
        out: the results directory (created).
        resume: continue an interrupted comparison in ``out`` (finished runs are skipped).
        dataset: an already loaded dataset (otherwise ``exp.data`` is loaded).
    Returns:
        The content of metrics.json.
    """
    unknown = [s for s in exp.strategies if s not in list_strategies()]
    if unknown:
        raise TransferlabError(f"unknown strategy {', '.join(unknown)}; known: {', '.join(list_strategies())}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        if (out / "config.yaml").is_file():
            raise TransferlabError(f"{out} already holds results; pass --resume to continue them, "
                                   "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if resume and (out / "config.yaml").is_file():
        saved = yaml.safe_load((out / "config.yaml").read_text())
        if saved != exp.to_dict():
            raise TransferlabError(f"{out} was made with other settings; resume with the same options "
                                   f"(saved in {out / 'config.yaml'}) or choose another --out")
    (out / "config.yaml").write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False))
    ds = dataset or load_dataset(exp.data, strict=exp.strict)
    splits = make_splits(ds, seed=exp.split_seed)
    prep = prepare(ds, splits, exp.config, quiet=quiet)
    np.savez(out / "splits.npz", labels=ds.labels, **splits)
    results: list[RunResult] = []
    command = command or " ".join(["transferlab", *sys.argv[1:]])
    for strategy in exp.strategies:
        for seed in range(exp.seeds):
            if not quiet:
                from .progress import console

                console.print(f"[bold]{strategy}[/bold] seed {seed}")
            results.append(train_one(prep, exp.config, strategy, seed, out / strategy / f"seed{seed}",
                                     resume=resume, quiet=quiet))
            metrics = write_results(out, exp, prep, results, started, command)
    from .report import build_report

    build_report(out, ds, prep.cache)
    return metrics
