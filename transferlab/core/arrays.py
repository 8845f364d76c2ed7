"""Small numpy helpers that several layers share."""

from __future__ import annotations

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row of ``x`` scaled to length 1 (an all-zero row stays zero): for cosine similarities."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
