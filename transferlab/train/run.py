"""One training run: a strategy and a seed on prepared data, from the first phase to saved weights.

For every phase the run picks the cheapest input that is still exact: when the first ``k``
groups are frozen it caches the input of group ``k + 1`` (``views`` augmented views per image) and
trains only the rest; when only the head trains on a pristine pretrained backbone, the pooled
features come from the on-disk feature store shared by all strategies and seeds. A checkpoint is
written atomically after every epoch, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..core.errors import DamagedFileError, DataError
from ..core.io import atomic_path, write_json
from ..core.layout import RunFolder
from ..core.progress import warn
from ..core.records import check_array, read_record
from ..data.datasets import ImageDataset
from ..data.imagecache import build_image_cache, build_whole_cache, cache_side
from ..data.imagestore import ImageStore
from ..data.pool import PoolSummary, pool_indices
from ..models.backbone import Backbone
from ..models.catalog import backbone_spec, create_backbone
from ..models.heads import LINEAR_HEAD, HeadSpec, TransferModel, model_config
from ..models.saved import SavedModel
from ..runtime import distributed
from ..runtime.device import Precision, configure_torch
from .batches import Batches, ImageBatches, TensorBatches
from .checkpoints import PhaseState, RunState, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .engine import PhaseContext, predict_pooled
from .features import MAX_STORED_ROW, FeatureStore, ImageSource, advance, encode, input_shape
from .novelty import FEATURE_POWER, MAX_TRAIN_FEATURES, distance_rows, nearest_distance
from .records import RunResult
from .runners import PhaseRun, runner_for
from .scores import classification_scores
from .strategies import Phase, Strategy, build_strategy


@dataclass
class Prepared:
    """Data shared by every run of an experiment: the dataset, its splits and its image cache (on disk,
    and as the store batches are cut from, on the device when it fits)."""

    dataset: ImageDataset
    splits: dict[str, np.ndarray]
    data_config: dict[str, Any]
    cache: np.ndarray
    precision: Precision
    images: ImageStore
    whole: tuple[ImageStore, np.ndarray] | None = field(default=None, repr=False)
    pool: PoolSummary | None = None  # with an unlabelled pool: its images are ``splits["pool"]``
    copies: str | None = None  # the warning about copies across the splits, when compare found some

    def whole_images(self, quiet: bool = False) -> tuple[ImageStore, np.ndarray]:
        """The whole pictures squeezed into squares and their aspect ratios, for training crops from the
        whole image (``--crop-from whole``); built on first use, as most strategies never need them."""
        if self.whole is None:
            cache, aspects = build_whole_cache(self.dataset, cache_side(self.data_config),
                                               self.data_config["interpolation"], quiet=quiet)
            self.whole = (ImageStore(cache, self.precision.device), aspects)
        return self.whole


def prepare(dataset: ImageDataset, splits: dict[str, np.ndarray], config: TrainConfig,
            quiet: bool = True) -> Prepared:
    """Resolve the preprocessing of the backbone and decode every image once into the cache. A dataset
    with an unlabelled pool appended (``data.pool.with_pool``) gets ``splits["pool"]``: its images
    that are no copy of a labelled one."""
    data_config = backbone_spec(config.model.backbone, config.model.image_size).data_config
    cache = build_image_cache(dataset, cache_side(data_config), data_config["interpolation"], quiet=quiet)
    pool = None
    if dataset.pool_source:
        kept, duplicates = pool_indices(cache, dataset.labels)
        splits = {**splits, "pool": kept}
        if not len(kept):
            raise DataError(f"every image of the unlabelled pool {dataset.pool_source} is also a labelled image "
                            f"({duplicates} copies); pass a folder of other images")
        pool = PoolSummary(dataset.pool_source, len(splits["pool"]), duplicates, dataset.pool_skipped)
    rt = config.runtime
    if rt.deterministic:
        configure_torch(deterministic=True)
    precision = Precision.choose(rt.device, rt.fp32, rt.fold_bn, rt.compile)
    return Prepared(dataset, splits, data_config, cache, precision, ImageStore(cache, precision.device), pool=pool)


class PhaseInputs:
    """The batches of each phase, at the level where its first trainable part starts.

    Levels: 0 is the image; ``k`` the input of group ``k``; ``pooled_level`` the head's input.
    A cached prefix is carried from phase to phase while nothing below it trains (chain-thaw).
    """

    def __init__(self, model: TransferModel, prep: Prepared, config: TrainConfig, store: FeatureStore | None,
                 quiet: bool, data_parallel: bool = False):
        self.model, self.prep, self.config, self.store, self.quiet = model, prep, config, store, quiet
        self.batch_size = config.budget.batch_size
        self.images = ImageSource(prep.images, prep.data_config, prep.precision,
                                  prep.precision.inference_batch(self.batch_size), quiet, sharded=data_parallel)
        self.prefix: tuple[Batches, Batches] | None = None  # cached (train, val) inputs of an inner level
        self.inner: dict[int, FeatureStore | None] = {}  # the stores of inner levels (``store_of``)

    def level(self, phase: Phase) -> int:
        """The model level where the first trainable part of ``phase`` starts (0 = the image)."""
        if not phase.body_trainable:
            return self.model.pooled_level
        if not (self.config.runtime.prefix_cache and self.model.sequential):
            return 0
        return min(self.model.group_index(n) for n in phase.body_trainable)

    def batches(self, idx: np.ndarray, level: int, views: int, pristine: bool, train: bool = False) -> Batches:
        """Batches of the images ``idx`` at ``level`` (``train``: shuffled, augmented when the schedule says
        so, in training batches); from the feature store when the body is ``pristine``."""
        labels = self.prep.dataset.labels
        size = self.batch_size if train else self.images.batch_size
        if level == 0:
            augment = train and self.config.augment.augment
            images, aspects = self.prep.images, None
            if augment and self.config.augment.crop_from == "whole":
                images, aspects = self.prep.whole_images(self.quiet)
            return ImageBatches(images, idx, labels, self.prep.data_config, size, augment,
                                self.config.augment.augment_policy, aspects)
        store = self.store_of(level) if pristine else None
        if store is not None:
            feats = store.get(self.model, self.images, idx, views).to(self.prep.precision.device)
            return TensorBatches(feats, torch.as_tensor(labels[idx]), level, size)
        return encode(self.model, self.images, idx, labels, level, views, size)

    def store_of(self, level: int) -> FeatureStore | None:
        """The on-disk store of the pretrained body's output at ``level`` (the pooled features, or the
        input of an inner group whose rows are small enough to keep), or None."""
        if self.store is None or level == self.model.pooled_level:
            return self.store
        if level not in self.inner:
            shape = input_shape(self.model, level, self.prep.data_config, self.prep.precision)
            self.inner[level] = self.store.at_level(level, shape) if np.prod(shape) <= MAX_STORED_ROW else None
        return self.inner[level]

    def views(self, augmented: bool) -> int:
        """Cached views per image for a runner that trains on augmented ones (``augmented``), or not."""
        aug = self.config.augment
        return aug.views if augmented and aug.augment else 1

    def for_phase(self, phase: Phase, pristine: bool) -> tuple[Batches, Batches]:
        """(train, val) batches for ``phase``."""
        level, splits = self.level(phase), self.prep.splits
        views = self.views(runner_for(phase).augmented)
        if self.prefix is not None and 0 < self.prefix[0].level <= level < self.model.pooled_level:
            train, val = (advance(self.model, b, level, self.prep.precision) for b in self.prefix)
        else:
            train = self.batches(splits["train"], level, views, pristine, train=True)
            val = self.batches(splits["val"], level, 1, pristine)
        self.prefix = (train, val) if 0 < level < self.model.pooled_level else None
        train.balanced = self.config.imbalance.balanced_sampler
        return train, val

    def pool_for(self, phase: Phase, pristine: bool) -> Batches | None:
        """The centre views of the unlabelled pool at ``phase``'s level, for runners that learn from it."""
        runner = runner_for(phase)
        if not runner.pool or (runner.pool_optional and "pool" not in self.prep.splits):
            return None
        if "pool" not in self.prep.splits:
            raise DataError(f"{phase.name} learns from unlabelled images: pass --unlabelled PATH")
        return self.batches(self.prep.splits["pool"], self.level(phase), self.views(runner.pool_views), pristine)

    def after_phase(self, phase: Phase) -> None:
        """Drop the cached prefix if a group below its level has just trained."""
        trained = [self.model.group_index(n) for n in phase.body_trainable]
        if self.prefix is not None and trained and min(trained) < self.prefix[0].level:
            self.prefix = None


