"""Datasets: digits, flowers17, a folder of class folders, a folder with train/ val/ test/.

A dataset is a list of images (files, or arrays held in memory) with integer labels, the class
names, any predefined splits, the files that were skipped and why, and a fingerprint of the content
that caches are keyed by. Every image is decoded once when a folder is first scanned, so corrupt
files are found up front (the scan is remembered per listing, so later runs skip the decode).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import DataError
from .registry import Registry

# A user's own photos can be very large (panoramas, scans); Pillow's default bomb guard (~179 MP)
# would reject them. Keep a guard, but a far higher one.
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, 1_000_000_000)

IMAGE_EXTENSIONS = frozenset(ext.lower() for ext in Image.registered_extensions())
SPLIT_NAMES = ("train", "val", "test")
DATA_HELP = ("DATA must be 'digits', 'flowers17[:1|2|3]', a folder of class folders, "
             "or a folder with train/ val/ test/ class folders")


class DataWarning(UserWarning):
    """An image was skipped (unreadable or corrupt)."""


def cache_home() -> Path:
    """Where downloads and caches live: $TRANSFERLAB_HOME or ~/.cache/transferlab."""
    home = os.environ.get("TRANSFERLAB_HOME")
    return Path(home) if home else Path.home() / ".cache" / "transferlab"


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
    """

    name: str
    classes: list[str]
    labels: np.ndarray
    paths: list[Path] | None = None
    arrays: np.ndarray | None = None
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int, draft_size: int | None = None) -> Image.Image:
        """Image ``i`` as RGB; ``draft_size`` lets JPEG decode at a reduced scale >= that size."""
        if self.arrays is not None:
            return Image.fromarray(self.arrays[i])
        return open_rgb(self.paths[i], draft_size)

    def counts(self) -> dict[str, int]:
        """Images per class."""
        return {c: int(n) for c, n in zip(self.classes, np.bincount(self.labels, minlength=len(self.classes)))}

    def describe(self) -> str:
        """Short source description for reports."""
        return f"{self.name}: {len(self)} images, {len(self.classes)} classes"


# ---------------------------------------------------------------------------------------------
# Decoding


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image as upright 8-bit RGB: EXIF orientation applied, 16-bit and float scaled,
    transparency composited on white, palette / CMYK / grayscale converted."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        # 16-bit data spans 0..65535; other integer or float data is scaled by its own range.
        if img.mode.startswith("I;16") or (a.min() >= 0 and 255 < a.max() <= 65535):
            a = a / 257.0
        elif a.max() > 255 or a.min() < 0 or img.mode == "F":
            a = (a - a.min()) / max(a.max() - a.min(), 1e-12) * 255.0
        img = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def open_rgb(source: str | Path | io.BytesIO, draft_size: int | None = None) -> Image.Image:
    """Decode an image file fully into RGB (raises ``OSError`` / ``ValueError`` if corrupt)."""
    with Image.open(source) as img:
        if draft_size and img.format == "JPEG":
            # Decode big JPEGs at 1/2, 1/4 or 1/8 scale, never below what is needed.
            img.draft("RGB", (draft_size, draft_size))
        img.load()
        return to_rgb(img)


def _check_image(data: bytes) -> str | None:
    """Why ``data`` is not a usable image, or None if it decodes."""
    try:
        img = open_rgb(io.BytesIO(data), draft_size=32)
    except Image.DecompressionBombError as exc:
        return f"too large to decode safely ({exc})"
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as exc:
        return f"cannot decode: {exc}"
    if img.width < 1 or img.height < 1:
        return "empty image"
    return None


# ---------------------------------------------------------------------------------------------
# Folders


def _image_files(folder: Path) -> tuple[list[Path], int]:
    """Image files under ``folder`` (recursive, sorted) and the number of other files ignored."""
    images, others = [], 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            others += 1
    return images, others


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(files: list[Path], root: Path) -> tuple[str, dict[str, str]]:
    """Content fingerprint of ``files`` and the reasons of those that do not decode.

    Decoding every file takes a while on big sets, so the result is remembered per listing
    (relative path, size, mtime) in the cache folder.
    """
    listing = hashlib.sha256()
    for f in files:
        st = f.stat()
        listing.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    memo = cache_home() / "scans" / f"{listing.hexdigest()[:32]}.json"
    if memo.is_file():
        saved = json.loads(memo.read_text())
        return saved["fingerprint"], saved["bad"]
    content = hashlib.sha256()
    bad: dict[str, str] = {}
    for f in files:
        data = f.read_bytes()
        content.update(hashlib.sha256(data).digest())
        reason = _check_image(data)
        if reason:
            bad[str(f)] = reason
    fingerprint = content.hexdigest()[:16]
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "bad": bad}))
    os.replace(tmp, memo)
    return fingerprint, bad


