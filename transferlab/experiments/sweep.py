"""The dataset-size sweep (Kornblith et al. 2019, fig. 9): test accuracy against training examples
per class, on nested random subsets, pretrained strategies against scratch."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..core.config import Settings, option
from ..core.progress import console
from ..data.builtin import load_dataset
from ..data.pool import attach_pool
from ..data.splits import make_splits, per_class_subset
from ..reporting.plots import save_figure
from ..reporting.render import Section, render
from ..runtime.distributed import broadcast, gather_lists, is_main, my_share
from ..train.config import DataConfig, TrainConfig
from ..train.run import prepare, train_one
from ..train.strategies import check_pool_strategies
from .folder import main_holds
from .study_files import write_rows


@dataclass(frozen=True)
class SweepConfig(Settings):
    """Which dataset sizes, how many random subsets of each, and which strategies."""

    per_class: tuple[int, ...] = option((1, 2, 5, 10, 20, 40), "training images per class, e.g. 1,2,5,10",
                                       minimum=1)
    subsets: int = option(3, "nested random subsets per size (the error bars)", minimum=1)
    strategies: tuple[str, ...] = option(("probe", "finetune", "scratch"), "comma-separated strategies")


def _means(rows: list[dict[str, Any]], strategy: str) -> tuple[list[int], list[float], list[float]]:
    """Sizes, mean and sd of test accuracy (%) over subsets."""
    xs = sorted({r["per_class_used"] for r in rows})
    accs = [[r["test_acc"] * 100 for r in rows if r["strategy"] == strategy and r["per_class_used"] == x]
            for x in xs]
    return xs, [float(np.mean(v)) for v in accs], [float(np.std(v)) for v in accs]


def _plot(rows: list[dict[str, Any]], strategies: tuple[str, ...], path: Path) -> dict[str, dict[int, float]]:
    fig = Figure(figsize=(11, 4))
    a, b = fig.subplots(1, 2)
    means: dict[str, dict[int, float]] = {}
    for strategy in strategies:
        xs, m, sd = _means(rows, strategy)
        means[strategy] = dict(zip(xs, m))
        style = {"color": "#777777", "linestyle": "--"} if strategy == "scratch" else {}
        a.errorbar(xs, m, yerr=sd, marker="o", capsize=3, label=strategy, **style)
    a.set_ylabel("test accuracy (%), mean ± sd over subsets")
    a.set_title("accuracy against dataset size")
    if "scratch" in means:
        for strategy in strategies:
            if strategy != "scratch":
                xs = sorted(means[strategy])
                b.plot(xs, [means[strategy][x] - means["scratch"][x] for x in xs], marker="o", label=strategy)
        b.set_ylabel("gap over scratch (points)")
        b.axhline(0, color="black", linewidth=0.8)
        b.set_title("what pretraining buys")
    for ax in (a, b) if "scratch" in means else (a,):
        ax.set_xscale("log")
        ax.set_xlabel("training examples per class (log scale)")
        ax.legend()
        ax.grid(alpha=0.3)
    save_figure(fig, path)
    return means


def sweep(data: DataConfig, config: TrainConfig, out: str | Path, study: SweepConfig = SweepConfig(),
          quiet: bool = True) -> dict[str, Any]:
    """Test accuracy against examples per class: nested random subsets of the training split (the
    same ``subsets`` seeds for every size), a fixed validation and test split. With an unlabelled pool
    (``data.unlabelled``) the training images left out of a subset join the pool, their labels hidden,
    so that strategies that learn from unlabelled images (self-train) show what they buy."""
    with main_holds(Path(out), data.source, "a sweep"):
        return broadcast(_sweep(data, config, Path(out), study, quiet))


def _sweep(data: DataConfig, config: TrainConfig, out: Path, study: SweepConfig, quiet: bool) -> dict[str, Any]:
    ds = load_dataset(data.source, strict=data.strict, exclude=data.exclude)
    check_pool_strategies(study.strategies, config, bool(data.unlabelled))
    base = make_splits(ds, seed=data.split_seed)
    prep = prepare(attach_pool(ds, data.unlabelled, data.source, data.strict), base, config, quiet=quiet)
    base = prep.splits
    largest = int(np.bincount(ds.labels[base["train"]]).min())
    rows = []
    # Independent runs: under torchrun each process trains its share, rank 0 writes the results.
    jobs = [(n, s, strategy) for n in study.per_class for s in range(study.subsets) for strategy in study.strategies]
    for n, s, strategy in my_share(jobs):
        train = per_class_subset(base["train"], ds.labels, n, seed=s)
        splits = {**base, "train": train}
        if "pool" in base:  # the rest of the training images join the pool, their labels hidden
            splits["pool"] = np.concatenate([np.setdiff1d(base["train"], train), base["pool"]])
        sub = replace(prep, splits=splits)
        res = train_one(sub, config, strategy, s, out / f"n{n}" / f"subset{s}" / strategy, quiet=quiet)
        rows.append({"per_class": n, "per_class_used": min(n, largest), "subset": s, "strategy": strategy,
                     "train_images": len(train), "test_acc": res.test_acc, "seconds": res.seconds})
        if not quiet:
            console.print(f"n={n} subset {s} {strategy}: {res.test_acc:.1%}")
    rows = sorted(gather_lists(rows), key=lambda r: jobs.index((r["per_class"], r["subset"], r["strategy"])))
    if not is_main():
        return {}
    capped = sorted({n for n in study.per_class if n > largest})
    write_rows(out, rows, {"largest_per_class": largest, "capped": capped, "test_images": len(base["test"])})
    means = _plot(rows, study.strategies, out / "plots" / "sweep.png")
    table = [["per class", *study.strategies]]
    for x in sorted({r["per_class_used"] for r in rows}):
        table.append([str(x)] + [f"{means[s][x]:.1f}%" for s in study.strategies])
    note = f"{study.subsets} nested random subsets per size; the same {len(base['test'])} test images throughout."
    if capped:
        note += f" Sizes {capped} exceed the smallest class ({largest} training images) and were capped to it."
    render("transferlab: dataset-size sweep", [Section("Test accuracy against examples per class", note, table,
                                                       out / "plots" / "sweep.png")], out)
    return {"rows": rows, "capped": capped}