def _build_model(config: TrainConfig, strategy: Strategy, seed: int,
                 num_classes: int) -> tuple[TransferModel, Backbone, HeadSpec]:
    torch.manual_seed(seed)  # for scratch: the backbone's initial weights
    backbone = create_backbone(config.model.backbone, pretrained=strategy.pretrained,
                               image_size=config.model.image_size)
    head = LINEAR_HEAD if strategy.linear_head else HeadSpec(config.head.head_hidden, config.head.dropout)
    torch.manual_seed(seed)  # the head's initial weights
    return TransferModel(backbone, num_classes, head), backbone, head


def _save_model(folder: RunFolder, model: TransferModel, info: dict[str, Any]) -> None:
    with atomic_path(folder.weights) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
    write_json(folder.model, info)


def save_predictions(run_dir: Path, test_probs: np.ndarray, val_probs: np.ndarray) -> None:
    """What later steps read without the model: the test labels predicted (the report), and the
    class probabilities on test and validation (ensembles are chosen on validation)."""
    folder = RunFolder(run_dir)
    with atomic_path(folder.test_predictions) as tmp:
        np.save(tmp, test_probs.argmax(1))
    for path, probs in ((folder.test_probs, test_probs), (folder.val_probs, val_probs)):
        with atomic_path(path) as tmp:
            np.save(tmp, probs.astype(np.float32))


