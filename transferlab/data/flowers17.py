"""The Oxford 17 Category Flower Dataset (Nilsback & Zisserman 2006), with its official splits.

Downloaded once from the Oxford VGG site into ``<cache>/flowers17`` and checked against its md5.
The archive holds ``jpg/image_0001.jpg`` .. ``image_1360.jpg``, 80 images per class in class
order; ``datasplits.mat`` holds ``trn1..3``, ``val1..3``, ``tst1..3`` (1-based image numbers).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..core.io import atomic_path
from ..core.paths import cache_home
from .datasets import ImageDataset, files_dataset

BASE_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/"
MD5 = {"17flowers.tgz": "b59a65d8d1a99cd66944d474e1289eab", "datasplits.mat": "4828cddfd0d803c5abbdebcb1e148a1e"}
CLASSES = ["Daffodil", "Snowdrop", "LilyValley", "Bluebell", "Crocus", "Iris", "Tigerlily", "Tulip",
           "Fritillary", "Sunflower", "Daisy", "ColtsFoot", "Dandelion", "Cowslip", "Buttercup",
           "Windflower", "Pansy"]
PER_CLASS = 80
_MEMBER = re.compile(r"^(?:\./)?jpg/(image_\d{4}\.jpg)$")


def flowers17_dir() -> Path:
    return cache_home() / "flowers17"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, dest: Path) -> None:
    with atomic_path(dest) as tmp, urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as f:
        shutil.copyfileobj(response, f)


def fetch(name: str) -> Path:
    """A verified local copy of ``name``, downloaded if absent."""
    folder = flowers17_dir()
    path = folder / name
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            _download(BASE_URL + name, path)
        except (urllib.error.URLError, OSError) as exc:
            raise DataError(
                f"flowers17 needs a download of {BASE_URL}{name} and it failed ({exc}). With no "
                f"network, download 17flowers.tgz and datasplits.mat from {BASE_URL} elsewhere and "
                f"copy them into {folder} (or point TRANSFERLAB_HOME at a folder whose flowers17/ "
                "holds them)"
            ) from None
    if _md5(path) != MD5[name]:
        raise DataError(f"{path} is damaged or not the official file (md5 {_md5(path)}, expected "
                        f"{MD5[name]}); delete it to download it again")
    return path


def _extract(archive: Path, dest: Path) -> None:
    """Extract only ``jpg/image_NNNN.jpg`` regular files, under names built here (no traversal)."""
    with atomic_path(dest) as tmp, tarfile.open(archive, "r:gz") as tar:
        shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier process with the same pid
        tmp.mkdir(parents=True)
        for member in tar:
            match = _MEMBER.match(member.name)
            if not (match and member.isfile()):
                continue
            with tar.extractfile(member) as src, open(tmp / match.group(1), "wb") as dst:
                shutil.copyfileobj(src, dst)


def load_flowers17(split: int = 1, strict: bool = False) -> ImageDataset:
    """Oxford-17 with official split ``split`` (1, 2 or 3) as train/val/test."""
    if split not in (1, 2, 3):
        raise DataError(f"flowers17 has official splits 1, 2 and 3, not {split}")
    from scipy.io import loadmat

    archive, split_file = fetch("17flowers.tgz"), fetch("datasplits.mat")
    images = flowers17_dir() / "jpg"
    if not images.is_dir():
        _extract(archive, images)
    mat = loadmat(split_file)
    membership = {}
    for key, name in (("trn", "train"), ("val", "val"), ("tst", "test")):
        for n in np.asarray(mat[f"{key}{split}"]).ravel().astype(int):
            membership[int(n)] = name
    entries = []
    for path in sorted(images.glob("image_*.jpg")):
        n = int(path.stem.split("_")[1])
        entries.append((path, CLASSES[(n - 1) // PER_CLASS], membership.get(n)))
    if not entries:
        raise DataError(f"{images} holds no images; delete it to extract {archive} again")
    missing = sorted(set(membership) - {int(p.stem.split("_")[1]) for p, _, _ in entries})
    if missing:
        raise DataError(f"datasplits.mat names {len(missing)} image(s) missing from {images} "
                        f"(e.g. image_{missing[0]:04d}.jpg); delete {images} to extract again")
    return files_dataset(f"flowers17:{split}", images, entries, CLASSES, strict)
