import json
from dataclasses import replace

import numpy as np
import pytest

from conftest import make_class_folders
from transferlab.cli import main
from transferlab.data import load_dataset, make_splits, per_class_subset
from transferlab.experiments.backbone_choice import BenchmarkConfig, benchmark_backbones, recommend
from transferlab.experiments.sweep import SweepConfig, sweep
from transferlab.experiments.transferability import (
    DEFAULT_CONFIG,
    TransferabilityConfig,
    transferability,
)
from transferlab.train import AugmentConfig, BudgetConfig, DataConfig, HeadConfig, ModelConfig, TrainConfig


def test_backbone_benchmark_rows_and_recommendation(tmp_path):
    config = TrainConfig(budget=BudgetConfig(batch_size=2))
    res = benchmark_backbones(None, config, tmp_path, BenchmarkConfig(names=("test_tiny", "small_cnn"), repeats=1),
                              quiet=True)
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"test_tiny", "small_cnn"}
    for r in rows.values():
        assert r["latency_ms"] > 0 and r["throughput_img_s"] > 0
    assert rows["small_cnn"]["weights"] == "random (timing only)"
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "plots" / "accuracy_vs_latency.png").is_file()
    fake = [{"name": "fast", "latency_ms": 5, "top1": 70}, {"name": "slow", "latency_ms": 50, "top1": 80}]
    assert recommend(fake, 10)["name"] == "fast" and recommend(fake, None)["name"] == "slow"
    assert recommend(fake, 1) is None


def test_sweep_cells_and_nested_subsets(tmp_path):
    data = make_class_folders(tmp_path / "data", n_per_class=12, n_classes=2)
    config = TrainConfig(model=ModelConfig(backbone="test_tiny"), head=HeadConfig(head_hidden=(8,)),
                         budget=BudgetConfig(max_epochs=3, batch_size=8), augment=AugmentConfig(views=1))
    res = sweep(DataConfig(str(data)), config, tmp_path / "out",
                SweepConfig(per_class=(1, 3, 100), subsets=2, strategies=("probe", "scratch")), quiet=True)
    rows = res["rows"]
    assert len(rows) == 3 * 2 * 2  # sizes x subsets x strategies: every cell present
    assert all(0 <= r["test_acc"] <= 1 for r in rows)
    assert res["capped"] == [100]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["largest_per_class"] == max(r["per_class_used"] for r in rows)
    # The subsets the sweep draws are nested across sizes and disjoint from the test split.
    ds = load_dataset(data)
    splits = make_splits(ds)
    for s in range(2):
        small, big = (per_class_subset(splits["train"], ds.labels, n, seed=s) for n in (1, 3))
        assert set(small) <= set(big) and not set(big) & set(splits["test"])
    assert (tmp_path / "out" / "report.html").is_file()


def test_transferability_cells(tmp_path):
    data = make_class_folders(tmp_path / "data", n_per_class=10, n_classes=4)
    config = replace(DEFAULT_CONFIG, budget=BudgetConfig(max_epochs=2, patience=2))
    res = transferability(DataConfig(str(data)), config, tmp_path / "out", TransferabilityConfig(cuts=(1, 3)),
                          quiet=True)
    rows = res["rows"]
    names = {(r["network"], r["n"]) for r in rows}
    assert {("baseA", 0), ("baseB", 0)} <= names
    for n in (1, 3):
        assert {("BnB", n), ("BnB+", n), ("AnB", n), ("AnB+", n)} <= names
    assert all(0 <= r["acc_on_B"] <= 1 for r in rows if r["acc_on_B"] is not None)
    assert (tmp_path / "out" / "plots" / "transferability.png").is_file()


def test_transferability_bad_split(tmp_path):
    from transferlab.core.errors import TransferlabError

    data = make_class_folders(tmp_path / "data", n_per_class=4, n_classes=2)
    with pytest.raises(TransferlabError, match="unknown classes"):
        transferability(DataConfig(str(data)), DEFAULT_CONFIG, tmp_path / "out", TransferabilityConfig(split="nope"),
                        quiet=True)


def test_small_cnn_has_no_pretrained_weights(capsys):
    from transferlab.core.errors import BackboneError
    from transferlab.models import create_backbone

    with pytest.raises(BackboneError, match="from-scratch"):
        create_backbone("small_cnn", pretrained=True)
    assert main(["backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["small_cnn"]["weights"] == "none" and not rows["small_cnn"]["offline"]  # not "download"
    assert np.isfinite(create_backbone("small_cnn", pretrained=False).num_features)