def _train_features(model: TransferModel, inputs: PhaseInputs, prep: Prepared, level: int, pristine: bool,
                    seed: int) -> torch.Tensor:
    """The model's pooled features of the training images (the unknown-input distance is to them), as
    ``novelty.distance_rows`` makes them, in float16; a random ``MAX_TRAIN_FEATURES`` of them when there
    are more."""
    idx = prep.splits["train"]
    if len(idx) > MAX_TRAIN_FEATURES:
        idx = np.sort(np.random.default_rng(seed).choice(idx, MAX_TRAIN_FEATURES, replace=False))
    feats = predict_pooled(model, inputs.batches(idx, level, 1, pristine), prep.precision)[1]
    return distance_rows(feats, FEATURE_POWER).half()


def save_distances(folder: RunFolder, train: torch.Tensor, val: torch.Tensor, test: torch.Tensor) -> None:
    """The training features predict measures new images against, and the validation and test images'
    distances to them (the unknown-input threshold is chosen on validation, the report shows test), with
    the power ``train`` was made with (the rule fitted on these distances records it for predict)."""
    with atomic_path(folder.train_features) as tmp:
        save_file({"features": train.contiguous()}, str(tmp), metadata={"feature_power": str(FEATURE_POWER)})
    with atomic_path(folder.distances) as tmp:
        np.savez(tmp, val=nearest_distance(train, val, FEATURE_POWER),
                 test=nearest_distance(train, test, FEATURE_POWER), power=np.float64(FEATURE_POWER))


def load_probabilities(path: Path, rows: int, classes: int | None, fix: str = "") -> np.ndarray:
    """Saved class probabilities (``rows`` x ``classes``, float) read back; a file cut short, of
    another shape or with values that are not probabilities is a ``DamagedFileError``."""
    try:
        probs = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DamagedFileError(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__, fix) from None
    if probs.dtype.kind != "f":
        raise DamagedFileError(path, f"holds {probs.dtype} values, not probabilities", fix)
    probs = check_array(path, probs, (rows, classes), fix)
    if (probs < 0).any() or (probs > 1 + 1e-4).any():
        raise DamagedFileError(path, "holds values outside 0..1, not probabilities", fix)
    return probs


def _predictions_intact(folder: RunFolder, prep: Prepared) -> bool:
    """Whether a finished run's saved probabilities and model.json read back whole (what ensembles,
    calibration and predict read); a run whose files are damaged is trained again on resume."""
    k = len(prep.dataset.classes)
    try:
        load_probabilities(folder.val_probs, len(prep.splits["val"]), k)
        load_probabilities(folder.test_probs, len(prep.splits["test"]), k)
        if read_record(SavedModel, folder.model).classes != prep.dataset.classes or not folder.weights.is_file():
            raise DamagedFileError(folder.model, "its classes are not the data's, or the weights are missing")
    except DamagedFileError as exc:
        warn(str(exc))
        return False
    return True


