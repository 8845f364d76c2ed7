"""Compare strategies x seeds on the same splits and write the results directory (its layout:
``core.layout``). Finished runs are recorded as they end, so an interrupted comparison resumes with
``resume=True`` and skips them; a run cut short mid-way continues from its last epoch checkpoint.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..core.config import flatten, to_dict
from ..core.errors import DamagedFileError, TransferlabError
from ..core.io import atomic_path, ensure_free_space, write_text
from ..core.layout import ResultsFolder
from ..core.progress import console, warn
from ..data.builtin import load_dataset
from ..data.datasets import ImageDataset
from ..data.duplicates import duplicate_groups, find_duplicates, leak_warning, redundant_train_copies
from ..data.pool import attach_pool
from ..data.quality import short_sides
from ..data.splits import make_splits
from ..models.catalog import backbone_spec
from ..reporting.compare_report import build_report
from ..reporting.mlflow_log import MlflowLog, check_store
from ..reporting.model_card import write_model_card
from ..runtime.distributed import broadcast, gather_lists, is_main, my_share, world_size
from ..train.config import DataConfig, TrainConfig
from ..train.run import Prepared, RunResult, prepare, train_one
from ..train.strategies import build_strategy, check_pool_strategies
from .audit import labelled_features
from .experiment import DEFAULT_STRATEGIES, ENSEMBLE, CompareConfig, Experiment, load_experiment, read_config_yaml
from .folder import check_out_folder, main_holds, model_folder
from .postrun import calibrate_runs, ensemble_run, track_runs
from .results import read_manifest, write_results

__all__ = ["DEFAULT_STRATEGIES", "CompareConfig", "Experiment", "compare", "load_experiment"]


def _check_out(out: Path, exp: Experiment, resume: bool) -> None:
    """Refuse an --out that is a file or lies inside the data, results that would be overwritten, or
    resuming a folder made with other settings."""
    check_out_folder(out, exp.data.source)
    folder = ResultsFolder(out)
    if not out.is_dir() or not folder.config.is_file():
        return
    if not resume and folder.has_runs():
        raise TransferlabError(f"{out} already holds results; pass --resume (resume=True in the Python "
                               "API) to continue them, or choose another --out")
    if resume and read_config_yaml(folder.config) != to_dict(exp):
        raise TransferlabError(f"{out} was made with other settings; resume with the same options "
                               f"(saved in {folder.config}) or choose another --out")


def _check_same_data(out: Path, ds: ImageDataset, splits: dict[str, np.ndarray], dedupe: bool = False) -> None:
    """On resume: the data and splits must be those the finished runs were trained on (with ``dedupe``,
    a subset of the training split: the copies were left out of it)."""
    folder = ResultsFolder(out)
    if folder.manifest.is_file():
        before = read_manifest(folder.manifest, "delete it and run the same command with --resume: it is "
                                                "written again").data.fingerprint
        if before != ds.fingerprint:
            raise TransferlabError(f"the data changed since {out} was made (fingerprint {before}, now "
                                   f"{ds.fingerprint}): its runs would mix two data sets; start a new --out")
    if folder.splits.is_file():
        try:
            with np.load(folder.splits, allow_pickle=False) as saved:
                same = all(k in saved and (np.isin(saved[k], v).all() if dedupe and k == "train" else
                                           np.array_equal(saved[k], v)) for k, v in splits.items()) and \
                    np.array_equal(saved["labels"], ds.labelled_labels)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise DamagedFileError(folder.splits, str(exc)) from None
        if not same:
            raise TransferlabError(f"the images or splits differ from those {out} was made with; "
                                   "start a new --out")


def _results_bytes(plan: CompareConfig, params_m: float | None) -> int:
    """About what the results of ``plan`` take on disk: per run the float32 weights, plus one
    checkpoint with Adam's two moments (3x the weights) while a run trains, plus the reports."""
    weights = int((params_m or 25) * 1e6 * 4)
    return plan.seeds * len(plan.strategies) * weights + 3 * weights + (20 << 20)


