"""Compare strategies x seeds on the same splits and write the results directory.

```
<out>/config.yaml      everything needed to rerun (transferlab compare --config <out>/config.yaml)
<out>/manifest.json    versions, seeds, data fingerprint, machine, wall times
<out>/metrics.json     per strategy and seed: test/val accuracy, epochs, seconds; summary mean +- 95% CI
<out>/history.csv      strategy, seed, phase, epoch, train_loss, val_loss, val_acc, seconds
<out>/<strategy>/seed<k>/model.safetensors + model.json
```
Finished runs are recorded as they end, so an interrupted comparison resumes with ``resume=True``
and skips them; a run cut short mid-way continues from its last epoch checkpoint.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..core.config import from_dict, option, to_dict
from ..core.errors import TransferlabError
from ..core.io import atomic_path, write_text
from ..core.progress import console
from ..data.builtin import load_dataset
from ..data.splits import make_splits
from ..reporting.compare_report import build_report
from ..train.config import DataConfig, TrainConfig
from ..train.run import RunResult, prepare, train_one
from ..train.strategies import list_strategies
from .results import model_folder, write_results

DEFAULT_STRATEGIES = ("scratch", "features", "probe", "finetune", "chain-thaw")


@dataclass(frozen=True)
class CompareConfig:
    """Which strategies, with how many seeds each."""

    strategies: tuple[str, ...] = option(DEFAULT_STRATEGIES, "comma-separated strategies (see transferlab "
                                                             "strategies)")
    seeds: int = option(1, "seeds per strategy (0..N-1)", minimum=1)


@dataclass(frozen=True)
class Experiment:
    """The inputs of a comparison: what config.yaml records."""

    data: DataConfig
    train: TrainConfig = TrainConfig()
    compare: CompareConfig = CompareConfig()


def load_experiment(path: str | Path) -> Experiment:
    """An Experiment read back from a config.yaml."""
    path = Path(path)
    if not path.is_file():
        raise TransferlabError(f"{path} does not exist; pass the config.yaml of a results directory")
    try:
        return from_dict(Experiment, yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, TypeError) as exc:
        raise TransferlabError(f"{path} is not a transferlab config.yaml ({exc})") from None


def _check_out(out: Path, exp: Experiment, resume: bool) -> None:
    """Refuse to overwrite results, or to resume a folder made with other settings."""
    if out.exists() and any(out.iterdir()) and not resume and (out / "config.yaml").is_file():
        raise TransferlabError(f"{out} already holds results; pass --resume to continue them, "
                               "or choose another --out")
    if resume and (out / "config.yaml").is_file():
        saved = yaml.safe_load((out / "config.yaml").read_text())
        if saved != to_dict(exp):
            raise TransferlabError(f"{out} was made with other settings; resume with the same options "
                                   f"(saved in {out / 'config.yaml'}) or choose another --out")


def compare(data: DataConfig, config: TrainConfig, out: str | Path, plan: CompareConfig = CompareConfig(), *,
            resume: bool = False, quiet: bool = False, command: str = "") -> dict[str, Any]:
    """Train every strategy of ``plan`` for every seed on the same splits; write the results directory.

    Args:
        data: which images and how they are split.
        config: the model, schedule and runtime settings.
        out: the results directory (created).
        plan: the strategies and the number of seeds.
        resume: continue an interrupted comparison in ``out`` (finished runs are skipped).
        command: the command line to record (default: this process's).
    Returns:
        The content of metrics.json.
    """
    unknown = [s for s in plan.strategies if s not in list_strategies()]
    if unknown:
        raise TransferlabError(f"unknown strategy {', '.join(unknown)}; known: {', '.join(list_strategies())}")
    exp, out = Experiment(data, config, plan), Path(out)
    _check_out(out, exp, resume)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    write_text(out / "config.yaml", yaml.safe_dump(to_dict(exp), sort_keys=False))
    ds = load_dataset(data.source, strict=data.strict)
    splits = make_splits(ds, seed=data.split_seed)
    prep = prepare(ds, splits, config, quiet=quiet)
    with atomic_path(out / "splits.npz") as tmp:
        np.savez(tmp, labels=ds.labels, **splits)
    results: list[RunResult] = []
    command = command or " ".join(["transferlab", *sys.argv[1:]])
    for strategy in plan.strategies:
        for seed in range(plan.seeds):
            if not quiet:
                console.print(f"[bold]{strategy}[/bold] seed {seed}")
            results.append(train_one(prep, config, strategy, seed, model_folder(out, strategy, seed),
                                     resume=resume, quiet=quiet))
            metrics = write_results(out, exp, prep, results, started, command)
    build_report(out, prep.cache)
    return metrics