__all__ = ["Prepared", "RunResult", "load_probabilities", "prepare", "save_predictions", "train_one"]


class _Checkpointer:
    """Writes the run's state after every epoch and after every phase."""

    def __init__(self, path: Path, model: TransferModel, state: RunState, writes: bool = True,
                 on_epoch: Callable[[list[dict[str, Any]]], None] | None = None):
        self.path, self.model, self.state, self.writes, self.on_epoch = path, model, state, writes, on_epoch
        self.t_start = time.perf_counter() - state.elapsed

    def save(self, phase_index: int, phase_state: PhaseState | None, history: list[dict[str, Any]]) -> None:
        s = self.state
        if not self.writes:
            return
        save_checkpoint(RunState(self.model.state_dict(), phase_index, phase_state, history, s.body_changed,
                                 s.details, time.perf_counter() - self.t_start), self.path)

    def _so_far(self, i: int) -> Callable[[PhaseState], list[dict[str, Any]]]:
        """The run's whole history, given phase ``i``'s state: the earlier phases' rows, then its own."""
        before = [h for h in self.state.history if h["phase_index"] < i]
        return lambda st: before + [{**h, "phase_index": i} for h in st.history]

    def during(self, i: int) -> Callable[[PhaseState], None]:
        """The per-epoch callback of phase ``i``."""
        so_far = self._so_far(i)
        return lambda st: self.save(i, st, so_far(st))

    def epoch_end(self, i: int) -> Callable[[PhaseState], None] | None:
        """The every-epoch callback of phase ``i``: ``on_epoch`` with the run's whole history so far."""
        if self.on_epoch is None or not self.writes:
            return None
        so_far = self._so_far(i)
        return lambda st: self.on_epoch(so_far(st))


def _run_phases(model: TransferModel, strategy: Strategy, inputs: PhaseInputs, ckpt: _Checkpointer,
                ctx: PhaseContext) -> None:
    """Run the strategy's phases from the checkpointed one on; record each in ``ckpt.state``."""
    state, start = ckpt.state, ckpt.state.phase_index
    for i, phase in enumerate(strategy.phases):
        if i < start:
            continue
        before = [h for h in state.history if h["phase_index"] < i]
        train, val = inputs.for_phase(phase, pristine=not state.body_changed)
        phase_ctx = dataclasses.replace(ctx, phase_index=i, checkpoint=ckpt.during(i), epoch_end=ckpt.epoch_end(i),
                                        resume=state.phase_state if i == start else None)
        pool = inputs.pool_for(phase, pristine=not state.body_changed)
        run = PhaseRun(model, phase, train, val, phase_ctx, state.details, pool,
                       restart=lambda i=i, before=before: ckpt.save(i, None, before))
        rows = runner_for(phase).run(run)
        state.history = before + [{**h, "phase_index": i} for h in rows]
        state.body_changed = state.body_changed or bool(phase.body_trainable)
        inputs.after_phase(phase)
        ckpt.save(i + 1, None, state.history)


def _resumed_state(model: TransferModel, folder: RunFolder, phases: int) -> RunState | None:
    """The checkpoint of an interrupted run, loaded into ``model``; None (and a warning) when there is
    none or it cannot be used, so the run starts from its beginning."""
    try:
        state = load_checkpoint(folder.checkpoint)
        if state is not None:
            if state.phase_index > phases:
                raise DamagedFileError(folder.checkpoint, f"phase {state.phase_index} of a strategy with {phases}")
            model.load_state_dict(state.model)
    except DamagedFileError as exc:
        warn(f"{exc}; starting this run from its beginning")
        return None
    except RuntimeError as exc:  # weights of another model (missing keys, other shapes)
        warn(f"{folder.checkpoint} holds weights of another model ({str(exc).splitlines()[0]}); "
             "starting this run from its beginning")
        return None
    return state


