"""Image datasets: labelled images, their given splits, skipped files and a content fingerprint;
loading a folder of class folders or a folder with train/ val/ test/ class folders.

A dataset is a list of images (files, or arrays held in memory) with integer labels, the class
names, any predefined splits, the files that were skipped and why, and a fingerprint of the content
that caches are keyed by. Every image is decoded once when a folder is first scanned, so corrupt
files are found up front (the scan is remembered per listing, so later runs skip the decode).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import DamagedFileError, DataError, TransferlabWarning
from ..core.io import read_json, write_json
from ..core.paths import cache_home
from .images import IMAGE_EXTENSIONS, check_image, open_rgb

SPLIT_NAMES = ("train", "val", "test")
IMBALANCE = 3.0  # largest / smallest class above which transferlab warns
DATA_HELP = ("DATA must be 'digits', 'flowers17[:1|2|3]', a folder of class folders, "
             "a folder with train/ val/ test/ class folders, or a CSV with path,label[,split] columns")


class DataWarning(TransferlabWarning):
    """An image was skipped (unreadable or corrupt)."""


@dataclass
class ImageDataset:
    """Labelled images and what is known about them.

    Attributes:
        name: what the user passed (``digits``, a path, ...).
        classes: class names; label ``k`` is ``classes[k]``.
        labels: int64 array, one label per image.
        paths: image files (None for in-memory datasets).
        arrays: (N, H, W, 3) uint8 images for in-memory datasets (None for files).
        splits: predefined splits by name ('train', 'val', 'test') as index arrays; may be empty.
        skipped: ``(file, reason)`` for every image file that could not be read.
        fingerprint: hash of the content (images and labels); caches are keyed by it.
        pool_source, pool_skipped: with an unlabelled pool appended (``data.pool.with_pool``, label -1):
            where it came from and how many of its files could not be read.
    """

    name: str
    classes: list[str]
    labels: np.ndarray
    paths: list[Path] | None = None
    arrays: np.ndarray | None = None
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    fingerprint: str = ""
    pool_source: str = ""
    pool_skipped: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int, draft_size: int | None = None) -> Image.Image:
        """Image ``i`` as RGB; ``draft_size`` lets JPEG decode at a reduced scale >= that size."""
        if self.arrays is not None:
            return Image.fromarray(self.arrays[i])
        return open_rgb(self.paths[i], draft_size)

    def keys(self) -> list[str]:
        """How each image is named in audit.csv and matched by ``--exclude``: its resolved path, or for
        images held in memory ``<data>#<digest of its pixels>`` (``.2``, ``.3`` ... after for repeats), which
        leaving other images out does not change."""
        if self.paths is not None:
            return [str(Path(p).resolve()) for p in self.paths]
        keys, seen = [], {}
        for a in self.arrays:
            digest = hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=6).hexdigest()
            seen[digest] = seen.get(digest, 0) + 1
            keys.append(f"{self.name}#{digest}" + (f".{seen[digest]}" if seen[digest] > 1 else ""))
        return keys

    def subset(self, keep: np.ndarray, tag: str) -> ImageDataset:
        """The images ``keep`` (sorted indices) only, predefined splits mapped onto them; ``tag`` says what
        was left out (part of the fingerprint)."""
        new = np.full(len(self), -1, np.int64)
        new[keep] = np.arange(len(keep))
        splits = {s: new[idx][new[idx] >= 0] for s, idx in self.splits.items()}
        return dataclasses.replace(
            self, labels=self.labels[keep], paths=None if self.paths is None else [self.paths[i] for i in keep],
            arrays=None if self.arrays is None else self.arrays[keep], splits=splits,
            fingerprint=hashlib.sha256(f"{self.fingerprint}-{tag}".encode()).hexdigest()[:16])

    @property
    def labelled_labels(self) -> np.ndarray:
        """The labels of the labelled images (those of an appended unlabelled pool, -1, left out)."""
        return self.labels[self.labels >= 0]

    def counts(self) -> dict[str, int]:
        """Labelled images per class."""
        return {c: int(n) for c, n in zip(self.classes, np.bincount(self.labelled_labels,
                                                                  minlength=len(self.classes)))}

    def imbalance_warning(self) -> str | None:
        """A warning when the largest class has more than ``IMBALANCE`` times the images of the smallest."""
        counts = self.counts()
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)
        if counts[big] <= IMBALANCE * counts[small]:
            return None
        return (f"the classes are imbalanced: {big!r} has {counts[big]} images, {small!r} {counts[small]} "
                f"({counts[big] / counts[small]:.1f}x); accuracy then mostly measures the large classes: "
                "watch balanced accuracy and macro-F1, and consider --class-weights auto")


# ---------------------------------------------------------------------------------------------
# Folders


def shown_path(path: Path | str) -> str:
    """``path`` as text that can always be printed and written (bytes that are not UTF-8 escaped)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _check_name(path: Path) -> None:
    """File and folder names must be valid UTF-8: they become class names, JSON and YAML."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{shown_path(path)}: the name is not valid UTF-8 (written in another encoding); "
                        "rename it") from None


def _image_files(folder: Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` (recursive, sorted) and the number of other files ignored."""
    images, others = [], 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        _check_name(path)
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            others += 1
    return images, others


