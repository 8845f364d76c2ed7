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
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from .backbones import Backbone, create_backbone
from .bnfold import folded_batchnorm
from .data import ImageDataset, cache_home, open_rgb
from .engine import TensorBatches
from .heads import TransferModel
from .imagecache import cache_side, eval_batch, resize_center, view_batch
from .progress import progress_bar
from .runtime import Precision, tune_allocator

MAX_VIEWS = 8


@torch.no_grad()
def _run(model: TransferModel, x: torch.Tensor, stop: int, precision: Precision, start: int = 0) -> torch.Tensor:
    with precision.autocast():
        return model.features(precision.to_input(x), start, stop=stop).float().cpu()


def _folded(model: TransferModel, sample: torch.Tensor, start: int, stop: int,
            precision: Precision) -> contextlib.AbstractContextManager:
    """BatchNorm folded (bnfold.py) for passes from ``start`` to ``stop``; ``sample``: a few inputs."""
    return folded_batchnorm(model, lambda: _run(model, sample[:2].float(), stop, precision, start),
                            key=("features", start, stop), enabled=precision.fold_bn)


class FeatureStore:
    """Pooled features of a pretrained backbone for every (image, view), computed on demand, kept on disk."""

    def __init__(self, backbone: Backbone, ds: ImageDataset, aug_seed: int = 0, bf16: bool = False):
        # bf16 features differ from fp32 ones in the third digit: they are kept apart.
        spec = {"backbone": backbone.name, "weights": backbone.meta.get("weights"),
                "data_config": {k: str(v) for k, v in sorted(backbone.data_config.items())},
                "fingerprint": ds.fingerprint, "aug_seed": aug_seed, "bf16": bf16, "version": 2}
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = cache_home() / "features" / key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.aug_seed = aug_seed
        shape = (len(ds), MAX_VIEWS, backbone.num_features)
        feats = self.folder / "features.npy"
        mode = "r+" if feats.is_file() else "w+"
        self.features = np.lib.format.open_memmap(feats, mode=mode, dtype=np.float32, shape=shape)
        done = self.folder / "done.npy"
        self.done = np.load(done) if done.is_file() else np.zeros(shape[:2], dtype=bool)

    def _save_done(self) -> None:
        tmp = self.folder / f"done.tmp{os.getpid()}.npy"
        np.save(tmp, self.done)
        os.replace(tmp, self.folder / "done.npy")

    def get(self, model: TransferModel, cache: np.ndarray, indices: np.ndarray, views: int,
            data_config: dict, precision: Precision, batch_size: int = 32, quiet: bool = False) -> torch.Tensor:
        """Features (views, len(indices), F); computes (with the pristine pretrained ``model``) what is missing."""
        views = min(views, MAX_VIEWS)
        todo = [(v, indices[~self.done[indices, v]]) for v in range(views)]
        n_todo = sum(len(t) for _, t in todo)
        if n_todo:
            model.eval()
            first = next(t for _, t in todo if len(t))[:2]
            sample = view_batch(cache[first], first, 0, data_config, self.aug_seed)
            with progress_bar("extracting features", n_todo, quiet) as bar, \
                    _folded(model, sample, 0, model.pooled_level, precision):
                for v, missing in todo:
                    for s in range(0, len(missing), batch_size):
                        idx = np.sort(missing[s:s + batch_size])
                        x = view_batch(cache[idx], idx, v, data_config, self.aug_seed)
                        self.features[idx, v] = _run(model, x, model.pooled_level, precision).numpy()
                        bar.advance(len(idx))
                    self.features.flush()
                    self.done[missing, v] = True
                    self._save_done()
        return torch.from_numpy(np.stack([self.features[indices, v] for v in range(views)]))


def encode(model: TransferModel, cache: np.ndarray, indices: np.ndarray, labels: np.ndarray, level: int,
           views: int, data_config: dict, precision: Precision, batch_size: int = 32,
           aug_seed: int = 0, quiet: bool = False) -> TensorBatches:
    """The input of ``level`` for ``views`` views of each image, kept in memory for one phase.

    Stored in float32: a cache advanced group by group (``advance``) then holds exactly what one
    pass through the prefix gives, so a resumed run matches an uninterrupted one.
    """
    dtype = torch.float32
    out: list[torch.Tensor] = []
    model.eval()
    sample = view_batch(cache[indices[:2]], indices[:2], 0, data_config, aug_seed)
    with progress_bar(f"caching level {level} x{views}", views * len(indices), quiet) as bar, \
            _folded(model, sample, 0, level, precision):
        for v in range(views):
            chunks = []
            for s in range(0, len(indices), batch_size):
                idx = indices[s:s + batch_size]
                chunks.append(_run(model, view_batch(cache[idx], idx, v, data_config, aug_seed), level,
                                   precision).to(dtype))
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
    views = []
    with _folded(model, cached.tensors[0, :2], cached.level, level, precision):
        for v in range(cached.tensors.shape[0]):
            chunks = [_run(model, cached.tensors[v, s:s + cached.batch_size].float(), level, precision, cached.level)
                      for s in range(0, len(cached), cached.batch_size)]
            views.append(torch.cat(chunks))
    return TensorBatches(torch.stack(views), cached.labels, level, cached.batch_size)


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Pooled features of a pretrained backbone, as a scikit-learn transformer.

    ``X`` is a sequence of image paths, or of uint8 arrays (H, W, 3), or one (N, H, W, 3) array.
    Preprocessing is the backbone's own (resize, centre crop, normalise).

    Example:
        >>> make_pipeline(FeatureExtractor(), LogisticRegression()).fit(paths, labels)
    """

    def __init__(self, backbone: str = "efficientnet_lite0", image_size: int | None = None,
                 batch_size: int = 32, device: str = "auto", fp32: bool = False):
        self.backbone = backbone
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.fp32 = fp32

    def fit(self, X: Any = None, y: Any = None) -> FeatureExtractor:
        tune_allocator()
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
        if not hasattr(self, "model_"):
            self.fit()
        out = []
        for s in range(0, len(X), self.batch_size):
            squares = np.stack([self._square(item) for item in X[s:s + self.batch_size]])
            x = eval_batch(squares, self.data_config_)
            with _folded(self.model_, x, 0, self.model_.pooled_level, self.precision_):
                out.append(_run(self.model_, x, self.model_.pooled_level, self.precision_).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.n_features_out_), np.float32)
