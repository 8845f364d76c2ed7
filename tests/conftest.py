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


_TINY_PRETRAINED: dict = {}


def _register_tiny_backbone() -> None:
    """``test_tiny``: a four-stage CNN standing in for a pretrained backbone, so engine tests run in
    seconds. Its "ImageNet" is a source task of five colour classes, learnt once per process with a
    fixed seed. It has the same interface as every registered backbone."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from transferlab.models import BACKBONES, Backbone, GroupedNet, stage_groups

    if "test_tiny" in BACKBONES:
        return

    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def build() -> GroupedNet:
        stages = {"stem": block(3, 8, 2), "stage1": block(8, 16, 2), "stage2": block(16, 24, 2),
                  "final": block(24, 32, 1)}
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        return GroupedNet(stages, pool, nn.Sequential(pool, nn.Linear(32, 5)), 32)

    def pretrain() -> dict:
        rng_state = torch.random.get_rng_state()
        torch.manual_seed(1234)
        net = build()
        rng = np.random.default_rng(1234)
        labels = rng.integers(0, 5, 320)
        images = np.stack([np.asarray(synthetic_image(int(c), rng, 32)) for c in labels])
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = torch.from_numpy(labels)
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        net.train()
        for _ in range(60):
            idx = torch.randint(0, len(x), (32,))
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.random.set_rng_state(rng_state)
        return {k: v.clone() for k, v in net.state_dict().items()}

    @BACKBONES.register("test_tiny")
    def test_tiny(pretrained: bool = True) -> Backbone:
        net = build()
        if pretrained:
            if not _TINY_PRETRAINED:
                _TINY_PRETRAINED.update(pretrain())
            net.load_state_dict(_TINY_PRETRAINED)
        config = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
                  "crop_pct": 0.9}
        return Backbone("test_tiny", net, config, stage_groups(net), 32,
                        {"weights": "colour task" if pretrained else "random"}, pretrained)


_register_tiny_backbone()


def error_of(capsys) -> str:
    """The one-line error ``main`` printed (rich folds long lines; joined back here)."""
    return " ".join(capsys.readouterr().err.split())


def compare_argv(data: Path, out: Path, options: list[str], *extra: str) -> list[str]:
    """The argv of ``transferlab compare`` on ``data`` into ``out`` with ``options`` and ``extra``."""
    return ["compare", "--data", str(data), "--out", str(out), *options, *extra]