def _class_dirs(folder: Path) -> list[Path]:
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for d in dirs:
        _check_name(d)
    return dirs


def _scan(files: list[Path], root: Path) -> tuple[str, dict[str, str]]:
    """Content fingerprint of ``files`` and the reasons of those that do not decode.

    Decoding every file takes a while on big sets, so the result is remembered per listing
    (relative path, size, mtime) in the cache folder.
    """
    # The listing holds each file's absolute path, size, mtime and ctime: the kernel sets ctime on
    # every change of a file (it cannot be set back, unlike mtime), so a file rewritten with other
    # pixels but the same name, size and mtime, or another folder with the same names, is scanned anew.
    listing = hashlib.sha256(os.fsencode(root.resolve()))
    for f in files:
        st = f.stat()
        listing.update(os.fsencode(f) + f"\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())
    memo = cache_home() / "scans" / f"{listing.hexdigest()[:32]}.json"
    if memo.is_file():
        try:  # a damaged memo (cut short, or the wrong content) is only a lost shortcut: scanned again
            saved = read_json(memo)
            fingerprint, bad = saved["fingerprint"], saved["bad"]
            if isinstance(fingerprint, str) and isinstance(bad, dict) and \
                    all(isinstance(k, str) and isinstance(v, str) for k, v in bad.items()):
                return fingerprint, bad
        except (DamagedFileError, KeyError, TypeError):
            pass
    content = hashlib.sha256()
    bad: dict[str, str] = {}
    for f in files:
        try:
            content.update(_file_digest(f))
        except OSError as exc:  # unreadable (permissions, I/O error): skipped like a corrupt image
            bad[str(f)] = f"cannot read: {exc.strerror or exc}"
            content.update(b"unreadable " + os.fsencode(f))
            continue
        # The header first: a file of zeros is refused after a few bytes, a huge image before its pixels.
        reason = check_image(f)
        if reason:
            bad[str(f)] = reason
    fingerprint = content.hexdigest()[:16]
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_json(memo, {"fingerprint": fingerprint, "bad": bad})
    return fingerprint, bad


def _file_digest(path: Path, chunk: int = 1 << 20) -> bytes:
    """SHA-256 of a file, read in chunks (a 2 GB file is never held in memory)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.digest()


def label_hash(fingerprint: str, labels: np.ndarray, extra: str = "") -> str:
    h = hashlib.sha256(f"{fingerprint}\0{extra}".encode())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def report_unreadable(bad: dict[str, str], where: str, strict: bool, what: str = "") -> None:
    """Unreadable images (file -> reason): an error listing them with ``strict``, else a warning each;
    ``what`` says which images they were ("unlabelled pool")."""
    if bad and strict:
        listing = "\n".join(f"  {f}: {r}" for f, r in bad.items())
        raise DataError(f"{len(bad)} unreadable image(s) in {where} (--strict):\n{listing}")
    for f, reason in bad.items():
        warnings.warn(f"skipped {shown_path(f)}{f' ({what})' if what else ''}: {reason}", DataWarning, stacklevel=4)


def files_dataset(name: str, root: Path, entries: list[tuple[Path, str, str | None]],
                   classes: list[str], strict: bool) -> ImageDataset:
    """Build a dataset from ``(file, class, split or None)`` entries, skipping unreadable images."""
    files = [e[0] for e in entries]
    fingerprint, bad = _scan(files, root)
    report_unreadable(bad, str(root), strict)
    kept = [e for e in entries if str(e[0]) not in bad]
    present = {c for _, c, _ in kept}
    for c in classes:
        if c not in present:
            raise DataError(f"class {c!r} has no readable images (all were skipped: "
                            f"{', '.join(f for f in bad if Path(f).parent.name == c)}); "
                            "fix or remove those files")
    index = {c: k for k, c in enumerate(classes)}
    labels = np.array([index[c] for _, c, _ in kept], dtype=np.int64)
    splits = {}
    for s in SPLIT_NAMES:
        idx = np.array([i for i, e in enumerate(kept) if e[2] == s], dtype=np.int64)
        if len(idx):
            splits[s] = idx
    return ImageDataset(name, classes, labels, paths=[e[0] for e in kept], splits=splits,
                        skipped=sorted(bad.items()), fingerprint=label_hash(fingerprint, labels, ",".join(classes)))


def check_classes(classes: list[str], where: Path) -> None:
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no class folders"
        raise DataError(f"{where} has {found}; classification needs at least two class folders, "
                        "one per class, each holding that class's images")


def check_same_classes(per_split: dict[str | None, set[str]], layout: dict[str | None, Path]) -> None:
    """Every split folder must hold the same class folders: a class missing from val/ or test/ makes
    its accuracy meaningless, and one missing from train/ can never be predicted."""
    every = set().union(*per_split.values())
    for split, names in per_split.items():
        if names != every:
            missing = ", ".join(sorted(every - names))
            raise DataError(f"{layout[split]} lacks the class folder(s) {missing} that the other splits have; "
                            "every split folder needs the same class folders")


def load_folder(root: str | Path, strict: bool = False) -> ImageDataset:
    """A folder of class folders, or a folder with train/ val/ test/ (any subset) of class folders."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root} does not exist. {DATA_HELP}")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder. {DATA_HELP}")
    dirs = _class_dirs(root)
    subdirs = {p.name.lower(): p for p in dirs}
    twins = sorted({p.name.lower() for p in dirs if sum(q.name.lower() == p.name.lower() for q in dirs) > 1})
    if twins:
        names = ", ".join(p.name for p in dirs if p.name.lower() in twins)
        raise DataError(f"{root} has folders whose names differ only by case ({names}); one would be ignored: "
                        "merge them into one")
    split_dirs = {s: subdirs[s] for s in SPLIT_NAMES if s in subdirs}
    if split_dirs and set(subdirs) - set(split_dirs):
        extra = sorted(set(subdirs) - set(split_dirs))
        raise DataError(f"{root} mixes split folders ({', '.join(split_dirs)}) with other folders "
                        f"({', '.join(extra)}); use either train/ val/ test/ or class folders")
    layout = split_dirs or {None: root}
    entries: list[tuple[Path, str, str | None]] = []
    classes: set[str] = set()
    per_split: dict[str | None, set[str]] = {}
    for split, folder in layout.items():
        class_dirs = _class_dirs(folder)
        if not class_dirs:
            loose, _ = _image_files(folder)
            hint = " It holds images directly: put each class in its own subfolder." if loose else ""
            raise DataError(f"{folder} has no class folders.{hint} {DATA_HELP}")
        for d in class_dirs:
            files, others = _image_files(d)
            if not files:
                raise DataError(f"class folder {d} has no images ({others} other file(s) ignored); "
                                "add images to it or remove the folder")
            entries += [(f, d.name, split) for f in files]
            classes.add(d.name)
            per_split.setdefault(split, set()).add(d.name)
    check_same_classes(per_split, layout)
    ordered = sorted(classes)
    check_classes(ordered, root)
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"{root} has {', '.join(split_dirs)} but no train/ folder")
    return files_dataset(str(root), root, entries, ordered, strict)

