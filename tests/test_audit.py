"""The audit: copies across splits found and warned about, --dedupe, label errors, outliers and
low-quality images, audit.csv fed back with --exclude."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from transferlab.cli.main import main
from transferlab.data import load_dataset, make_splits
from transferlab.data.duplicates import find_duplicates
from transferlab.experiments.audit import audit_prepared
from transferlab.train import TrainConfig, prepare
from transferlab.train.config import ModelConfig
from transferlab.train.novelty import fit_rule

TINY = ["--backbone", "test_tiny"]


def smooth_image(cls: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A colour-coded class with a smooth random pattern (so a resized copy keeps its structure)."""
    base = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)][cls % 3], np.uint8)
    pattern = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).resize((size, size),
                                                                                       Image.Resampling.BICUBIC)
    return Image.fromarray(((np.asarray(pattern, np.float64) + base) / 2).astype(np.uint8))


def split_folders(root: Path, per_split: dict[str, int], classes: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                smooth_image(c, rng).save(folder / f"img_{i:03d}.png")
    return root


@pytest.fixture
def leaky(tmp_path) -> Path:
    """train/val/test with three copies of training images in test: exact, half size as JPEG, mirrored."""
    root = split_folders(tmp_path / "data", {"train": 10, "val": 4, "test": 4})
    shutil.copyfile(root / "train/class_0/img_000.png", root / "test/class_0/copy_exact.png")
    img = Image.open(root / "train/class_1/img_001.png")
    img.resize((32, 32), Image.Resampling.BICUBIC).save(root / "test/class_1/copy_half.jpg", quality=80)
    ImageOps.mirror(Image.open(root / "train/class_2/img_002.png")).save(root / "test/class_2/copy_mirror.png")
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_copies_across_splits_are_found_and_warned(leaky, tmp_path, capsys):
    main(["audit", str(leaky), *TINY, "--out", str(tmp_path / "audit"), "--quiet"])
    rows = _rows(tmp_path / "audit" / "audit.csv")
    leaks = {(Path(r["path"]).name, Path(r["other"]).name) for r in rows if r["finding"] == "leak"}
    # The training copy is listed (the held-out one is kept), pointing at the test image it copies.
    assert leaks == {("img_000.png", "copy_exact.png"), ("img_001.png", "copy_half.jpg"),
                     ("img_002.png", "copy_mirror.png")}
    assert not [r for r in rows if r["finding"] in ("duplicate", "label conflict")]
    assert "copy an image of another split" in " ".join(capsys.readouterr().err.split())
    assert (tmp_path / "audit" / "audit.html").read_text().count("<figure>") >= 6

    main(["data", str(leaky)])
    err = " ".join(capsys.readouterr().err.split())
    assert "3 pair(s) of copies across splits" in err and "--dedupe" in err


def test_clean_data_has_no_copies(tmp_path):
    root = split_folders(tmp_path / "data", {"train": 10, "val": 4, "test": 4})
    ds = load_dataset(root)
    prep = prepare(ds, make_splits(ds), TrainConfig(model=ModelConfig(backbone="test_tiny")))
    assert find_duplicates(prep.cache, np.arange(len(ds))) == []


def test_dedupe_leaves_training_copies_out_and_keeps_test(leaky, tmp_path, capsys):
    common = ["--strategies", "probe", *TINY, "--quiet"]
    main(["compare", "--data", str(leaky), "--out", str(tmp_path / "plain"), *common])
    assert "copies across splits" in " ".join(capsys.readouterr().err.split())
    assert "Copies across splits" in (tmp_path / "plain" / "report.html").read_text()
    main(["compare", "--data", str(leaky), "--out", str(tmp_path / "dedupe"), "--dedupe", *common])
    with np.load(tmp_path / "plain" / "splits.npz") as plain, np.load(tmp_path / "dedupe" / "splits.npz") as dd:
        ds = load_dataset(leaky)
        dropped = {ds.paths[i].name for i in np.setdiff1d(plain["train"], dd["train"])}
        assert dropped == {"img_000.png", "img_001.png", "img_002.png"}
        assert np.array_equal(plain["test"], dd["test"]) and np.array_equal(plain["val"], dd["val"])


def _flip_one(ds, index: int):
    labels = ds.labels.copy()
    labels[index] = (labels[index] + 1) % len(ds.classes)
    return labels


def test_a_flipped_label_ranks_first_with_the_true_one_suggested(tmp_path):
    # Classes the features separate cleanly (on digits, ImageNet features at 64 px give 88% out of fold,
    # and a flipped digit can rank below genuinely ambiguous ones).
    root = split_folders(tmp_path / "data", {"train": 12, "val": 4, "test": 4})
    config = TrainConfig(model=ModelConfig(backbone="test_tiny"))
    ds = load_dataset(root)
    splits = make_splits(ds)
    assert audit_prepared(prepare(ds, splits, config), config).of_kind("label error") == []
    flipped = int(splits["train"][7])
    true = ds.classes[ds.labels[flipped]]
    ds.labels = _flip_one(ds, flipped)
    report = audit_prepared(prepare(ds, splits, config), config)
    errors = report.of_kind("label error")
    assert errors and errors[0].index == flipped
    assert errors[0].suggested == true
    assert int(np.argmax(report.issues.margin)) == int(np.flatnonzero(report.labelled == flipped)[0])


def test_outliers_and_low_quality_images_are_flagged(tmp_path):
    root = split_folders(tmp_path / "data", {"train": 12, "val": 4, "test": 4})
    Image.new("RGB", (64, 64), (128, 128, 128)).save(root / "train/class_0/uniform.png")
    smooth_image(1, np.random.default_rng(5), 20).save(root / "train/class_1/tiny.png")
    Image.fromarray(np.random.default_rng(6).integers(0, 255, (64, 64, 3), dtype=np.uint8)) \
        .save(root / "train/class_2/noise.png")  # nothing like the smooth colour classes
    ds = load_dataset(root)
    config = TrainConfig(model=ModelConfig(backbone="test_tiny"))
    report = audit_prepared(prepare(ds, make_splits(ds), config), config)
    names = {(ds.paths[f.index].name, f.kind, f.detail.split(":")[0]) for f in report.findings}
    assert ("uniform.png", "low quality", "uniform") in names
    assert ("tiny.png", "low quality", "tiny") in names
    ranked = [ds.paths[report.labelled[r]].name for r in np.argsort(-report.outliers)]
    assert ranked[0] in ("noise.png", "uniform.png")


def test_class_names_that_differ_only_by_spelling_are_noted(tmp_path, capsys):
    root = split_folders(tmp_path / "imgs", {"train": 6})
    rows = [(str(p), "sun flower" if p.parent.name == "class_0" else "sun_flower" if p.parent.name == "class_1"
             else "rose") for p in sorted(root.rglob("*.png"))]
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    assert main(["audit", str(tmp_path / "labels.csv"), *TINY, "--out", str(tmp_path / "audit"), "--json",
                 "--quiet"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any("'sun flower', 'sun_flower'" in n for n in notes)
    assert not any("rose" in n for n in notes)


def test_audit_csv_round_trips_through_exclude(leaky, tmp_path, capsys):
    main(["audit", str(leaky), *TINY, "--out", str(tmp_path / "audit"), "--quiet"])
    listed = {r["path"] for r in _rows(tmp_path / "audit" / "audit.csv")}
    assert listed
    full = load_dataset(leaky)
    kept = load_dataset(leaky, exclude=tmp_path / "audit" / "audit.csv")
    assert len(kept) == len(full) - len(listed)
    assert not listed & set(kept.keys())
    assert kept.fingerprint != full.fingerprint
    # In-memory images are named by their pixels, so leaving some out does not rename the rest.
    digits = load_dataset("digits:10")
    table = tmp_path / "some.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([("path",), *[(k,) for k in digits.keys()[:5]]])
    fewer = load_dataset("digits:10", exclude=table)
    assert fewer.keys() == digits.keys()[5:]
    main(["compare", "--data", str(leaky), "--exclude", str(tmp_path / "audit" / "audit.csv"), "--strategies",
          "probe", *TINY, "--out", str(tmp_path / "run"), "--quiet"])
    assert "copies across splits" not in " ".join(capsys.readouterr().err.split())


def test_exclude_names_what_is_wrong(leaky, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.png,a\n")
    assert main(["data", str(leaky), "--exclude", str(bad)]) == 2
    assert "no 'path' column" in " ".join(capsys.readouterr().err.split())
    other = tmp_path / "other.csv"
    other.write_text(f"path\n{tmp_path / 'elsewhere.png'}\n")
    assert main(["data", str(leaky), "--exclude", str(other)]) == 2
    assert "none of the 1 images" in " ".join(capsys.readouterr().err.split())


def _digit_folders(root: Path, classes: range, per_class: int, offset: int = 0) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in classes:
        folder = root / str(c)
        folder.mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(digits.target == c)[offset:offset + per_class]):
            grey = np.round(digits.images[i] / 16 * 255).astype(np.uint8)
            Image.fromarray(grey).convert("RGB").resize((32, 32), Image.Resampling.NEAREST).save(folder / f"{k}.png")
    return root


def test_a_digit_of_a_class_never_trained_on_is_unknown(tmp_path, capsys):
    data = _digit_folders(tmp_path / "known", range(5), 40)
    strangers = _digit_folders(tmp_path / "strangers", range(5, 10), 15)
    known_new = _digit_folders(tmp_path / "known_new", range(5), 15, offset=100)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--strategy", "probe", "--image-size", "64", "--out", str(run),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), str(strangers), str(known_new), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    rule = json.loads(next(run.rglob("unknown.json")).read_text())
    assert rows[0]["threshold"] == pytest.approx(rule["threshold"], abs=1e-4)
    stranger = [r for r in rows if "strangers" in r["file"]]
    known = [r for r in rows if "known_new" in r["file"]]
    rejected = lambda rs: sum(r["label"] == "unknown" for r in rs) / len(rs)  # noqa: E731
    # ImageNet features tell digits apart only so far (an 8 is a confident 3): rejection is a matter of degree.
    assert rejected(stranger) >= max(0.25, 2 * rejected(known))
    assert all(r["nearest"] in map(str, range(5)) for r in stranger)
    # The precision among accepted known images is what the threshold was chosen for.
    accepted = [r for r in known if r["label"] != "unknown"]
    assert sum(r["label"] == Path(r["file"]).parent.name for r in accepted) / len(accepted) >= 0.9
    # --reject-target 0 always answers a class.
    assert main(["predict", str(run), str(strangers), "--json", "--reject-target", "0"]) == 0
    assert not [r for r in json.loads(capsys.readouterr().out) if r["label"] == "unknown"]


def test_a_model_right_on_every_validation_image_still_refuses_the_strangest_inputs():
    # 49 validation images, all right (hymenoptera's probe): the precision target alone would accept
    # every score up to validation's strangest image, and so nearly every image unlike the training ones.
    rng = np.random.default_rng(0)
    y = np.arange(49) % 2
    probs = np.full((49, 2), 0.02)
    probs[np.arange(49), y] = 0.98
    distance = rng.gamma(2.0, 0.05, 49)
    distance[0] = 0.9  # one validation image far from the training ones
    rule = fit_rule(probs, y, distance)
    accepted = np.array(rule.val_scores) <= rule.threshold
    assert rule.reachable and 0.9 <= accepted.mean() <= 0.95
    stranger = np.quantile(distance, 0.97)
    assert rule.score(probs[:1], np.array([stranger]))[0] > rule.threshold
    # A target of 0 never refuses, in the API as on the command line.
    assert rule.with_target(0).threshold == float("inf")


def test_a_csv_listing_a_file_twice_or_under_two_labels_is_caught(tmp_path):
    root = split_folders(tmp_path / "imgs", {"train": 8})
    files = sorted(root.rglob("*.png"))
    rows = [(str(p), p.parent.name) for p in files]
    rows += [rows[0], (rows[1][0], "class_2" if rows[1][1] != "class_2" else "class_0")]  # twice; two labels
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    ds = load_dataset(tmp_path / "labels.csv")
    config = TrainConfig(model=ModelConfig(backbone="test_tiny"))
    report = audit_prepared(prepare(ds, make_splits(ds), config), config)
    conflicts = report.of_kind("label conflict")
    assert {ds.paths[f.index].name for f in conflicts} == {files[1].name}
    assert all("the same file under two labels" in f.detail for f in conflicts)
    twice = [f for f in report.findings if f.kind in ("leak", "duplicate") and ds.paths[f.index] == files[0]]
    assert len(twice) == 1 and ds.paths[twice[0].other] == files[0] and twice[0].score == 1.0


def _flipped_digits(one_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits (pixels, true labels) with one label in ``one_in`` changed to another class at
    random: (x, y, the noisy labels, the flipped rows)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    flips = rng.choice(len(y), len(y) // one_in, replace=False)
    noisy = y.copy()
    noisy[flips] = (y[flips] + rng.integers(1, 10, len(flips))) % 10
    return x, y, noisy, flips


def test_pruning_rounds_find_flipped_labels_one_round_missed_and_stay_precise():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from transferlab.train.label_issues import label_issues, pruned_label_issues

    x, y, noisy, flips = _flipped_digits(5)

    def out_of_fold(rows):
        return cross_val_predict(LogisticRegression(C=0.1, max_iter=300), x[rows] / 16, noisy[rows], cv=5,
                                 method="predict_proba")

    one = set(np.flatnonzero(label_issues(out_of_fold(np.arange(len(y))), noisy).flagged).tolist())
    pruned, probs = pruned_label_issues(out_of_fold, noisy)
    found = set(np.flatnonzero(pruned.flagged).tolist())
    assert found > one and len(found & set(flips.tolist())) > len(one & set(flips.tolist()))
    assert len(found & set(flips.tolist())) / len(found) >= 0.9 and probs.shape == (len(y), 10)
    # A class about to fall below two images stops the rounds instead of failing its folds.
    tiny = np.array([0, 0, 1, 1, 1, 1])
    issues, _ = pruned_label_issues(lambda rows: np.tile([[0.1, 0.9]], (len(rows), 1)), tiny)
    assert issues.flagged[:2].all() and not issues.flagged[2:].any()


def test_the_neighbour_vote_sharpens_the_ranking_of_flipped_labels():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from transferlab.train.label_issues import label_issues, neighbour_probabilities
    from transferlab.train.probe import stratified_folds

    x, y, noisy, flips = _flipped_digits(10)
    folds = stratified_folds(noisy, 0)
    probe = cross_val_predict(LogisticRegression(C=0.1, max_iter=300), x / 16, noisy, cv=folds, method="predict_proba")
    votes = neighbour_probabilities(x, noisy, folds)
    # Out of fold: a flipped image's own label never votes, so its true class gets the votes.
    assert (votes[flips].argmax(1) == y[flips]).mean() > 0.9
    assert np.allclose(votes.sum(1), 1)

    def precision_at_n(probs):
        return len(set(np.argsort(-label_issues(probs, noisy).margin)[:len(flips)]) & set(flips.tolist())) / len(flips)

    assert precision_at_n((probe + votes) / 2) > precision_at_n(probe)
