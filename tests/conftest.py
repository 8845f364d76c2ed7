"""Shared fixtures: an isolated cache folder and tiny synthetic image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Distinct colours make an easy task: a class is a colour plus noise and a random bright square.
PALETTE = [(220, 40, 40), (40, 200, 60), (50, 70, 220), (230, 200, 40), (150, 60, 190)]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "transferlab-home"
    monkeypatch.setenv("TRANSFERLAB_HOME", str(home))
    yield home


def synthetic_image(cls: int, rng: np.random.Generator, size: int = 40) -> Image.Image:
    base = np.array(PALETTE[cls % len(PALETTE)], dtype=np.float64)
    img = base + rng.normal(0, 25, (size, size, 3))
    s = size // 3
    y, x = rng.integers(0, size - s, 2)
    img[y:y + s, x:x + s] = 255 - base
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_class_folders(root: Path, n_per_class: int = 12, n_classes: int = 3, seed: int = 0,
                       size: int = 40) -> Path:
    """``root/class_k/img_i.png`` with easy, colour-coded classes."""
    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            synthetic_image(c, rng, size).save(folder / f"img_{i:03d}.png")
    return root


@pytest.fixture
def class_folders(tmp_path) -> Path:
    return make_class_folders(tmp_path / "data")
