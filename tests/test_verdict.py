"""The verdict: whether the winner's lead is beyond noise, and ties broken by cost."""

from __future__ import annotations

import json

import numpy as np
import pytest

from transferlab.cli.main import main
from transferlab.experiments.results import winner
from transferlab.experiments.verdict import verdict


def _summary(val_a: float, val_b: float, sec_a: float = 100.0, sec_b: float = 5.0) -> dict:
    return {"finetune": {"val_acc": val_a, "test_acc": 0.9, "seconds": sec_a},
            "probe": {"val_acc": val_b, "test_acc": 0.9, "seconds": sec_b}}


def test_equal_predictions_are_within_noise_and_the_cheaper_wins():
    summary = _summary(1.0, 1.0)
    best = winner(summary)
    assert best == "probe"  # a tie on validation goes to the cheaper, whatever the order of the strategies
    same = np.random.default_rng(0).random(200) < 0.9
    found = verdict(summary, best, {"finetune": {0: same}, "probe": {0: same.copy()}}, val_images=49)
    assert not found.real and found.difference == 0.0
    assert "within noise" in found.sentence and "the cheaper, probe" in found.sentence
    notes = " ".join(found.notes)
    assert "saturated" in notes and "49 images" in notes


def test_a_clear_lead_is_called_real():
    rng = np.random.default_rng(1)
    good, poor = rng.random(300) < 0.95, rng.random(300) < 0.6
    summary = _summary(0.95, 0.6)
    found = verdict(summary, winner(summary), {"finetune": {0: good}, "probe": {0: poor}}, val_images=300)
    assert found.winner == "finetune" and found.real and found.low > 0
    assert "beyond noise" in found.sentence and not found.notes
    # Across seeds the interval is over the per-seed differences.
    seeds = {s: rng.random(300) < 0.95 for s in range(3)}, {s: rng.random(300) < 0.6 for s in range(3)}
    found = verdict(summary, "finetune", {"finetune": seeds[0], "probe": seeds[1]}, val_images=300)
    assert found.real and "3 paired seeds" in found.method


def test_a_small_difference_on_few_images_is_noise():
    a = np.ones(40, bool)
    b = a.copy()
    b[:2] = False  # two images out of forty
    found = verdict(_summary(0.9, 0.85), "finetune", {"finetune": {0: a}, "probe": {0: b}}, val_images=40)
    assert not found.real and found.low <= 0 < found.high


def test_compare_writes_the_verdict_into_metrics_report_and_console(class_folders, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compare", "--data", str(class_folders), "--strategies", "features,probe", "--backbone",
                 "test_tiny", "--max-epochs", "3", "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    found = metrics["verdict"]
    assert found["winner"] == metrics["winner"] and found["runner_up"] in ("features", "probe")
    assert found["low"] <= found["difference"] <= found["high"]
    assert "verdict:" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert html.index("Verdict") < html.index("Results")
    assert "Unknown inputs" in html and (out / "plots" / "unknown.png").is_file()
    rule = json.loads(next(out.rglob("unknown.json")).read_text())
    assert rule["target"] == 0.95 and rule["distance_mean"] is not None


def test_accuracy_interval_is_wilson_on_one_seed_and_over_seeds_with_several():
    from transferlab.train.scores import accuracy_interval

    low, high, how = accuracy_interval(0.8, 50)
    wide = high - low
    low, high, _ = accuracy_interval(0.8, 500)
    assert low < 0.8 < high and high - low < wide / 2 and "Wilson" in how  # ten times the images: ~1/3 the width
    assert accuracy_interval(1.0, 40)[1] == pytest.approx(1.0) and accuracy_interval(1.0, 40)[0] < 1.0
    assert accuracy_interval(0.9, 100, seeds=3, seed_ci95=0.02)[:2] == pytest.approx((0.88, 0.92))
