"""Unlabelled images: the pool (--unlabelled), self-training on it, and what to label next."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import error_of, make_class_folders
from transferlab.cli import main
from transferlab.data import load_dataset, make_splits
from transferlab.data.pool import attach_pool
from transferlab.data.splits import per_class_subset
from transferlab.train import TrainConfig, prepare
from transferlab.train.acquisition import choose_to_label
from transferlab.train.config import ModelConfig
from transferlab.train.probe import fit_logreg
from transferlab.train.selftrain import pseudo_labels, self_train

TINY = TrainConfig(model=ModelConfig(backbone="test_tiny"))


@pytest.fixture
def data_and_pool(tmp_path):
    data = make_class_folders(tmp_path / "data", n_per_class=8, n_classes=3)
    pool = make_class_folders(tmp_path / "pool", n_per_class=10, n_classes=3, seed=5)
    return data, pool


def _digits_split():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y), perm[:200], perm[200:700], perm[700:]


def test_pool_images_equal_to_labelled_ones_are_left_out(data_and_pool, tmp_path):
    data, pool = data_and_pool
    ds = load_dataset(data)
    splits = make_splits(ds)
    test_image = ds.paths[splits["test"][0]]
    shutil.copy(test_image, pool / "copy_of_a_test_image.png")
    # the same pixels in another file format
    Image.open(ds.paths[splits["train"][0]]).save(pool / "train_image_as.bmp")
    prep = prepare(attach_pool(ds, str(pool), str(data)), splits, TINY)
    assert prep.pool.duplicates == 2 and prep.pool.images == 30
    kept = {prep.dataset.paths[i].name for i in prep.splits["pool"]}
    assert "copy_of_a_test_image.png" not in kept and "train_image_as.bmp" not in kept
    assert (prep.dataset.labels[prep.splits["pool"]] == -1).all()
    assert {k: len(v) for k, v in prep.splits.items() if k != "pool"} == {k: len(v) for k, v in splits.items()}


def test_self_train_beats_the_probe_at_two_labels_per_class_on_digits():
    x, y, val, test, rest = _digits_split()
    gains = []
    for seed in range(3):
        labelled = per_class_subset(rest, y.numpy(), 2, seed=seed)
        pool = np.setdiff1d(rest, labelled)
        probe = fit_logreg(x[labelled], y[labelled], val=(x[val], y[val]))
        fit, rounds, kept = self_train(x[labelled], y[labelled], (x[val], y[val]), x[pool])
        assert rounds[0].pseudo_labels == 0

        def acc(f):
            return float(((x[test] @ f.weight.T + f.bias).argmax(1) == y[test]).float().mean())
        gains.append(acc(fit) - acc(probe))
    assert np.mean(gains) >= 0.02, gains
    assert min(gains) >= 0, gains  # the round kept is never clearly worse on validation


def test_pseudo_labels_above_the_floor_are_mostly_right_on_digits():
    x, y, val, _, rest = _digits_split()
    labelled = per_class_subset(rest, y.numpy(), 5, seed=0)
    pool = np.setdiff1d(rest, labelled)
    probe = fit_logreg(x[labelled], y[labelled], val=(x[val], y[val]))
    prior = np.full(10, 0.1)
    accuracy = {}
    for precision in (0.8, 0.95):
        rows, labels, floor = pseudo_labels(probe.logits(x[val]), y[val], probe.logits(x[pool]), prior, 1.0,
                                            precision)
        assert len(rows) >= 50
        accuracy[precision] = float((labels == y[pool][rows].numpy()).mean())
    all_pool = float((probe.weight @ x[pool].T + probe.bias[:, None]).argmax(0).eq(y[pool]).float().mean())
    assert accuracy[0.8] >= 0.8 and accuracy[0.95] >= 0.9 and accuracy[0.95] > all_pool


def test_self_train_runs_with_a_pool_and_asks_for_one_without(data_and_pool, tmp_path, capsys):
    data, pool = data_and_pool
    out = tmp_path / "out"
    argv = ["compare", "--data", str(data), "--backbone", "test_tiny", "--strategies", "probe,self-train",
            "--out", str(out), "--quiet"]
    assert main(argv + ["--unlabelled", str(pool)]) == 0
    result = json.loads((out / "self-train" / "seed0" / "result.json").read_text())
    assert result["details"]["self_train_round"] >= 0 and len(result["history"]) >= 2
    # the students trained on the top of the network; the one kept (or none: round 0) is recorded
    assert {"student 1", "student 2"} <= {h["phase"] for h in result["history"]}
    assert 0 <= result["details"]["student_round"] <= 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["unlabelled"]["images"] == 30 and manifest["data"]["splits"]["pool"] == 30
    report = (out / "report.md").read_text()
    assert "What the unlabelled images bought" in report and "30 images used" in report
    capsys.readouterr()
    assert main(argv[:-3] + ["--out", str(tmp_path / "other")]) == 2
    assert "self-train learns from unlabelled images: pass --unlabelled" in error_of(capsys)


@pytest.mark.parametrize("make, message", [
    (lambda root, data: root / "missing", "does not exist"),
    (lambda root, data: (root / "empty").mkdir() or root / "empty", "holds no images"),
    (lambda root, data: _corrupt(root / "bad"), "none of the 2 image(s) of the pool"),
    (lambda root, data: data, "is the labelled folder"),
    (lambda root, data: data / "class_0", "is inside the labelled folder"),
])
def test_bad_pools_give_one_line_errors(data_and_pool, tmp_path, capsys, make, message):
    data, _ = data_and_pool
    pool = make(tmp_path, data)
    argv = ["compare", "--data", str(data), "--backbone", "test_tiny", "--strategies", "probe,self-train",
            "--unlabelled", str(pool), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 2
    err = error_of(capsys)
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "config.yaml").exists()


def _corrupt(folder):
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"not an image at all")
    return folder


def test_every_pool_image_a_copy_of_a_labelled_one_is_refused(data_and_pool, tmp_path):
    from transferlab.core.errors import DataError

    data, _ = data_and_pool
    copies = tmp_path / "copies"
    shutil.copytree(data / "class_1", copies)
    ds = load_dataset(data)
    with pytest.raises(DataError, match="every image of the unlabelled pool .* is also a labelled image"):
        prepare(attach_pool(ds, str(copies), str(data)), make_splits(ds), TINY)


def test_suggestions_round_trip_through_data(data_and_pool, tmp_path, capsys):
    data, pool = data_and_pool
    out = tmp_path / "out"
    assert main(["compare", "--data", str(data), "--backbone", "test_tiny", "--strategies", "probe",
                 "--out", str(out), "--quiet"]) == 0
    assert main(["suggest", str(out), "--unlabelled", str(pool), "--count", "4", "--quiet"]) == 0
    sheet = (out / "suggestions.html").read_text()
    assert sheet.count("<figure>") == 4
    rows = list(csv.DictReader((out / "suggestions.csv").open()))
    suggested = [r for r in rows if not r["label"]]
    assert len(suggested) == 4 and all(r["split"] == "train" for r in suggested)
    assert len({r["path"] for r in suggested}) == 4
    # The labeller fills in the labels (here the pool's folder names are the truth) ...
    for r in suggested:
        r["label"] = r["path"].split("/")[-2]
    filled = tmp_path / "labelled.csv"
    with filled.open("w", newline="") as f:
        writer = csv.DictWriter(f, rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)
    # ... and passes the file back with --data: the same splits, four more training images.
    before, after = load_dataset(data), load_dataset(filled)
    assert len(after) == len(before) + 4 and after.classes == before.classes
    assert len(after.splits["train"]) == len(make_splits(before)["train"]) + 4


def test_suggestions_come_from_regions_no_label_covers():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    pool = np.concatenate([c + rng.normal(0, 0.5, (40, 3)) for c in centres])
    labelled = centres[:1] + rng.normal(0, 0.5, (3, 3))  # only the first blob has labels
    probs = np.full((len(pool), 2), 0.5)
    picked = choose_to_label(pool, probs, labelled, 2)
    blobs = {int(i) // 40 for i in picked}
    assert blobs == {1, 2}, picked


def test_suggestions_are_spread_over_the_classes_given_the_labels():
    rng = np.random.default_rng(0)
    # A wide region the model calls class 0 (several clusters) and a tight one it calls class 1.
    pool = np.concatenate([rng.normal(0, 3, (60, 4)) + [20, 0, 0, 0], rng.normal(0, 0.3, (20, 4)) + [0, 20, 0, 0]])
    probs = np.where(np.arange(80)[:, None] < 60, [0.9, 0.1], [0.1, 0.9])
    labelled = np.array([[20.0, 0, 0, 0], [0, 20.0, 0, 0]])
    unspread = choose_to_label(pool, probs, labelled, 2)
    spread = choose_to_label(pool, probs, labelled, 2, labelled_labels=np.array([0, 1]))
    assert (unspread < 60).all(), unspread  # the largest clusters first: both class 0
    assert sorted(int(i >= 60) for i in spread) == [0, 1], spread


def test_sweep_puts_the_rest_of_train_into_the_pool(data_and_pool, tmp_path):
    from transferlab.experiments.sweep import SweepConfig, sweep
    from transferlab.train.config import DataConfig

    data, pool = data_and_pool
    res = sweep(DataConfig(str(data), unlabelled=str(pool)), TINY, tmp_path / "sweep",
                SweepConfig(per_class=(2,), subsets=1, strategies=("probe", "self-train")))
    assert [r["strategy"] for r in res["rows"]] == ["probe", "self-train"]
    result = json.loads((tmp_path / "sweep" / "n2" / "subset0" / "self-train" / "result.json").read_text())
    train = make_splits(load_dataset(data))["train"]
    assert result["details"]["pool_images"] == 30 + len(train) - 2 * 3  # the pool and the unused training images


def test_a_run_killed_in_a_student_round_resumes_to_the_uninterrupted_result(data_and_pool, tmp_path):
    from transferlab.train import train_one

    data, pool = data_and_pool
    ds = load_dataset(data)
    prep = prepare(attach_pool(ds, str(pool), str(data)), make_splits(ds), TINY)
    full = train_one(prep, TINY, "self-train", 0, tmp_path / "full")

    def kill_in_round_two(history):
        if any(h["phase"] == "student 2" for h in history):
            raise KeyboardInterrupt  # as a kill: the process stops inside the phase
    with pytest.raises(KeyboardInterrupt):
        train_one(prep, TINY, "self-train", 0, tmp_path / "cut", on_epoch=kill_in_round_two)
    cut = train_one(prep, TINY, "self-train", 0, tmp_path / "cut", resume=True)
    assert cut.details.student_round == full.details.student_round
    assert cut.test_acc == full.test_acc and cut.test_loss == pytest.approx(full.test_loss, abs=1e-6)
    assert [h["val_loss"] for h in cut.history] == pytest.approx([h["val_loss"] for h in full.history], nan_ok=True)


def test_later_self_train_runs_read_the_students_inputs_from_the_cache(data_and_pool, tmp_path, monkeypatch):
    from transferlab.train import run as run_module
    from transferlab.train import train_one

    data, pool = data_and_pool
    ds = load_dataset(data)
    prep = prepare(attach_pool(ds, str(pool), str(data)), make_splits(ds), TINY)
    first = train_one(prep, TINY, "self-train", 0, tmp_path / "first")

    def no_encoding(*args, **kwargs):
        raise AssertionError("the inputs of the student's level were computed again")
    monkeypatch.setattr(run_module, "encode", no_encoding)
    other_seed = train_one(prep, TINY, "self-train", 1, tmp_path / "other")  # another seed: the same inputs
    again = train_one(prep, TINY, "self-train", 0, tmp_path / "again")
    assert other_seed.details.student_round is not None
    assert again.test_acc == first.test_acc and again.test_loss == pytest.approx(first.test_loss, abs=1e-6)
