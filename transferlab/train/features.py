"""Feature extraction: an on-disk cache of pooled backbone features, in-memory caches of the input
of any layer group, and a scikit-learn compatible transformer.

Frozen work is done once. The pooled features of the *pretrained* backbone are the same for every
strategy that starts with a frozen backbone (features, probe, the warm-up of finetune, chain-thaw
and gradual) and every seed, so they are stored on disk, keyed by backbone, weights,
preprocessing, data fingerprint and augmentation view. Inputs of intermediate groups depend on
weights that chain-thaw changes from step to step, so those are computed per phase, in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
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


class FeatureStore:
    """Pooled features of a pretrained backbone for every (image, view), computed on demand, kept on disk."""

    def __init__(self, backbone: Backbone, ds: ImageDataset, aug_seed: int = 0, bf16: bool = False):
        # bf16 features differ from fp32 ones in the third digit: they are kept apart.
        spec = {"backbone": backbone.name, "weights": backbone.meta.get("weights"),
                "data_config": {k: str(v) for k, v in sorted(backbone.data_config.items())},
                "fingerprint": ds.fingerprint, "aug_seed": aug_seed, "bf16": bf16, "version": 2}
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = cache_home() / "features" / key
        self.aug_seed = aug_seed
        shape = (len(ds), MAX_VIEWS, backbone.num_features)
        feats = self.folder / "features.npy"
        # Made once, whole, under the folder's lock: two processes never both create (truncate) it.
        with folder_lock(self.folder, wait=True):
            remove_stale_temporaries(self.folder)
            if not feats.is_file():
                ensure_free_space(self.folder, int(np.prod(shape)) * 4, "the feature cache",
                                  "set TRANSFERLAB_HOME to a folder on a disk with room")
                with atomic_path(feats) as tmp:
                    np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape).flush()
                    allocate(tmp)
        self.features = np.lib.format.open_memmap(feats, mode="r+", dtype=np.float32, shape=shape)
        done = self.folder / "done.npy"
        self.done = np.load(done) if done.is_file() else np.zeros(shape[:2], dtype=bool)

    def _save_done(self) -> None:
        with atomic_path(self.folder / "done.npy") as tmp:
            np.save(tmp, self.done)

    def get(self, model: TransferModel, images: ImageSource, indices: np.ndarray, views: int) -> torch.Tensor:
        """Features (views, len(indices), F); computes (with the pristine pretrained ``model``) what is missing."""
        views = min(views, MAX_VIEWS)
        todo = [(v, indices[~self.done[indices, v]]) for v in range(views)]
        if sum(len(t) for _, t in todo):
            with folder_lock(self.folder, wait=True):  # another process may be filling it too
                self._fill(model, images, indices, views)
        return torch.from_numpy(np.stack([self.features[indices, v] for v in range(views)]))

    def _fill(self, model: TransferModel, images: ImageSource, indices: np.ndarray, views: int) -> None:
        done = self.folder / "done.npy"
        if done.is_file():
            self.done |= np.load(done)
        todo = [(v, indices[~self.done[indices, v]]) for v in range(views)]
        n_todo = sum(len(t) for _, t in todo)
        if n_todo:
            model.eval()
            first = next(t for _, t in todo if len(t))[:2]
            with progress_bar("extracting features", n_todo, images.quiet) as bar, \
                    _folded(model, images.view(first, 0, self.aug_seed), 0, model.pooled_level, images.precision):
                for v, missing in todo:
                    for s in range(0, len(missing), images.batch_size):
                        idx = np.sort(missing[s:s + images.batch_size])
                        x = images.view(idx, v, self.aug_seed)
                        self.features[idx, v] = _run(model, x, model.pooled_level, images.precision).cpu().numpy()
                        bar.advance(len(idx))
                    self.features.flush()
                    self.done[missing, v] = True
                    self._save_done()


def encode(model: TransferModel, images: ImageSource, indices: np.ndarray, labels: np.ndarray, level: int,
           views: int, batch_size: int = 32) -> TensorBatches:
    """The input of ``level`` for ``views`` views of each image, kept on the device for one phase, served
    in batches of ``batch_size``.

    Stored in float32: a cache advanced group by group (``advance``) then holds exactly what one
    pass through the prefix gives, so a resumed run matches an uninterrupted one.
    """
    out: list[torch.Tensor] = []
    model.eval()
    bs = images.batch_size
    with progress_bar(f"caching level {level} x{views}", views * len(indices), images.quiet) as bar, \
            _folded(model, images.view(indices[:2], 0), 0, level, images.precision):
        for v in range(views):
            chunks = []
            for s in range(0, len(indices), bs):
                idx = indices[s:s + bs]
                chunks.append(_run(model, images.view(idx, v), level, images.precision).to(torch.float32))
                bar.advance(len(idx))
            out.append(torch.cat(chunks))
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
