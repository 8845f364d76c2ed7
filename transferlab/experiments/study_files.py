"""What every study writes: results.json, results.csv and figures, atomically."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ..core.io import atomic_path, write_json


def write_rows(out: Path, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    """``results.json`` (rows plus ``extra``) and ``results.csv`` (the rows) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"rows": rows, **(extra or {})})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)
