"""The built-in data sets (digits offline, flowers17 downloaded once) and ``load_dataset``, which
reads DATA as the command line understands it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..core.registry import Registry
from .datasets import ImageDataset, label_hash, load_folder
from .labelfile import exclude_listed, load_csv
from .splits import per_class_subset

BUILTINS: Registry[Callable[..., ImageDataset]] = Registry("dataset", DataError)


@BUILTINS.register("digits")
def load_digits_dataset(arg: str = "", strict: bool = False) -> ImageDataset:
    """scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels) as RGB images; offline.
    ``digits:N`` keeps N images per class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.round(digits.images / 16.0 * 255.0).astype(np.uint8)
    arrays = np.repeat(grey[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    name = "digits"
    if arg:  # digits:N keeps N images per class (a fixed random subset): the few-examples regime
        if not arg.isdigit() or int(arg) < 3:
            raise DataError(f"digits:{arg}: N must be a whole number of images per class, at least 3")
        keep = per_class_subset(np.arange(len(labels)), labels, int(arg), seed=0)
        arrays, labels, name = arrays[keep], labels[keep], f"digits:{arg}"
    fingerprint = label_hash(hashlib.sha256(arrays.tobytes()).hexdigest(), labels)
    return ImageDataset(name, [str(d) for d in range(10)], labels, arrays=arrays, fingerprint=fingerprint)


@BUILTINS.register("flowers17")
def _flowers17(arg: str = "", strict: bool = False) -> ImageDataset:
    """Oxford 17 Flowers with official split ``arg`` (default 1); downloaded once."""
    from .flowers17 import load_flowers17

    if arg and not arg.isdigit():
        raise DataError(f"flowers17:{arg}: the split must be 1, 2 or 3")
    return load_flowers17(int(arg or 1), strict=strict)


def load_dataset(spec: str | Path, strict: bool = False, exclude: str | Path | None = None) -> ImageDataset:
    """Load DATA as the CLI understands it: a built-in name (``digits``, ``flowers17[:k]``), a CSV of
    labels (``path,label[,split]``), or a folder; without the images the CSV ``exclude`` lists."""
    text = str(spec)
    base, _, arg = text.partition(":")
    if base in BUILTINS and not Path(text).exists():
        ds = BUILTINS.get(base)(arg, strict=strict)
    elif text.lower().endswith(".csv"):
        ds = load_csv(text, strict=strict)
    else:
        ds = load_folder(text, strict=strict)
    return exclude_listed(ds, exclude) if exclude else ds
