"""Feature extraction: an on-disk cache of pooled backbone features, in-memory caches of the input
of any layer group, and a scikit-learn compatible transformer.

Frozen work is done once. The pooled features of the *pretrained* backbone are the same for every
strategy that starts with a frozen backbone (features, probe, the warm-up of finetune, chain-thaw
and gradual) and every seed, so they are stored on disk, keyed by backbone, weights,
preprocessing, data fingerprint and augmentation view. So are the pristine body's inputs of an inner
group whose rows are small (``MAX_STORED_ROW``: self-train's students start at lite0's second-to-last
group, and encoding it for 3 views of some 2,700 images took about 2 minutes of every run). Once a
group below has trained (chain-thaw changes them step by step), inner inputs are computed per phase,
in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from ..core.io import allocate, atomic_path, ensure_free_space, folder_lock, remove_stale_temporaries
from ..core.paths import cache_home
from ..core.progress import progress_bar
from ..data.datasets import ImageDataset
from ..data.imagecache import cache_side, resize_center
from ..data.images import open_rgb
from ..data.imagestore import ImageStore
from ..data.transforms import eval_batch, view_batch
from ..models.backbone import DEFAULT_BACKBONE, Backbone
from ..models.catalog import create_backbone
from ..models.heads import TransferModel
from ..runtime import distributed
from ..runtime.bnfold import folded_batchnorm
from ..runtime.device import Precision
from .batches import TensorBatches

MAX_VIEWS = 8


@dataclass(frozen=True)
class ImageSource:
    """The image store and how its images become model inputs, for no-grad encoding passes."""

    images: ImageStore
    data_config: dict[str, Any]
    precision: Precision
    batch_size: int = 32  # no gradients are kept: on a GPU this can be far larger than the training batch
    quiet: bool = False
    sharded: bool = False  # data-parallel torchrun job: each process encodes its share, the rows are gathered

    def view(self, indices: np.ndarray, view: int, aug_seed: int = 0) -> torch.Tensor:
        """View ``view`` of the images ``indices`` (0: the centre crop; see ``data.transforms.view_batch``)."""
        return view_batch(self.images.gather(indices), indices, view, self.data_config, aug_seed)


@torch.no_grad()
def _run(model: TransferModel, x: torch.Tensor, stop: int, precision: Precision, start: int = 0) -> torch.Tensor:
    """Levels ``start`` .. ``stop`` of ``model`` on ``x``; float32, on the model's device."""
    with precision.autocast():
        return model.features(precision.to_input(x), start, stop=stop).float()


def _folded(model: TransferModel, sample: torch.Tensor, start: int, stop: int,
            precision: Precision) -> contextlib.AbstractContextManager:
    """BatchNorm folded (runtime.bnfold) for passes from ``start`` to ``stop``; ``sample``: a few inputs.
    The search pass runs in float32 (see ``runtime.bnfold.folded_batchnorm``)."""
    fp32 = dataclasses.replace(precision, bf16=False)
    return folded_batchnorm(model, lambda: _run(model, sample[:2].float(), stop, fp32, start),
                            key=("features", start, stop), enabled=precision.fold_bn, memo=model.fold_memo)


def _encode_view(model: TransferModel, images: ImageSource, idx: np.ndarray, view: int, level: int, bar: Any,
                 aug_seed: int = 0) -> torch.Tensor:
    """The input of ``level`` for view ``view`` of the images ``idx``, in that order (float32, on the
    model's device). With ``images.sharded`` this process encodes rows rank, rank + W, ... and every
    process gets all rows."""
    world = distributed.world_size()
    sharded = images.sharded and len(idx) >= world
    mine = idx[distributed.rank()::world] if sharded else idx
    chunks = []
    for s in range(0, len(mine), images.batch_size):
        part = mine[s:s + images.batch_size]
        chunks.append(_run(model, images.view(part, view, aug_seed), level, images.precision))
        bar.advance(len(part))
    if not sharded:
        return torch.cat(chunks)
    bar.advance(len(idx) - len(mine))  # the other processes' rows
    return distributed.gather_rows(torch.cat(chunks), len(idx))


