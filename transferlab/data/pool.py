"""The unlabelled pool: images without labels (``--unlabelled PATH``) that self-training learns from
and that ``suggest`` picks the next images to label from.

A pool is a folder of images (any nesting; folder names are ignored, so a folder of class folders
serves too) or a CSV whose rows with an empty label are the pool. It is scanned like labelled data
(unreadable files skipped and named, the scan remembered, a content fingerprint) and appended to the
labelled dataset with the label -1, so that the image cache, the feature cache and their keys cover
it without a second mechanism. Pool images whose pixels equal those of a labelled image are left out
(``pool_indices``): a test image copied into the pool would otherwise leak its own answer in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from .datasets import ImageDataset, _image_files, _scan, label_hash, report_unreadable, shown_path
from .duplicates import pixel_digests
from .labelfile import read_label_rows

UNLABELLED = -1  # the label of a pool image in a dataset with a pool
POOL_HELP = ("--unlabelled must be a folder of images (any nesting; folder names are ignored) or a CSV whose "
             "rows with an empty label are the pool")


@dataclass(frozen=True)
class PoolSummary:
    """What became of the pool: the images kept, those left out as copies of labelled (or of other pool)
    images, and the unreadable files skipped."""

    source: str
    images: int
    duplicates: int
    skipped: int

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "images": self.images, "duplicates": self.duplicates, "skipped": self.skipped}


def _pool_files(path: Path) -> tuple[list[Path], Path]:
    """The image files of the pool at ``path`` and the folder they are relative to."""
    if path.suffix.lower() == ".csv" and path.is_file():
        rows = read_label_rows(path)
        files = [image for image, label, _ in rows if not label]
        if not files:
            raise DataError(f"{path} has no rows with an empty label: those rows are the unlabelled pool. {POOL_HELP}")
        return files, path.parent
    if not path.is_dir():
        raise DataError(f"{path} is a file that is not a CSV. {POOL_HELP}")
    files, others = _image_files(path)
    if not files:
        raise DataError(f"{path} holds no images ({others} other file(s) ignored). {POOL_HELP}")
    return files, path


def _check_not_labelled(path: Path, data_source: str) -> None:
    """The labelled folder itself, or a folder inside it, is no pool: its images are the labelled ones."""
    data = Path(data_source).expanduser()
    if not data.is_dir():
        return
    pool, data = path.resolve(), data.resolve()
    if pool == data or data in pool.parents:
        where = "the labelled folder" if pool == data else "inside the labelled folder"
        raise DataError(f"--unlabelled {path} is {where} {data}; pass a folder of images that are not labelled")


def load_pool(spec: str | Path, data_source: str = "", strict: bool = False) -> ImageDataset:
    """The pool images of ``spec`` as a dataset without classes (every label ``UNLABELLED``);
    unreadable files are skipped with a warning (an error with ``strict``)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"--unlabelled {path} does not exist. {POOL_HELP}")
    _check_not_labelled(path, data_source)
    files, root = _pool_files(path)
    fingerprint, bad = _scan(files, root)
    kept = [f for f in files if str(f) not in bad]
    if not kept:
        raise DataError(f"none of the {len(files)} image(s) of the pool {path} can be read "
                        f"(first: {shown_path(next(iter(bad)))}: {next(iter(bad.values()))}); fix or replace them")
    report_unreadable(bad, f"the pool {path}", strict, "unlabelled pool")
    labels = np.full(len(kept), UNLABELLED, dtype=np.int64)
    return ImageDataset(str(path), [], labels, paths=kept, skipped=sorted(bad.items()),
                        fingerprint=label_hash(fingerprint, labels, "pool"))


def with_pool(ds: ImageDataset, pool: ImageDataset) -> ImageDataset:
    """``ds`` followed by the images of ``pool`` (label ``UNLABELLED``); the labelled images keep their
    indices, so splits made on ``ds`` hold for the result."""
    if ds.paths is None:
        raise DataError(f"{ds.name} is held in memory; an unlabelled pool needs labelled images from files "
                        "(a folder or a CSV)")
    fingerprint = hashlib.sha256(f"{ds.fingerprint}+{pool.fingerprint}".encode()).hexdigest()[:16]
    return ImageDataset(ds.name, ds.classes, np.concatenate([ds.labels, pool.labels]),
                        paths=[*ds.paths, *pool.paths], splits=ds.splits, skipped=ds.skipped, fingerprint=fingerprint,
                        pool_source=pool.name, pool_skipped=len(pool.skipped))


def attach_pool(ds: ImageDataset, unlabelled: str | None, data_source: str, strict: bool = False) -> ImageDataset:
    """``ds`` with the pool ``unlabelled`` appended (``with_pool``), or ``ds`` itself when there is none."""
    return with_pool(ds, load_pool(unlabelled, data_source, strict)) if unlabelled else ds


def pool_indices(cache: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """The indices of the pool images (label ``UNLABELLED``) to use, and how many were left out: those
    whose decoded square (``cache``, one per image) equals that of a labelled image or of an earlier
    pool image. Equal pixels, not equal files: a copy saved in another format is caught too."""
    digests = pixel_digests(cache[i] for i in range(len(labels)))
    seen = {digests[i] for i in np.flatnonzero(labels != UNLABELLED)}
    keep = []
    for i in np.flatnonzero(labels == UNLABELLED):
        if digests[i] not in seen:
            keep.append(i)
            seen.add(digests[i])
    candidates = int((labels == UNLABELLED).sum())
    return np.array(keep, dtype=np.int64), candidates - len(keep)
