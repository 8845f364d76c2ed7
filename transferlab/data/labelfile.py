"""Labelled images listed in a CSV file (``path,label[,split]``) instead of class folders."""

from __future__ import annotations

import csv
from pathlib import Path

from ..core.errors import DataError
from .datasets import DATA_HELP, SPLIT_NAMES, ImageDataset, check_classes, check_same_classes, files_dataset


def _csv_entry(path: Path, line: int, row: dict[str, str]) -> tuple[Path, str, str | None]:
    """(image file, class, split or None) of one CSV row, checked."""
    file, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
    split = (row.get("split") or "").strip().lower() or None
    if not file or not label:
        raise DataError(f"{path}, line {line}: empty path or label")
    if split is not None and split not in SPLIT_NAMES:
        raise DataError(f"{path}, line {line}: split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
    image = (path.parent / file).resolve()
    if not image.is_file():
        raise DataError(f"{path}, line {line}: {image} does not exist (paths are relative to the CSV's folder)")
    return image, label, split


def load_csv(path: str | Path, strict: bool = False) -> ImageDataset:
    """Images listed in a CSV with ``path`` and ``label`` columns (paths relative to the CSV's folder)
    and an optional ``split`` column (train, val or test; empty: to be split)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path} does not exist. {DATA_HELP}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable CSV file ({exc})") from None
    columns = set(rows[0]) if rows else set()
    if not {"path", "label"} <= columns:
        raise DataError(f"{path} needs a header with 'path' and 'label' columns (and optionally 'split'); "
                        f"found {', '.join(sorted(c for c in columns if c)) or 'no rows'}")
    root = path.parent
    entries = [_csv_entry(path, line, row) for line, row in enumerate(rows, start=2)]
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
