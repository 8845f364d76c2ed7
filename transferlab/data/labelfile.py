"""Labelled images listed in a CSV file (``path,label[,split]``) instead of class folders. A row with
an empty label is an unlabelled image: left out of the labelled data, and part of the pool when the
same CSV is passed as ``--unlabelled`` (``suggest`` writes such rows for the user to fill in)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from .datasets import (
    DATA_HELP,
    SPLIT_NAMES,
    DataWarning,
    ImageDataset,
    check_classes,
    check_same_classes,
    files_dataset,
)


def _csv_entry(path: Path, line: int, row: dict[str, str]) -> tuple[Path, str, str | None]:
    """(image file, class or "" for an unlabelled row, split or None) of one CSV row, checked."""
    file, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
    split = (row.get("split") or "").strip().lower() or None
    if not file:
        raise DataError(f"{path}, line {line}: empty path")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in label + file):
        raise DataError(f"{path}, line {line}: the path or label holds a control character (such as NUL); "
                        "fix the row")
    if split is not None and split not in SPLIT_NAMES:
        raise DataError(f"{path}, line {line}: split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
    image = (path.parent / file).resolve()
    if image.is_dir():
        raise DataError(f"{path}, line {line}: {image} is a folder, not an image file; list one row per image")
    if not image.is_file():
        raise DataError(f"{path}, line {line}: {image} does not exist (paths are relative to the CSV's folder)")
    return image, label, split


def _read_rows(path: Path, limit: int = 64 << 20) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and ``(line where the row starts, row)`` of every non-blank row: the line numbers
    stay right after blank lines and quoted fields that run over several lines."""
    if path.stat().st_size > limit:
        raise DataError(f"{path} is {path.stat().st_size >> 20} MB: too large for a CSV of labels")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        rows, end = [], 0
        for record in reader:
            start, end = end + 1, reader.line_num
            if not record or not any(v.strip() for v in record):
                continue
            if header is None:
                header = [h.strip() for h in record]
                continue
            rows.append((start, dict(zip(header, record))))
    return header or [], rows


def read_label_rows(path: Path) -> list[tuple[Path, str, str | None]]:
    """Every row of the CSV ``path`` as ``(image file, label or "", split or None)``, checked."""
    if path.exists() and not path.is_file():
        raise DataError(f"{path} is not a regular file (a folder, a device or a pipe); pass a CSV file. {DATA_HELP}")
    if not path.is_file():
        raise DataError(f"{path} does not exist. {DATA_HELP}")
    try:
        header, rows = _read_rows(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable CSV file ({exc})") from None
    if not {"path", "label"} <= set(header) or not rows:
        raise DataError(f"{path} needs a header with 'path' and 'label' columns (and optionally 'split') and "
                        f"a row per image; found {', '.join(c for c in header if c) or 'no header'} and "
                        f"{len(rows)} row(s)")
    return [_csv_entry(path, line, row) for line, row in rows]


def load_csv(path: str | Path, strict: bool = False) -> ImageDataset:
    """Images listed in a CSV with ``path`` and ``label`` columns (paths relative to the CSV's folder)
    and an optional ``split`` column (train, val or test; empty: to be split). Rows with an empty
    label are unlabelled images and are left out."""
    path = Path(path).expanduser()
    rows = read_label_rows(path)
    entries = [e for e in rows if e[1]]
    if not entries:
        raise DataError(f"{path} has no row with a label ({len(rows)} unlabelled row(s)); fill in the label column")
    root = path.parent
    classes = sorted({e[1] for e in entries})
    check_classes(classes, path)
    given = {s for _, _, s in entries}
    if given - {None} and None in given:
        raise DataError(f"{path}: some rows have a split and others do not; give every row one, or none")
    if given - {None}:
        check_same_classes({s: {c for _, c, t in entries if t == s} for s in given},
                            {s: Path(f"{path} (split {s})") for s in given})
        if "train" not in given:
            raise DataError(f"{path} has splits {', '.join(sorted(given))} but no train rows")
    return files_dataset(str(path), root, entries, classes, strict)


def listed_keys(path: str | Path) -> set[str]:
    """The images a CSV with a ``path`` column lists (audit.csv, a labels CSV), as ``ImageDataset.keys``
    name them: files resolved against the CSV's folder, in-memory names (``digits#...``) as written."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; --exclude takes a CSV with a 'path' column "
                        "(the audit.csv that transferlab audit writes)")
    try:
        header, rows = _read_rows(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable CSV file ({exc})") from None
    if "path" not in header:
        raise DataError(f"{path} has no 'path' column (found {', '.join(c for c in header if c) or 'no header'}); "
                        "--exclude takes a CSV with a 'path' column, such as audit.csv")
    keys = set()
    for _, row in rows:
        file = (row.get("path") or "").strip()
        if file:
            keys.add(file if "#" in file and not (path.parent / file).exists() else str((path.parent / file).resolve()))
    return keys


def exclude_listed(ds: ImageDataset, path: str | Path) -> ImageDataset:
    """``ds`` without the images the CSV ``path`` lists (``--exclude``)."""
    keys = listed_keys(path)
    own = ds.keys()
    drop = np.array([k in keys for k in own])
    if keys and not drop.any():
        raise DataError(f"none of the {len(keys)} images listed in {path} is in {ds.name}; was it written for other "
                        "data? (transferlab audit writes it for the DATA it was given)")
    missing = len(keys - set(own))
    if missing:
        warnings.warn(f"{missing} of the {len(keys)} images listed in {path} are not in {ds.name}; the other "
                      f"{len(keys) - missing} are left out", DataWarning, stacklevel=3)
    return ds.subset(np.flatnonzero(~drop), f"exclude {sorted(keys)}")
