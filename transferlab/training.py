"""One training run: a strategy and a seed on prepared data, from the first phase to saved weights.

For every phase the run picks the cheapest input that is still exact: when the first ``k``
groups are frozen it caches the input of group ``k + 1`` (``views`` augmented views per image) and
trains only the rest; when only the head trains on a pristine pretrained backbone, the pooled
features come from the on-disk feature store shared by all strategies and seeds. A checkpoint is
written atomically after every epoch, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from .backbones import DEFAULT_BACKBONE, Backbone, create_backbone
from .data import ImageDataset
from .engine import Batches, ImageBatches, TensorBatches, evaluate, fit_phase, predict_logits
from .features import FeatureStore, advance, encode
from .heads import LINEAR_HEAD, HeadSpec, TransferModel, model_config
from .imagecache import build_image_cache, cache_side
from .runtime import Precision, tune_allocator
from .strategies import HEAD, Phase, Strategy, StrategyOptions, build_strategy


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a run's result besides the data (written to config.yaml)."""

    backbone: str = DEFAULT_BACKBONE
    image_size: int | None = None
    batch_size: int = 32
    augment: bool = True
    views: int = 3  # cached views per image for phases with a frozen prefix (the first is the centre crop)
    head_hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.3
    max_epochs: int | None = None
    patience: int | None = None
    probe_model: str = "logreg"
    discriminative: bool = False
    prefix_cache: bool = True
    device: str = "auto"
    fp32: bool = False
    fold_bn: bool = True

    def options(self) -> StrategyOptions:
        return StrategyOptions(probe_model=self.probe_model, discriminative=self.discriminative).scaled(
            self.max_epochs, self.patience)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass
class Prepared:
    """Data shared by every run of an experiment: the dataset, its splits and its image cache."""

    dataset: ImageDataset
    splits: dict[str, np.ndarray]
    data_config: dict[str, Any]
    cache: np.ndarray
    precision: Precision


def prepare(dataset: ImageDataset, splits: dict[str, np.ndarray], config: TrainConfig,
            quiet: bool = False) -> Prepared:
    """Resolve the preprocessing of the backbone and decode every image once into the cache."""
    tune_allocator()
    bb = create_backbone(config.backbone, pretrained=False, image_size=config.image_size)
    side = cache_side(bb.data_config)
    cache = build_image_cache(dataset, side, bb.data_config["interpolation"], quiet=quiet)
    return Prepared(dataset, splits, bb.data_config, cache,
                    Precision.choose(config.device, config.fp32, config.fold_bn))


@dataclass
class RunResult:
    strategy: str
    seed: int
    test_acc: float
    val_acc: float
    test_loss: float
    epochs: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the C the probe's cross-validation chose

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "history"}


# ---------------------------------------------------------------------------------------------
# Checkpoints


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# The run


def _first_level(model: TransferModel, backbone: Backbone, phase: Phase, prefix_cache: bool) -> int:
    """The model level where the first trainable part of ``phase`` starts (0 = the image)."""
    names = [g.name for g in backbone.groups]
    if HEAD in phase.trainable and len(phase.trainable) == 1:
        return model.pooled_level
    if not (prefix_cache and backbone.sequential):
        return 0
    return min(names.index(n) for n in phase.trainable if n != HEAD)


def _inputs(model: TransferModel, prep: Prepared, idx: np.ndarray, level: int, views: int,
            augment: bool, store: FeatureStore | None, batch_size: int, quiet: bool) -> Batches:
    labels = prep.dataset.labels
    if level == 0:
        return ImageBatches(prep.cache, idx, labels, prep.data_config, batch_size, augment)
    if level == model.pooled_level and store is not None:
        feats = store.get(model, prep.cache, idx, views, prep.data_config, prep.precision, batch_size, quiet)
        return TensorBatches(feats, torch.as_tensor(labels[idx]), level, batch_size)
    return encode(model, prep.cache, idx, labels, level, views, prep.data_config, prep.precision,
                  batch_size, quiet=quiet)