def train_one(prep: Prepared, config: TrainConfig, strategy_name: str, seed: int, run_dir: Path,  # noqa: PLR0913
              resume: bool = False, quiet: bool = True, budget: float | None = None,
              on_epoch: Callable[[list[dict[str, Any]]], None] | None = None) -> RunResult:
    """Train ``strategy_name`` with ``seed``; write weights to ``run_dir``; return its metrics.

    ``on_epoch``: called after every epoch of a trained phase with the run's history so far (the rows
    of history.csv; a resumed run's first call holds the epochs before the interruption too).

    ``budget``: seconds of training after which no new epoch starts (default: ``--time-budget``,
    ``config.budget.time_budget``); counted from the run's start, across a resume. Under torchrun with
    ``config.runtime.parallel == "data"`` every process trains this run together (DDP) and rank 0
    alone writes its files."""
    data_parallel = config.runtime.parallel == "data" and distributed.joined()
    writes = not data_parallel or distributed.is_main()
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(run_dir)
    if resume and folder.result.is_file():
        try:
            done = RunResult.read(folder.result)
            if done.strategy == strategy_name and done.seed == seed and _predictions_intact(folder, prep):
                return done
            warn(f"{folder.result} is of another run or its probabilities are missing; training this run again")
        except DamagedFileError as exc:
            warn(f"{exc}; training this run again")

    spec = backbone_spec(config.model.backbone, config.model.image_size)
    strategy = build_strategy(strategy_name, spec.groups, config)
    classes = prep.dataset.classes
    model, backbone, head = _build_model(config, strategy, seed, len(classes))
    prep.precision.to_model(model)
    state = _resumed_state(model, folder, len(strategy.phases)) if resume else None
    if resume and state is None:  # a fresh start: the weights as built (a refused checkpoint may have loaded in part)
        model, backbone, head = _build_model(config, strategy, seed, len(classes))
        prep.precision.to_model(model)
    ckpt = _Checkpointer(folder.checkpoint, model, state or RunState(model={}), writes, on_epoch)
    store = FeatureStore(backbone, prep.dataset, bf16=prep.precision.bf16) if strategy.pretrained else None
    inputs = PhaseInputs(model, prep, config, store, quiet, data_parallel)
    budget = budget if budget is not None else config.budget.time_budget
    if budget is not None:
        ckpt.state.details.budget_s = round(budget, 1)
    ctx = PhaseContext(prep.precision, seed=seed, checkpoint_seconds=config.runtime.checkpoint_seconds, quiet=quiet,
                       deadline=None if budget is None else ckpt.t_start + budget, data_parallel=data_parallel)
    _run_phases(model, strategy, inputs, ckpt, ctx)

    # Final metrics at the cheapest exact level.
    pristine = not ckpt.state.body_changed
    level = model.pooled_level if pristine and store is not None else 0
    labels = torch.as_tensor(prep.dataset.labels)
    y, val_y = labels[prep.splits["test"]], labels[prep.splits["val"]]
    logits, test_feats = predict_pooled(model, inputs.batches(prep.splits["test"], level, 1, pristine), prep.precision)
    val_logits, val_feats = predict_pooled(model, inputs.batches(prep.splits["val"], level, 1, pristine),
                                           prep.precision)
    val_acc = float((val_logits.argmax(1) == val_y).float().mean())
    seconds = time.perf_counter() - ckpt.t_start
    train_feats = _train_features(model, inputs, prep, level, pristine, seed)

    if writes:
        _save_model(folder, model, {**model_config(backbone, len(classes), head, classes),
                                     "strategy": strategy_name, "seed": seed})
        save_predictions(run_dir, logits.softmax(1).numpy(), val_logits.softmax(1).numpy())
        save_distances(folder, train_feats, val_feats, test_feats)
    history = ckpt.state.history
    result = RunResult(strategy_name, seed, float((logits.argmax(1) == y).float().mean()), val_acc,
                       float(F.cross_entropy(logits, y)), len(history), seconds,
                       [{k: v for k, v in h.items() if k != "phase_index"} for h in history], ckpt.state.details,
                       classification_scores(logits.softmax(1).numpy(), y.numpy(), classes))
    if writes:
        write_json(folder.result, result.to_dict())
        folder.checkpoint.unlink(missing_ok=True)
    if data_parallel:
        distributed.barrier()  # the files exist before any process moves on
    return result