# The modules whose code decides what an extracted feature is: preprocessing, the image cache, the
# backbones, BatchNorm folding, precision and this module. The cache key holds a digest of their source,
# so features extracted by an earlier version are never reused: a stale cache once changed the demo's
# finetune result from 96.2% to 91.3% without a word.
EXTRACTION_MODULES = ("transferlab.train.features", "transferlab.data.transforms", "transferlab.data.imagecache",
                      "transferlab.data.imagestore", "transferlab.data.images", "transferlab.models.builders",
                      "transferlab.models.backbone", "transferlab.models.catalog", "transferlab.models.lite_weights",
                      "transferlab.models.heads", "transferlab.runtime.bnfold", "transferlab.runtime.device")


@functools.cache
def extraction_code() -> str:
    """A digest of the source of ``EXTRACTION_MODULES`` (part of the feature cache's key)."""
    import importlib

    digest = hashlib.sha256()
    for name in EXTRACTION_MODULES:
        digest.update(Path(importlib.import_module(name).__file__).read_bytes())
    return digest.hexdigest()[:16]


# The largest row an inner level's store keeps (floats per view of an image): lite0's inputs of its
# last groups (9,408 to 15,680 floats, 37-61 KB) are stored; the early levels (up to 400,000) are not.
MAX_STORED_ROW = 16_384