def _fit_probe(model: TransferModel, phase: Phase, train: TensorBatches, seed: int) -> float:
    """Fit a scikit-learn linear model (C by stratified CV) on pooled features; fold it into the head.
    Returns the chosen C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    x, y = train.tensors[0].numpy(), train.labels.numpy()
    if phase.options.get("model", "logreg") == "svm":
        clf, key = LinearSVC(dual="auto", max_iter=5000), "linearsvc__C"
    else:
        clf, key = LogisticRegression(max_iter=3000), "logisticregression__C"
    smallest = int(np.bincount(y).min())
    pipe = make_pipeline(StandardScaler(), clf)
    if smallest >= 2:
        search = GridSearchCV(pipe, {key: np.logspace(-4, 2, 7)},
                              cv=StratifiedKFold(min(5, smallest), shuffle=True, random_state=seed))
        search.fit(x, y)
        pipe, chosen = search.best_estimator_, float(search.best_params_[key])
    else:  # one example per class: nothing to cross-validate on, keep scikit-learn's default C
        pipe.fit(x, y)
        chosen = 1.0
    scaler, fitted = pipe[0], pipe[-1]
    coef, intercept = fitted.coef_, fitted.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row, the logit of class 1
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    # The scaler folds into the linear layer: w' = w / s, b' = b - w' . m.
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    linear = model.head[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return chosen


def train_one(prep: Prepared, config: TrainConfig, strategy_name: str, seed: int, run_dir: Path,
              resume: bool = False, quiet: bool = False) -> RunResult:
    """Train ``strategy_name`` with ``seed``; write weights to ``run_dir``; return its metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    done = run_dir / "result.json"
    if resume and done.is_file():
        saved = json.loads(done.read_text())
        return RunResult(**saved)

    torch.manual_seed(seed)  # for scratch: the backbone's initial weights
    backbone = create_backbone(config.backbone, pretrained=False, image_size=config.image_size)
    strategy: Strategy = build_strategy(strategy_name, [g.name for g in backbone.groups], config.options())
    if strategy.pretrained:
        backbone = create_backbone(config.backbone, pretrained=True, image_size=config.image_size)
    head = LINEAR_HEAD if strategy.linear_head else HeadSpec(config.head_hidden, config.dropout)
    classes = prep.dataset.classes
    torch.manual_seed(seed)  # the head's initial weights
    model = TransferModel(backbone, len(classes), head)
    prep.precision.to_model(model)

    ckpt_path = run_dir / "checkpoint.pt"
    state = load_checkpoint(ckpt_path) if resume else None
    history: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    start_phase, elapsed, body_changed, phase_state = 0, 0.0, False, None
    if state is not None:
        model.load_state_dict(state["model"])
        start_phase, elapsed, body_changed = state["phase_index"], state["elapsed"], state["body_changed"]
        history, phase_state, details = state["history"], state["phase_state"], state.get("details", {})
    t_start = time.perf_counter() - elapsed
    store = FeatureStore(backbone, prep.dataset, bf16=prep.precision.bf16) if strategy.pretrained else None
    train_idx, val_idx = prep.splits["train"], prep.splits["val"]

    def save(phase_index: int, phase_state: dict | None, hist: list[dict[str, Any]]) -> None:
        save_atomic({"model": model.state_dict(), "phase_index": phase_index, "phase_state": phase_state,
                     "history": hist, "body_changed": body_changed, "details": details,
                     "elapsed": time.perf_counter() - t_start}, ckpt_path)

    names = [g.name for g in backbone.groups]
    prefix: tuple[Batches, Batches] | None = None  # cached (train, val) inputs of an intermediate level
    for i, phase in enumerate(strategy.phases):
        if i < start_phase:
            continue
        level = _first_level(model, backbone, phase, config.prefix_cache)
        pristine = None if body_changed else store
        views = config.views if config.augment and phase.kind == "torch" else 1
        if prefix is not None and 0 < prefix[0].level <= level < model.pooled_level:
            train, val = (advance(model, b, level, prep.precision) for b in prefix)
        else:
            train = _inputs(model, prep, train_idx, level, views, config.augment, pristine, config.batch_size, quiet)
            val = _inputs(model, prep, val_idx, level, 1, False, pristine, config.batch_size, quiet)
        prefix = (train, val) if 0 < level < model.pooled_level else None
        done_before = [h for h in history if h["phase_index"] < i]
        if phase.kind == "probe":
            t0 = time.perf_counter()
            details[f"{phase.name}_C"] = _fit_probe(model, phase, train, seed)
            val_loss, val_acc = evaluate(model, val, prep.precision)
            rows = [{"phase": phase.name, "epoch": 1, "train_loss": float("nan"), "val_loss": val_loss,
                     "val_acc": val_acc, "seconds": time.perf_counter() - t0}]
        else:
            resume_state = phase_state if (state is not None and i == start_phase) else None

            def checkpoint(st: dict, i: int = i, before: list = done_before) -> None:
                save(i, st, before + [{**h, "phase_index": i} for h in st["history"]])

            result = fit_phase(model, backbone.groups, phase, train, val, prep.precision, seed=seed,
                               phase_index=i, resume=resume_state, checkpoint=checkpoint, quiet=quiet)
            rows = result.history
        history = done_before + [{**h, "phase_index": i} for h in rows]
        body_changed = body_changed or any(n != HEAD for n in phase.trainable)
        trained = [names.index(n) for n in phase.trainable if n != HEAD]
        if prefix is not None and trained and min(trained) < prefix[0].level:
            prefix = None  # a group below the cached level changed: the cache is stale
        save(i + 1, None, history)

    # Final metrics at the cheapest exact level.
    level = model.pooled_level if not body_changed and store is not None else 0
    test = _inputs(model, prep, prep.splits["test"], level, 1, False, None if body_changed else store,
                   config.batch_size, quiet)
    val = _inputs(model, prep, val_idx, level, 1, False, None if body_changed else store, config.batch_size, quiet)
    logits, y = predict_logits(model, test, prep.precision)
    _, val_acc = evaluate(model, val, prep.precision)
    seconds = time.perf_counter() - t_start

    info = model_config(backbone, len(classes), head, classes)
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, run_dir / "model.safetensors")
    (run_dir / "model.json").write_text(json.dumps({**info, "strategy": strategy_name, "seed": seed}, indent=2))
    np.save(run_dir / "test_predictions.npy", logits.argmax(1).numpy())
    result = RunResult(strategy_name, seed, float((logits.argmax(1) == y).float().mean()), val_acc,
                       float(F.cross_entropy(logits, y)), len(history), seconds,
                       [{k: v for k, v in h.items() if k != "phase_index"} for h in history], details)
    done.write_text(json.dumps(result.__dict__))
    ckpt_path.unlink(missing_ok=True)
    return result
