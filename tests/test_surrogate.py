"""Surrogate pretraining: a self-supervised body over the training and pool images, cached, resumable,
and the strategies that finetune from it."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import make_class_folders
from transferlab.core.errors import TransferlabError
from transferlab.core.paths import cache_home
from transferlab.data import load_dataset, make_splits
from transferlab.data.pool import attach_pool
from transferlab.train import TrainConfig, prepare, train_one
from transferlab.train import surrogate as surrogate_module
from transferlab.train.config import BudgetConfig, ModelConfig, SemiConfig
from transferlab.train.surrogate import SurrogateSettings, pretrained_body, surrogate_views

TINY = TrainConfig(model=ModelConfig(backbone="test_tiny"))
SMALL = SurrogateSettings(backbone="test_tiny", size=24, epochs=3, minutes=5, lr=1e-3, batch_size=8)


@pytest.fixture
def prep(tmp_path):
    ds = load_dataset(make_class_folders(tmp_path / "data", n_per_class=8, n_classes=3))
    return prepare(ds, make_splits(ds), TINY)


def _pretrain(prep, settings=SMALL, indices=None):
    idx = np.arange(len(prep.dataset)) if indices is None else indices
    return pretrained_body(settings, prep.images, idx, prep.data_config, prep.precision)


def test_views_are_seeded_and_in_the_backbones_range(prep):
    raw = prep.images.gather(np.arange(6))
    a = surrogate_views(raw, prep.data_config, 24, torch.Generator().manual_seed(3))
    b = surrogate_views(raw, prep.data_config, 24, torch.Generator().manual_seed(3))
    c = surrogate_views(raw, prep.data_config, 24, torch.Generator().manual_seed(4))
    assert a.shape == (6, 3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 - 1e-5 and a.max() <= 1 + 1e-5  # mean 0.5, std 0.5: 0..255 maps to -1..1


def test_the_body_is_cached_and_shared_by_any_order_of_the_same_images(prep):
    state, info, cached = _pretrain(prep)
    assert not cached and info.epochs == info.planned == 3 and len(info.losses) == 3 and not info.cut
    again, _, cached = _pretrain(prep, indices=np.arange(len(prep.dataset))[::-1])
    assert cached and all(torch.equal(state[k], again[k]) for k in state)
    other, _, cached = _pretrain(prep, dataclasses.replace(SMALL, objective="simclr"))
    assert not cached and any(not torch.equal(state[k], other[k]) for k in state if state[k].is_floating_point())
    # fewer images: another body
    _, _, cached = _pretrain(prep, indices=np.arange(len(prep.dataset) - 1))
    assert not cached


def test_a_killed_pretraining_resumes_to_the_body_of_an_uninterrupted_one(prep, monkeypatch):
    reference, _, _ = _pretrain(prep)
    shutil.rmtree(cache_home() / "surrogate")
    real, calls = surrogate_module._epoch, []

    def killed_in_the_third_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill: the process stops inside an epoch
        return real(*args, **kwargs)

    monkeypatch.setattr(surrogate_module, "_epoch", killed_in_the_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        _pretrain(prep)
    assert list((cache_home() / "surrogate").glob("*/checkpoint.pt"))
    calls.clear()
    resumed, info, cached = _pretrain(prep)
    assert not cached and len(calls) == 1 and info.epochs == 3  # only the epoch that was lost
    for k in reference:
        torch.testing.assert_close(resumed[k], reference[k], rtol=1e-5, atol=1e-6)
    assert not list((cache_home() / "surrogate").glob("*/checkpoint.pt"))


def test_the_time_budget_shortens_the_plan(prep):
    _, info, _ = _pretrain(prep, dataclasses.replace(SMALL, epochs=100_000, minutes=0.02))
    assert info.cut and info.epochs == info.planned < 100_000
    assert info.seconds < 0.02 * 60 + 5  # at most an epoch past the budget, and epochs take well under a second


def test_bad_objective_and_too_many_exemplars_are_refused(prep, monkeypatch):
    with pytest.raises(TransferlabError, match="surrogate objective"):
        _pretrain(prep, dataclasses.replace(SMALL, objective="rotation"))
    monkeypatch.setattr(surrogate_module, "MAX_EXEMPLARS", 10)
    with pytest.raises(TransferlabError, match="--surrogate-objective simclr"):
        _pretrain(prep, dataclasses.replace(SMALL, objective="exemplar"))


def test_surrogate_strategies_finetune_from_the_shared_body(tmp_path):
    data = make_class_folders(tmp_path / "data", n_per_class=10, n_classes=3)
    pool = make_class_folders(tmp_path / "pool", n_per_class=10, n_classes=3, seed=5)
    config = dataclasses.replace(
        TINY, budget=BudgetConfig(max_epochs=4),
        semi=SemiConfig(surrogate_size=24, surrogate_epochs=2))
    ds = load_dataset(data)
    prep = prepare(attach_pool(ds, str(pool), str(data)), make_splits(ds), config)
    first = train_one(prep, config, "surrogate", 0, tmp_path / "runs" / "s0")
    second = train_one(prep, config, "surrogate", 1, tmp_path / "runs" / "s1")
    assert first.details.surrogate_cached is False and second.details.surrogate_cached is True
    assert first.details.surrogate_epochs == 2 and first.details.pool_images == 30
    assert [h["phase"] for h in first.history][:2] == ["surrogate", "head"]
    assert first.history[-1]["phase"] == "all"
    # From the (tiny) ImageNet stand-in, continued on the images: the colour classes stay easy.
    imagenet = train_one(prep, config, "surrogate-imagenet", 0, tmp_path / "runs" / "i0")
    assert imagenet.details.surrogate_cached is False  # another start: another body
    assert imagenet.test_acc > 0.6, imagenet.test_acc
    # Without a pool it learns from the training images alone.
    plain = prepare(ds, make_splits(ds), config)
    alone = train_one(plain, config, "surrogate", 0, tmp_path / "runs" / "alone")
    assert alone.details.pool_images is None and alone.details.surrogate_cached is False


def test_compare_reports_the_surrogate_against_scratch_at_equal_compute(tmp_path):
    from transferlab.cli import main

    data = make_class_folders(tmp_path / "data", n_per_class=8, n_classes=3)
    pool = make_class_folders(tmp_path / "pool", n_per_class=6, n_classes=3, seed=5)
    out = tmp_path / "out"
    assert main(["compare", "--data", str(data), "--unlabelled", str(pool), "--backbone", "test_tiny",
                 "--strategies", "scratch,surrogate", "--surrogate-epochs", "2", "--surrogate-size", "24",
                 "--max-epochs", "2", "--out", str(out), "--quiet"]) == 0
    runs = {r["strategy"]: r for r in json.loads((out / "metrics.json").read_text())["runs"]}
    surrogate = runs["surrogate"]["details"]
    # scratch is timed against the surrogate, its pretraining included
    assert runs["scratch"]["details"]["budget_s"] >= surrogate["surrogate_seconds"]
    report = (out / "report.md").read_text()
    assert "What the unlabelled images bought" in report and "body pretrained 2 epochs" in report