class FeatureStore:
    """What the pretrained backbone gives for every (image, view), computed on demand, kept on disk:
    its pooled features (``level`` None), or the input of group ``level`` (rows of ``row_shape``) that a
    phase training only the groups above it starts from. One file per view, made on first use."""

    def __init__(self, backbone: Backbone, ds: ImageDataset, aug_seed: int = 0, bf16: bool = False,
                 level: int | None = None, row_shape: tuple[int, ...] | None = None):
        # bf16 features differ from fp32 ones in the third digit: they are kept apart.
        spec = {"backbone": backbone.name, "weights": backbone.meta.get("weights"),
                "data_config": {k: str(v) for k, v in sorted(backbone.data_config.items())},
                "fingerprint": ds.fingerprint, "aug_seed": aug_seed, "bf16": bf16, "code": extraction_code(),
                "level": level}
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = cache_home() / ("features" if level is None else "inputs") / key
        self.aug_seed, self.level = aug_seed, level
        self.made_from = (backbone, ds, aug_seed, bf16)
        self.row_shape = (backbone.num_features,) if level is None else tuple(row_shape)
        self.rows = len(ds)
        self.views: dict[int, np.ndarray] = {}
        with folder_lock(self.folder, wait=True):
            remove_stale_temporaries(self.folder)
        done = self.folder / "done.npy"
        self.done = np.load(done) if done.is_file() else np.zeros((len(ds), MAX_VIEWS), dtype=bool)

    def at_level(self, level: int, row_shape: tuple[int, ...]) -> FeatureStore:
        """The store of the same backbone, data and views for the inputs of group ``level``."""
        return FeatureStore(*self.made_from, level=level, row_shape=row_shape)

    def _view(self, view: int) -> np.ndarray:
        """View ``view``'s rows (memory-mapped), the file made whole under the folder's lock the first time:
        two processes never both create (truncate) it. Not to be called with the lock held (it is not
        reentrant)."""
        if view not in self.views:
            path, shape = self.folder / f"view{view}.npy", (self.rows, *self.row_shape)
            with folder_lock(self.folder, wait=True):
                if not path.is_file():
                    ensure_free_space(self.folder, int(np.prod(shape)) * 4, "the feature cache",
                                      "set TRANSFERLAB_HOME to a folder on a disk with room")
                    with atomic_path(path) as tmp:
                        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape).flush()
                        allocate(tmp)
            self.views[view] = np.lib.format.open_memmap(path, mode="r+", dtype=np.float32, shape=shape)
        return self.views[view]

    def _save_done(self) -> None:
        with atomic_path(self.folder / "done.npy") as tmp:
            np.save(tmp, self.done)

    def get(self, model: TransferModel, images: ImageSource, indices: np.ndarray, views: int) -> torch.Tensor:
        """Rows (views, len(indices), *row_shape); computes (with the pristine pretrained ``model``) what is
        missing. With ``images.sharded`` every process of the job must call this together."""
        views = min(views, MAX_VIEWS)
        for v in range(views):  # opened (made) before the lock below is held: ``_view`` takes it to make one
            self._view(v)
        if images.sharded:
            self._fill_together(model, images, indices, views)
        elif not self.done[indices, :views].all():
            with folder_lock(self.folder, wait=True):  # another process may be filling it too
                self._reload_done()
                todo = self._todo(indices, views, ~self.done[indices, :views])
                for (v, idx), rows in zip(todo, self._extract(model, images, todo)):
                    self._write(v, idx, rows)
        return torch.from_numpy(np.stack([self._view(v)[indices] for v in range(views)]))

    def _reload_done(self) -> None:
        done = self.folder / "done.npy"
        if done.is_file():
            self.done |= np.load(done)

    @staticmethod
    def _todo(indices: np.ndarray, views: int, missing: np.ndarray) -> list[tuple[int, np.ndarray]]:
        return [(v, indices[missing[:, v]]) for v in range(views) if missing[:, v].any()]

    def _extract(self, model: TransferModel, images: ImageSource,
                 todo: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        """The features of each (view, images) of ``todo``."""
        if not todo:
            return []
        model.eval()
        level, first = model.pooled_level if self.level is None else self.level, todo[0][1][:2]
        what = "extracting features" if self.level is None else f"caching level {level}"
        with progress_bar(what, sum(len(idx) for _, idx in todo), images.quiet) as bar, \
                _folded(model, images.view(first, 0, self.aug_seed), 0, level, images.precision):
            return [_encode_view(model, images, idx, v, level, bar, self.aug_seed).cpu().numpy() for v, idx in todo]

    def _write(self, view: int, idx: np.ndarray, rows: np.ndarray) -> None:
        target = self._view(view)
        target[idx] = rows
        target.flush()
        self.done[idx, view] = True
        self._save_done()

    def _fill_together(self, model: TransferModel, images: ImageSource, indices: np.ndarray, views: int) -> None:
        """A data-parallel job's fill: what any process lacks (nodes may have caches of their own) is
        encoded by all of them, a share each; the first process of every node writes it."""
        with folder_lock(self.folder, wait=True):  # never held across a collective
            self._reload_done()
        missing = np.logical_or.reduce(distributed.gather_lists([~self.done[indices, :views]]))
        todo = self._todo(indices, views, missing)
        rows = self._extract(model, images, todo)
        if todo and distributed.local_rank() == 0:
            with folder_lock(self.folder, wait=True):
                for (v, idx), r in zip(todo, rows):
                    self._write(v, idx, r)
        distributed.barrier()  # written before any process of the node reads it


def pretrained_features(images: ImageSource, dataset: ImageDataset, backbone: str, image_size: int | None,
                        indices: np.ndarray, views: int = 1) -> np.ndarray:
    """The pooled features (views, len(indices), F) of the pretrained ``backbone`` for the images
    ``indices`` of ``dataset``, from the feature store (extracted on first use, shared with training)."""
    bb = create_backbone(backbone, pretrained=True, image_size=image_size)
    model = TransferModel(bb, num_classes=max(2, len(dataset.classes)))
    images.precision.to_model(model)
    store = FeatureStore(bb, dataset, bf16=images.precision.bf16)
    return store.get(model, images, np.asarray(indices), views).numpy()


@torch.no_grad()
def input_shape(model: TransferModel, level: int, data_config: dict[str, Any], precision: Precision) -> tuple[int, ...]:
    """The shape of one image's input of ``level`` (from a pass of one blank image)."""
    was = model.training
    model.eval()
    try:
        return tuple(_run(model, torch.zeros(1, *data_config["input_size"]), level, precision).shape[1:])
    finally:
        model.train(was)


def encode(model: TransferModel, images: ImageSource, indices: np.ndarray, labels: np.ndarray, level: int,
           views: int, batch_size: int = 32) -> TensorBatches:
    """The input of ``level`` for ``views`` views of each image, kept on the device for one phase, served
    in batches of ``batch_size``.

    Stored in float32: a cache advanced group by group (``advance``) then holds exactly what one
    pass through the prefix gives, so a resumed run matches an uninterrupted one.
    """
    model.eval()
    with progress_bar(f"caching level {level} x{views}", views * len(indices), images.quiet) as bar, \
            _folded(model, images.view(indices[:2], 0), 0, level, images.precision):
        out = [_encode_view(model, images, indices, v, level, bar) for v in range(views)]
    return TensorBatches(torch.stack(out), torch.as_tensor(labels[indices]), level, batch_size)


@torch.no_grad()
def advance(model: TransferModel, cached: TensorBatches, level: int, precision: Precision) -> TensorBatches:
    """Move cached inputs of ``cached.level`` to ``level`` by running only the groups in between.

    Chain-thaw trains one group at a time from the first: the input of step ``k + 1`` is group
    ``k`` (just trained) applied to the input of step ``k``, so the frozen prefix never runs twice.
    """
    if level == cached.level:
        return cached
    model.eval()
    views, bs = [], precision.inference_batch(cached.batch_size)
    with _folded(model, cached.tensors[0, :2], cached.level, level, precision):
        for v in range(cached.views):
            chunks = [_run(model, cached.tensors[v, s:s + bs].float(), level, precision, cached.level)
                      for s in range(0, len(cached), bs)]
            views.append(torch.cat(chunks))
    return TensorBatches(torch.stack(views), cached.labels, level, cached.batch_size)


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Pooled features of a pretrained backbone, as a scikit-learn transformer.

    ``X`` is a sequence of image paths, or of uint8 arrays (H, W, 3), or one (N, H, W, 3) array.
    Preprocessing is the backbone's own (resize, centre crop, normalise).

    Example:
        >>> make_pipeline(FeatureExtractor(), LogisticRegression()).fit(paths, labels)
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, image_size: int | None = None,
                 batch_size: int = 32, device: str = "auto", fp32: bool = False):
        self.backbone = backbone
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.fp32 = fp32

    def fit(self, X: Any = None, y: Any = None) -> FeatureExtractor:
        """Build the pretrained backbone (``X`` and ``y`` are not needed)."""
        bb = create_backbone(self.backbone, pretrained=True, image_size=self.image_size)
        self.precision_ = Precision.choose(self.device, self.fp32)
        self.model_ = TransferModel(bb, num_classes=1)
        self.precision_.to_model(self.model_).eval()
        self.data_config_ = bb.data_config
        self.n_features_out_ = bb.num_features
        return self

    def _square(self, item: Any) -> np.ndarray:
        from PIL import Image

        side = cache_side(self.data_config_)
        if isinstance(item, (str, Path)):
            img = open_rgb(item, side)
        else:
            img = Image.fromarray(np.asarray(item)).convert("RGB")
        return resize_center(img, side, self.data_config_["interpolation"])

    def transform(self, X: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Pooled features (N, F) of the images ``X``."""
        if not hasattr(self, "model_"):
            self.fit()
        out = []
        for s in range(0, len(X), self.batch_size):
            squares = np.stack([self._square(item) for item in X[s:s + self.batch_size]])
            x = eval_batch(squares, self.data_config_)
            with _folded(self.model_, x, 0, self.model_.pooled_level, self.precision_):
                out.append(_run(self.model_, x, self.model_.pooled_level, self.precision_).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.n_features_out_), np.float32)