def _label_hash(fingerprint: str, labels: np.ndarray, extra: str = "") -> str:
    h = hashlib.sha256(f"{fingerprint}\0{extra}".encode())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _files_dataset(name: str, root: Path, entries: list[tuple[Path, str, str | None]],
                   classes: list[str], strict: bool) -> ImageDataset:
    """Build a dataset from ``(file, class, split or None)`` entries, skipping unreadable images."""
    files = [e[0] for e in entries]
    fingerprint, bad = _scan(files, root)
    if bad and strict:
        listing = "\n".join(f"  {f}: {r}" for f, r in bad.items())
        raise DataError(f"{len(bad)} unreadable image(s) in {root} (--strict):\n{listing}")
    for f, reason in bad.items():
        warnings.warn(f"skipped {f}: {reason}", DataWarning, stacklevel=3)
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
                        skipped=sorted(bad.items()), fingerprint=_label_hash(fingerprint, labels, ",".join(classes)))


def _check_classes(classes: list[str], where: Path) -> None:
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no class folders"
        raise DataError(f"{where} has {found}; classification needs at least two class folders, "
                        "one per class, each holding that class's images")


def load_folder(root: str | Path, strict: bool = False) -> ImageDataset:
    """A folder of class folders, or a folder with train/ val/ test/ (any subset) of class folders."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root} does not exist. {DATA_HELP}")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder. {DATA_HELP}")
    subdirs = {p.name.lower(): p for p in _class_dirs(root)}
    split_dirs = {s: subdirs[s] for s in SPLIT_NAMES if s in subdirs}
    if split_dirs and set(subdirs) - set(split_dirs):
        extra = sorted(set(subdirs) - set(split_dirs))
        raise DataError(f"{root} mixes split folders ({', '.join(split_dirs)}) with other folders "
                        f"({', '.join(extra)}); use either train/ val/ test/ or class folders")
    layout = split_dirs or {None: root}
    entries: list[tuple[Path, str, str | None]] = []
    classes: set[str] = set()
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
    ordered = sorted(classes)
    _check_classes(ordered, root)
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"{root} has {', '.join(split_dirs)} but no train/ folder")
    return _files_dataset(str(root), root, entries, ordered, strict)


# ---------------------------------------------------------------------------------------------
# Built-in datasets

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
    fingerprint = _label_hash(hashlib.sha256(arrays.tobytes()).hexdigest(), labels)
    return ImageDataset(name, [str(d) for d in range(10)], labels, arrays=arrays, fingerprint=fingerprint)


@BUILTINS.register("flowers17")
def _flowers17(arg: str = "", strict: bool = False) -> ImageDataset:
    """Oxford 17 Flowers with official split ``arg`` (default 1); downloaded once."""
    from .flowers17 import load_flowers17

    if arg and not arg.isdigit():
        raise DataError(f"flowers17:{arg}: the split must be 1, 2 or 3")
    return load_flowers17(int(arg or 1), strict=strict)


def load_dataset(spec: str | Path, strict: bool = False) -> ImageDataset:
    """Load DATA as the CLI understands it: a built-in name (``digits``, ``flowers17[:k]``) or a folder."""
    text = str(spec)
    base, _, arg = text.partition(":")
    if base in BUILTINS and not Path(text).exists():
        return BUILTINS.get(base)(arg, strict=strict)
    return load_folder(text, strict=strict)


# ---------------------------------------------------------------------------------------------
# Splits and subsets


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
        return stratified_split(ds.labels, np.arange(len(ds)), fractions, seed)
    out = {k: v.copy() for k, v in ds.splits.items()}
    missing = [s for s in ("val", "test") if s not in out]
    if missing:
        # Carve what is missing out of train, in the proportions ``fractions`` give them.
        val = fractions[1] if "val" in missing else 0.0
        test = fractions[2] if "test" in missing else 0.0
        if len(missing) == 1:
            val, test = (0.2, 0.0) if "val" in missing else (0.0, 0.2)
        out.update(stratified_split(ds.labels, out["train"], (1.0 - val - test, val, test), seed))
    return out


def per_class_subset(indices: np.ndarray, labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` images per class from ``indices``; nested: a larger ``n`` with the same seed
    contains the smaller one's images."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels[indices]):
        chosen.append(rng.permutation(indices[labels[indices] == c])[:n])
    return np.sort(np.concatenate(chosen))
