"""Train/val/test splits (stratified, reproducible) and nested per-class subsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import DataError
from .datasets import SPLIT_NAMES, ImageDataset


def _split_class(idx: np.ndarray, fractions: tuple[float, float, float]) -> list[np.ndarray]:
    n = len(idx)
    n_test = int(round(n * fractions[2]))
    n_val = int(round(n * fractions[1]))
    # Keep at least one image per class in every requested split when the class allows it.
    if fractions[2] > 0 and n >= 3:
        n_test = max(n_test, 1)
    if fractions[1] > 0 and n - n_test >= 2:
        n_val = max(n_val, 1)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(f"a class with {n} image(s) is too small to split {fractions}")
    return [idx[:n_train], idx[n_train:n_train + n_val], idx[n_train + n_val:]]


def stratified_split(labels: np.ndarray, indices: np.ndarray, fractions: tuple[float, float, float],
                     seed: int) -> dict[str, np.ndarray]:
    """Split ``indices`` into train/val/test with the same class proportions, reproducibly.

    Done class by class (rather than with scikit-learn's ``train_test_split``) so that tiny
    classes still get an image in every split instead of raising.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLIT_NAMES}
    for c in np.unique(labels[indices]):
        idx = rng.permutation(indices[labels[indices] == c])
        for s, chunk in zip(SPLIT_NAMES, _split_class(idx, fractions)):
            parts[s].append(chunk)
    return {s: np.sort(np.concatenate(v)) for s, v in parts.items() if sum(len(x) for x in v)}


def make_splits(ds: ImageDataset, seed: int = 0,
                fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> dict[str, np.ndarray]:
    """Train/val/test index arrays: the dataset's own splits where given, the rest carved out.

    With no predefined split, ``fractions`` (default 60/20/20) of each class. With train/ and
    test/ but no val/, the validation set is 20% of train; with train/ alone, val and test are
    carved from it with ``fractions``.
    """
    if not ds.splits:
        out = stratified_split(ds.labels, np.arange(len(ds)), fractions, seed)
        check_every_class(ds, out)
        return out
    out = {k: v.copy() for k, v in ds.splits.items()}
    missing = [s for s in ("val", "test") if s not in out]
    if missing:
        # Carve what is missing out of train, in the proportions ``fractions`` give them.
        val = fractions[1] if "val" in missing else 0.0
        test = fractions[2] if "test" in missing else 0.0
        if len(missing) == 1:
            val, test = (0.2, 0.0) if "val" in missing else (0.0, 0.2)
        out.update(stratified_split(ds.labels, out["train"], (1.0 - val - test, val, test), seed))
    check_every_class(ds, out)
    return out


def check_every_class(ds: ImageDataset, splits: dict[str, np.ndarray]) -> None:
    """Every class must have an image in train, val and test: a class absent from train can never be
    predicted, one absent from val or test cannot be scored. A ``DataError`` names the classes."""
    for name in SPLIT_NAMES:
        have = np.bincount(ds.labels[splits.get(name, np.zeros(0, np.int64))], minlength=len(ds.classes))
        short = [c for c, n in zip(ds.classes, have) if n == 0]
        if not short:
            continue
        skipped = sum(1 for f, _ in ds.skipped if Path(f).parent.name in short)
        note = f" ({skipped} of their files were skipped as unreadable)" if skipped else ""
        counts = ds.counts()
        raise DataError(f"class(es) {', '.join(repr(c) for c in short[:10])}{' ...' if len(short) > 10 else ''} "
                        f"have no image in the {name} split{note}; images per class: "
                        f"{', '.join(f'{c} {counts[c]}' for c in short[:10])}. Every class needs one image in each "
                        "of train, val and test: at least 3 readable images when transferlab splits it (more "
                        "in train/ when val or test are carved from it); add images or remove the class")


def per_class_subset(indices: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` images per class from ``indices``; nested: a larger ``n`` with the same seed
    contains the smaller one's images."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels[indices]):
        chosen.append(rng.permutation(indices[labels[indices] == c])[:n])
    return np.sort(np.concatenate(chosen))