def compare(data: DataConfig, config: TrainConfig, out: str | Path, plan: CompareConfig | None = None, *,
            resume: bool = False, quiet: bool = True, command: str = "", mlflow: str | None = None) -> dict[str, Any]:
    """Train every strategy of ``plan`` for every seed on the same splits; write the results directory.

    Args:
        data: which images and how they are split.
        config: the model, schedule and runtime settings.
        out: the results directory (created).
        plan: the strategies and the number of seeds.
        resume: continue an interrupted comparison in ``out`` (finished runs are skipped).
        command: the command line to record (default: this process's).
        mlflow: also log the runs to this MLflow tracking URI ("default": a local store in ``out``).
    Returns:
        The content of metrics.json.
    """
    plan = plan or CompareConfig()
    exp, out = Experiment(data, config, plan), Path(out)  # checked as built: a bad value stops here
    _check_out(out, exp, resume)
    # Everything that can fail on the user's input fails before the folder is touched.
    spec = backbone_spec(config.model.backbone, config.model.image_size)
    ds = load_dataset(data.source, strict=data.strict, exclude=data.exclude)
    imbalance = ds.imbalance_warning()
    if imbalance and config.imbalance.class_weights == "none" and is_main():
        warn(imbalance)
    splits = make_splits(ds, seed=data.split_seed)
    ds = attach_pool(ds, data.unlabelled, data.source, data.strict)
    check_pool_strategies([s for s in plan.strategies if s != ENSEMBLE], config, bool(ds.pool_source))
    def checks() -> None:
        if resume:
            _check_same_data(out, ds, splits, data.dedupe)
        ensure_free_space(out, _results_bytes(plan, spec.meta.get("params_m")), "the results", "choose another --out")
        if mlflow:
            check_store(out, mlflow)
    with main_holds(out, data.source, "a comparison", checks):
        return _run_plan(exp, ds, splits, out, resume, quiet, command or " ".join(["transferlab", *sys.argv[1:]]),
                         mlflow)


def _waves(plan: CompareConfig, config: TrainConfig) -> list[list[str]]:
    """The trained strategies in the order they can run: those whose time budget is the time of
    others (scratch under equal compute) wait for the first wave. Within a wave, runs are
    independent (spread over the processes of a torchrun job)."""
    trained = [s for s in plan.strategies if s != ENSEMBLE]
    if not _equal_compute(config):
        return [trained]
    first = [s for s in trained if _pretrained(s, config)]
    return [w for w in (first, [s for s in trained if s not in first]) if w]


def _run_plan(exp: Experiment, ds: ImageDataset, splits: dict[str, np.ndarray], out: Path, resume: bool,
              quiet: bool, command: str, mlflow: str | None = None) -> dict[str, Any]:
    """Every run of the plan; under torchrun each process trains its share of every wave (one run per
    process at a time), rank 0 gathers the results and alone writes the shared files."""
    plan, main = exp.compare, is_main()
    started = time.time()
    prep = _start(exp, ds, splits, out, quiet)
    exp = _resolve_parallel(exp)
    config, by_runs = exp.train, exp.train.runtime.parallel == "runs"
    results: list[RunResult] = []

    def ordered(rs: list[RunResult]) -> list[RunResult]:
        return sorted(rs, key=lambda r: (plan.strategies.index(r.strategy), r.seed))

    metrics: dict[str, Any] = {}
    live = MlflowLog(out, mlflow, flatten(exp)) if mlflow and main else None  # epochs logged as they end
    all_jobs = [(s, seed) for wave in _waves(plan, config) for s in wave for seed in range(plan.seeds)]
    for wave in _waves(plan, config):
        mine: list[RunResult] = []
        jobs = [(s, seed) for s in wave for seed in range(plan.seeds)]
        for strategy, seed in my_share(jobs) if by_runs else jobs:
            if not quiet:
                finished = results + mine
                todo = [s for s, q in all_jobs if not any(r.strategy == s and r.seed == q for r in finished)]
                console.print(_run_line(strategy, seed, finished, todo), highlight=False)
            budget = _equal_compute_budget(strategy, seed, results, config)
            mine.append(train_one(prep, config, strategy, seed, model_folder(out, strategy, seed),
                                  resume=resume, quiet=quiet, budget=budget,
                                  on_epoch=live.on_epoch(strategy, seed) if live else None))
            if main:  # progress on disk as runs end (the other processes' runs arrive after the wave)
                metrics = write_results(out, exp, prep, ordered(results + mine), started, command)
        results = ordered(results + (gather_lists(mine) if by_runs else mine))
        if main:
            metrics = write_results(out, exp, prep, results, started, command)
    if main and ENSEMBLE in plan.strategies:
        results += [r for seed in range(plan.seeds) for r in ensemble_run(out, prep, seed, results, quiet)]
    if main:
        calibrate_runs(out, prep, results)
        metrics = write_results(out, exp, prep, ordered(results), started, command)
        build_report(out, prep.cache)
        best = max((r for r in results if r.strategy == metrics["winner"]), key=lambda r: r.val_acc)
        write_model_card(out, model_folder(out, best.strategy, best.seed))
        track_runs(out, flatten(exp), prep, ordered(results), metrics["winner"], live)
    return broadcast(metrics)


