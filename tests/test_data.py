import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from conftest import make_class_folders, synthetic_image
from transferlab.cli import main
from transferlab.core.errors import DataError
from transferlab.data import DataWarning, flowers17, load_dataset, make_splits, open_rgb, per_class_subset


def test_digits_builtin():
    ds = load_dataset("digits")
    assert len(ds) == 1797 and ds.classes == [str(d) for d in range(10)]
    assert ds.image(0).mode == "RGB" and ds.image(0).size == (8, 8)


def test_splits_stratified_disjoint_deterministic():
    ds = load_dataset("digits")
    a, b, c = make_splits(ds, seed=3), make_splits(ds, seed=3), make_splits(ds, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    sets = [set(a[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(len(s) for s in sets) == len(ds)
    overall = np.bincount(ds.labels) / len(ds)
    for k, frac in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        counts = np.bincount(ds.labels[a[k]], minlength=10)
        assert abs(len(a[k]) / len(ds) - frac) < 0.02
        assert np.abs(counts / counts.sum() - overall).max() < 0.02


def test_per_class_subsets_are_nested_and_capped():
    ds = load_dataset("digits")
    train = make_splits(ds)["train"]
    small, big = per_class_subset(train, ds.labels, 2, seed=1), per_class_subset(train, ds.labels, 10, seed=1)
    assert set(small) <= set(big) and set(big) <= set(train)
    assert np.bincount(ds.labels[small]).tolist() == [2] * 10
    huge = per_class_subset(train, ds.labels, 10_000, seed=1)
    assert np.array_equal(np.sort(huge), np.sort(train))


def test_class_folders_with_odd_names_and_modes(tmp_path):
    root = make_class_folders(tmp_path / "d", n_per_class=3, n_classes=2)
    rng = np.random.default_rng(0)
    odd = root / "class_0"
    synthetic_image(0, rng).save(odd / "with space é.jpg")
    synthetic_image(0, rng).convert("L").save(odd / "grey.png")
    synthetic_image(0, rng).convert("P").save(odd / "palette.gif")
    synthetic_image(0, rng).convert("RGBA").save(odd / "alpha.png")
    synthetic_image(0, rng).convert("CMYK").save(odd / "cmyk.jpg")
    Image.fromarray((rng.random((20, 30)) * 65535).astype(np.uint16)).save(odd / "sixteen.png")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(odd / "tiny.png")
    (odd / "notes.txt").write_text("not an image")
    ds = load_dataset(root)
    assert len(ds) == 13 and not ds.skipped
    for i in range(len(ds)):
        assert ds.image(i).mode == "RGB"


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((4, 4), 40000, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    px = np.asarray(open_rgb(tmp_path / "a.png"))
    assert abs(int(px[0, 0, 0]) - 40000 // 257) <= 1


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert open_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_huge_image_decodes(tmp_path, monkeypatch):
    from transferlab import allow_large_images

    Image.new("RGB", (15000, 13000), (10, 200, 10)).save(tmp_path / "big.jpg", quality=50)
    # A guard like Pillow's own (which refuses twice its limit), restored after the test.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000_000)
    with pytest.raises(Image.DecompressionBombError):  # refused until the caller opts in
        open_rgb(tmp_path / "big.jpg", draft_size=256)
    allow_large_images()  # what the command line does
    img = open_rgb(tmp_path / "big.jpg", draft_size=256)
    assert min(img.size) >= 256


def _corrupt_folder(tmp_path):
    root = make_class_folders(tmp_path / "d", n_per_class=4, n_classes=2)
    good = io.BytesIO()
    synthetic_image(1, np.random.default_rng(1), 64).save(good, "JPEG")
    (root / "class_1" / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / "class_0" / "garbage.png").write_bytes(b"this is not a png")
    return root


def test_corrupt_images_skipped_with_warning(tmp_path):
    root = _corrupt_folder(tmp_path)
    with pytest.warns(DataWarning) as record:
        ds = load_dataset(root)
    messages = " ".join(str(w.message) for w in record)
    assert "truncated.jpg" in messages and "garbage.png" in messages
    assert len(ds) == 8 and len(ds.skipped) == 2


def test_corrupt_images_strict_is_an_error(tmp_path):
    root = _corrupt_folder(tmp_path)
    with pytest.raises(DataError, match="truncated.jpg"):
        load_dataset(root, strict=True)


def test_data_command_lists_skipped_files(tmp_path, capsys):
    root = _corrupt_folder(tmp_path)
    assert main(["data", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == 8 and {s["file"].rsplit("/", 1)[1] for s in info["skipped"]} == {
        "truncated.jpg", "garbage.png"}
    assert info["classes"] == {"class_0": 4, "class_1": 4} and len(info["fingerprint"]) == 16


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("empty_class", "has no images"),
    ("single_class", "at least two"),
    ("loose", "own subfolder"),
])
def test_bad_folders_have_clear_errors(tmp_path, case, message):
    root = tmp_path / "d"
    if case != "missing":
        make_class_folders(root, n_per_class=2, n_classes=1 if case == "single_class" else 2)
    if case == "empty_class":
        (root / "empty").mkdir()
        (root / "empty" / "readme.txt").write_text("x")
    if case == "loose":
        root = tmp_path / "loose"
        root.mkdir()
        synthetic_image(0, np.random.default_rng(0)).save(root / "a.png")
    with pytest.raises(DataError, match=message):
        load_dataset(root)


def test_split_folders(tmp_path):
    make_class_folders(tmp_path / "d" / "train", n_per_class=10, n_classes=2)
    make_class_folders(tmp_path / "d" / "test", n_per_class=3, n_classes=2, seed=1)
    ds = load_dataset(tmp_path / "d")
    splits = make_splits(ds)
    assert len(splits["test"]) == 6 and len(splits["val"]) == 4 and len(splits["train"]) == 16
    assert set(splits["train"]).isdisjoint(splits["val"])


def test_fingerprint_tracks_content(tmp_path):
    root = make_class_folders(tmp_path / "d", n_per_class=3, n_classes=2)
    first = load_dataset(root).fingerprint
    assert load_dataset(root).fingerprint == first
    synthetic_image(0, np.random.default_rng(9)).save(root / "class_0" / "img_000.png")
    assert load_dataset(root).fingerprint != first


def _fake_flowers(folder, per_class=3):
    """A tiny stand-in for the official archive: ``per_class`` images of each class."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    numbers = [c * 80 + k + 1 for c in range(17) for k in range(per_class)]
    with tarfile.open(folder / "17flowers.tgz", "w:gz") as tar:
        for n in numbers:
            buf = io.BytesIO()
            synthetic_image(n // 80, rng, 16).save(buf, "JPEG")
            info = tarfile.TarInfo(f"jpg/image_{n:04d}.jpg")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
        evil = tarfile.TarInfo("../../evil.txt")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    arr = np.array(numbers).reshape(17, per_class)
    split = {"trn": arr[:, :1], "val": arr[:, 1:2], "tst": arr[:, 2:]}
    savemat(folder / "datasplits.mat", {f"{k}{i}": v.ravel()[None, :] for k, v in split.items() for i in (1, 2, 3)})


def test_flowers17_from_local_copy(monkeypatch, _isolated_home):
    folder = _isolated_home / "flowers17"
    _fake_flowers(folder)
    monkeypatch.setattr(flowers17, "MD5", {n: flowers17._md5(folder / n) for n in flowers17.MD5})
    ds = load_dataset("flowers17")
    assert len(ds) == 51 and ds.classes[0] == "Daffodil" and ds.classes[16] == "Pansy"
    assert ds.labels.tolist() == [n // 3 for n in range(51)]
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 17, "val": 17, "test": 17}
    assert not (folder.parent.parent / "evil.txt").exists() and not (folder / "evil.txt").exists()


def test_flowers17_bad_checksum(_isolated_home):
    _fake_flowers(_isolated_home / "flowers17")
    with pytest.raises(DataError, match="md5"):
        load_dataset("flowers17")


def test_flowers17_offline_explains_local_copy(monkeypatch):
    def no_network(url, dest):
        import urllib.error

        raise urllib.error.URLError("no network")

    monkeypatch.setattr(flowers17, "_download", no_network)
    with pytest.raises(DataError, match="copy them into"):
        load_dataset("flowers17")


def write_csv(path, rows, header="path,label"):
    path.write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return path


def test_labels_from_a_csv_with_and_without_splits(tmp_path):
    from transferlab.data import load_dataset

    data = make_class_folders(tmp_path / "imgs", n_per_class=4, n_classes=2)
    files = sorted(data.rglob("*.png"))
    plain = write_csv(tmp_path / "labels.csv", [(str(f.relative_to(tmp_path)), f.parent.name) for f in files])
    ds = load_dataset(plain)
    assert ds.classes == ["class_0", "class_1"] and len(ds) == 8 and not ds.splits
    split = ["train", "train", "val", "test"] * 2
    with_splits = write_csv(tmp_path / "split.csv", [(str(f.relative_to(tmp_path)), f.parent.name, s)
                                                     for f, s in zip(files, split)], "path,label,split")
    assert {k: len(v) for k, v in load_dataset(with_splits).splits.items()} == {"train": 4, "val": 2, "test": 2}


@pytest.mark.parametrize("rows, header, message", [
    ([("imgs/nope.png", "a")], "path,label", "line 2: .*nope.png does not exist"),
    ([("x.png", "a")], "file,class", "needs a header with 'path' and 'label'"),
    ([("x.png", "")], "path,label", "no row with a label"),
    ([("", "a")], "path,label", "line 2: empty path"),
    ([("x.png", "a", "later")], "path,label,split", "split 'later' is not one of"),
])
def test_bad_csv_rows_name_the_line_and_the_fix(tmp_path, rows, header, message):
    from transferlab.data import load_dataset

    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match=message):
        load_dataset(write_csv(tmp_path / "labels.csv", rows, header))


def test_imbalanced_classes_are_flagged(tmp_path, capsys):
    root = tmp_path / "data"
    make_class_folders(root, n_per_class=13, n_classes=1)
    make_class_folders(tmp_path / "small", n_per_class=3, n_classes=1)
    (tmp_path / "small" / "class_0").rename(root / "rare")
    assert main(["data", str(root)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "imbalanced" in err and "'class_0' has 13 images, 'rare' 3" in err and "--class-weights auto" in err
