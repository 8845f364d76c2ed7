"""Where transferlab keeps what it downloads and caches."""

from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    """Where downloads and caches live: $TRANSFERLAB_HOME or ~/.cache/transferlab."""
    home = os.environ.get("TRANSFERLAB_HOME")
    return Path(home) if home else Path.home() / ".cache" / "transferlab"