def _run_line(strategy: str, seed: int, done: list[RunResult], todo: list[str]) -> str:
    """"run 3 of 6: finetune seed 0 (about 4 min left)". The estimate counts, for every run still to go
    (``todo``, this one included), the mean time of that strategy's finished runs, or of all of them."""
    k, total = len(done) + 1, len(done) + len(todo)
    line = f"[bold]run {k} of {total}: {strategy}[/bold] seed {seed}"
    if done:
        overall = float(np.mean([r.seconds for r in done]))
        left = sum(float(np.mean([r.seconds for r in done if r.strategy == s] or [overall])) for s in todo)
        if left >= 1:
            line += f" (about {left / 60:.0f} min left)" if left >= 90 else f" (about {left:.0f} s left)"
    return line


def _resolve_parallel(exp: Experiment) -> Experiment:
    """``parallel=auto`` made definite: runs when the compare has at least as many trained runs as
    the torchrun job has processes (every process busy, no communication), else data."""
    rt = exp.train.runtime
    if rt.parallel != "auto":
        return exp
    runs = len([s for s in exp.compare.strategies if s != ENSEMBLE]) * exp.compare.seeds
    mode = "runs" if runs >= world_size() else "data"
    train = dataclasses.replace(exp.train, runtime=dataclasses.replace(rt, parallel=mode))
    return dataclasses.replace(exp, train=train)


def _start(exp: Experiment, ds: ImageDataset, splits: dict[str, np.ndarray], out: Path, quiet: bool) -> Prepared:
    """config.yaml and splits.npz (rank 0), and the prepared data (every process; the image cache is
    built by the first and waited for by the others)."""
    if is_main():
        write_text(ResultsFolder(out).config, yaml.safe_dump(to_dict(exp), sort_keys=False))
    prep = prepare(ds, splits, exp.train, quiet=quiet)
    _check_copies(prep, exp.train, exp.data.dedupe, quiet)
    if is_main():
        with atomic_path(ResultsFolder(out).splits) as tmp:
            np.savez(tmp, labels=ds.labelled_labels, **prep.splits)
    return prep


def _check_copies(prep: Prepared, config: TrainConfig, dedupe: bool, quiet: bool) -> None:
    """Warn about copies across the splits; with ``dedupe``, leave the redundant training copies out.
    The pretrained features this needs are those the strategies share (the feature cache)."""
    labelled = np.sort(np.concatenate([prep.splits[s] for s in ("train", "val", "test") if s in prep.splits]))
    pairs = find_duplicates(prep.cache, labelled, labelled_features(prep, config, labelled, quiet=quiet)[0],
                            short_sides(prep.dataset, labelled))
    if dedupe:
        drop = redundant_train_copies(duplicate_groups(pairs), prep.splits)
        prep.splits["train"] = np.setdiff1d(prep.splits["train"], drop)
        if is_main() and not quiet:
            console.print(f"--dedupe: {len(drop)} training image(s) left out as copies of others", highlight=False)
        return
    prep.copies = leak_warning(pairs, prep.splits)
    if prep.copies and is_main():
        warn(prep.copies)


def _equal_compute(config: TrainConfig) -> bool:
    """Whether scratch is timed against the pretrained strategies (on, unless a budget is given)."""
    return config.budget.equal_compute and config.budget.time_budget is None


def _pretrained(strategy: str, config: TrainConfig) -> bool:
    """Whether ``strategy`` brings a prior of its own (ImageNet weights or a surrogate pretraining), so
    that scratch is timed against it rather than the other way round."""
    spec = backbone_spec(config.model.backbone, config.model.image_size)
    built = build_strategy(strategy, spec.groups, config)
    return built.pretrained or built.self_supervised


def compute_seconds(result: RunResult) -> float:
    """The training time a run's result stands for: its own, plus the surrogate pretraining when that
    came from the cache (another run paid for it, but this result needs it all the same)."""
    d = result.details
    return result.seconds + ((d.surrogate_seconds or 0.0) if d.surrogate_cached else 0.0)


def _equal_compute_budget(strategy: str, seed: int, done: list[RunResult], config: TrainConfig) -> float | None:
    """Scratch's time budget: the run time of the slowest pretrained strategy with the same seed (an
    equal-compute comparison; on a CPU scratch would otherwise take longer than all the others
    together); None (no limit) when no pretrained run was trained, or when a budget is given."""
    if not _equal_compute(config) or _pretrained(strategy, config):
        return None
    times = [compute_seconds(r) for r in done
             if r.seed == seed and r.strategy != ENSEMBLE and _pretrained(r.strategy, config)]
    return max(times) if times else None
