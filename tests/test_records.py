"""Every file a later command reads back, written with valid syntax but the wrong content, or cut
short: each is a one-line error naming the file and the fix (exit 2, no traceback), or is rebuilt on
--resume. And the bad input a hostile run found: each a one-line error or a correct result."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compare_argv, error_of, make_class_folders
from transferlab.cli import main
from transferlab.core.errors import DataError
from transferlab.core.layout import ResultsFolder
from transferlab.data import load_dataset, make_splits

FAST = ["--backbone", "test_tiny", "--strategies", "probe,features,ensemble", "--max-epochs", "2", "--quiet"]


def compare_args(data: Path, out: Path, *extra: str) -> list[str]:
    return compare_argv(data, out, FAST, *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    data = make_class_folders(root / "data", n_per_class=8, n_classes=2)
    out = root / "out"
    assert main(compare_args(data, out)) == 0
    return data, out


@pytest.fixture
def run(trained, tmp_path):
    data, out = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return data, ResultsFolder(copy)


def _first_line(path: Path) -> None:
    path.write_text(path.read_text()[: max(1, len(path.read_text()) // 2)])


# What predict reads: a damaged record is exit 2 naming the file.
PREDICT_RECORDS = [
    ("metrics.json", lambda r: r.metrics, {}),
    ("metrics.json", lambda r: r.metrics, {"runs": [], "summary": {}, "winner": "probe"}),
    ("model.json", lambda r: r.run("probe", 0).model, "no head"),
    ("model.json", lambda r: r.run("probe", 0).model, "one class"),
    ("calibration.json", lambda r: r.run("probe", 0).calibration, [1, 2]),
    ("calibration.json", lambda r: r.run("probe", 0).calibration, {"temperature": 0}),
    ("calibration.json", lambda r: r.run("probe", 0).calibration, {"temperature": "hot"}),
    ("ensemble.json", lambda r: r.run("ensemble", 0).ensemble, {"members": {"probe": {"folder": 3}}}),
]


@pytest.mark.parametrize("name,where,content", PREDICT_RECORDS, ids=[f"{n}:{c}" for n, _, c in PREDICT_RECORDS])
def test_a_record_with_the_wrong_content_is_a_one_line_error_naming_it(run, capsys, name, where, content):
    data, folder = run
    path = where(folder)
    if content == "no head":
        info = json.loads(path.read_text())
        del info["head"]
        content = info
    elif content == "one class":
        info = json.loads(path.read_text())
        info["classes"] = info["classes"][:1]
        content = info
    path.write_text(json.dumps(content))
    image = next((data / "class_0").iterdir())
    strategy = ["--strategy", "ensemble"] if name == "ensemble.json" else \
        [] if name == "metrics.json" else ["--strategy", "probe"]
    assert main(["predict", str(folder.path), str(image), *strategy]) == 2
    msg = error_of(capsys)
    assert name in msg and "damaged" in msg and "Traceback" not in msg, msg


@pytest.mark.parametrize("name", ["metrics.json", "model.json", "calibration.json"])
def test_a_record_cut_short_is_a_one_line_error_naming_it(run, capsys, name):
    data, folder = run
    path = {"metrics.json": folder.metrics, "model.json": folder.run("probe", 0).model,
            "calibration.json": folder.run("probe", 0).calibration}[name]
    _first_line(path)
    image = next((data / "class_0").iterdir())
    assert main(["predict", str(folder.path), str(image), *([] if name == "metrics.json" else
                                                            ["--strategy", "probe"])]) == 2
    assert name in error_of(capsys)


def test_a_temperature_of_zero_never_gives_nan_probabilities(run, capsys):
    data, folder = run
    folder.run("probe", 0).calibration.write_text(json.dumps({"temperature": 0.0}))
    assert main(["predict", str(folder.path), str(next((data / "class_0").iterdir())), "--strategy", "probe",
                 "--json"]) == 2
    captured = capsys.readouterr()
    assert "NaN" not in captured.out and "temperature" in captured.err


# What --resume reads: a damaged record is rebuilt (the run trained again) or refused naming the file.
def _result_wrong(folder: ResultsFolder) -> None:
    path = folder.run("probe", 0).result
    info = json.loads(path.read_text())
    info["test_acc"] = "high"
    path.write_text(json.dumps(info))


def _probs_cut(folder: ResultsFolder) -> None:
    path = folder.run("probe", 0).val_probs
    path.write_bytes(path.read_bytes()[:100])


def _probs_shape(folder: ResultsFolder) -> None:
    np.save(folder.run("probe", 0).val_probs, np.full((3, 2), 0.5, np.float32))


def _checkpoint_wrong(folder: ResultsFolder) -> None:
    r = folder.run("features", 0)
    r.result.unlink()
    torch.save({"model": 5}, r.checkpoint)


def _checkpoint_cut(folder: ResultsFolder) -> None:
    r = folder.run("features", 0)
    r.result.unlink()
    torch.save({"model": {"x": torch.zeros(3)}, "phase_index": 0}, r.checkpoint)
    r.checkpoint.write_bytes(r.checkpoint.read_bytes()[:50])


def _checkpoint_other_model(folder: ResultsFolder) -> None:
    r = folder.run("features", 0)
    r.result.unlink()
    torch.save({"model": {"x": torch.zeros(3)}, "phase_index": 0, "details": {"budget_cut": 7}}, r.checkpoint)


REBUILT = {"result.json wrong": _result_wrong, "val_probs.npy cut short": _probs_cut,
           "val_probs.npy wrong shape": _probs_shape, "checkpoint.pt wrong content": _checkpoint_wrong,
           "checkpoint.pt cut short": _checkpoint_cut, "checkpoint.pt of another model": _checkpoint_other_model}


@pytest.mark.parametrize("case", sorted(REBUILT))
def test_resume_trains_a_run_again_whose_record_is_damaged(run, capsys, case):
    data, folder = run
    REBUILT[case](folder)
    assert main(compare_args(data, folder.path, "--resume")) == 0
    err = error_of(capsys)
    assert "warning" in err and "Traceback" not in err, err
    metrics = json.loads(folder.metrics.read_text())
    assert {r["strategy"] for r in metrics["runs"]} == {"probe", "features", "ensemble"}
    assert all(0 <= r["test_acc"] <= 1 for r in metrics["runs"])
    np.load(folder.run("probe", 0).val_probs)  # whole again


@pytest.mark.parametrize("content", [[], {"data": {}}, "cut"])
def test_resume_refuses_a_damaged_manifest_naming_it(run, capsys, content):
    data, folder = run
    if content == "cut":
        _first_line(folder.manifest)
    else:
        folder.manifest.write_text(json.dumps(content))
    assert main(compare_args(data, folder.path, "--resume")) == 2
    assert "manifest.json" in error_of(capsys)


def test_resume_refuses_damaged_splits_naming_them(run, capsys):
    data, folder = run
    folder.splits.write_bytes(folder.splits.read_bytes()[:60])
    assert main(compare_args(data, folder.path, "--resume")) == 2
    assert "splits.npz" in error_of(capsys)


@pytest.mark.parametrize("content", ["cut", "data: [1, 2]\n", "train: {}\n"])
def test_a_damaged_config_yaml_names_the_file(run, capsys, content):
    data, folder = run
    if content == "cut":
        folder.config.write_text(folder.config.read_text()[:40])
    else:
        folder.config.write_text(content)
    assert main(["compare", "--config", str(folder.config), "--out", str(folder.path / "again")]) == 2
    msg = error_of(capsys)
    # Cut short, the YAML may still parse (to a shorter data path): then the path is what is refused.
    assert ("config.yaml" in msg or "does not exist" in msg) and "Traceback" not in msg


def test_a_scan_memo_with_the_wrong_content_is_scanned_again(tmp_path):
    from transferlab.core.paths import cache_home

    data = make_class_folders(tmp_path / "data", n_per_class=4, n_classes=2)
    first = load_dataset(str(data))
    memos = list((cache_home() / "scans").glob("*.json"))
    assert memos
    for memo in memos:
        memo.write_text(json.dumps({"fingerprint": 5, "bad": ["x"]}))
    assert load_dataset(str(data)).fingerprint == first.fingerprint


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("classes,per_class", [(3, 2), (40, 2), (2, 1)])
def test_classes_too_small_to_split_are_refused_up_front_naming_them(tmp_path, capsys, classes, per_class):
    data = make_class_folders(tmp_path / "data", n_per_class=per_class, n_classes=classes)
    assert main(compare_args(data, tmp_path / "out")) == 2
    msg = error_of(capsys)
    assert "class_0" in msg and "at least 3" in msg
    assert not (tmp_path / "out" / "config.yaml").exists()


def test_a_class_whose_training_images_are_all_unreadable_is_refused(tmp_path, capsys):
    root = tmp_path / "data"
    for split in ("train", "test"):
        make_class_folders(root / split, n_per_class=6, n_classes=3, seed=1 if split == "test" else 0)
    for f in (root / "train" / "class_2").iterdir():
        f.write_bytes(b"broken")
    assert main(compare_args(root, tmp_path / "out")) == 2
    msg = error_of(capsys)
    assert "'class_2'" in msg and "unreadable" in msg


def test_names_that_are_not_utf8_are_a_clear_error(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", n_per_class=4, n_classes=2)
    bad = os.fsdecode(b"caf\xe9.png")
    shutil.copy(data / "class_0" / "img_000.png", data / "class_0" / bad)
    with pytest.raises(DataError, match=r"caf\\xe9.png: the name is not valid UTF-8"):
        load_dataset(str(data))
    os.rename(data / "class_0", data / os.fsdecode(b"cl\xe4ss"))
    assert main(["data", str(data)]) == 2
    assert "not valid UTF-8" in error_of(capsys)


def test_a_huge_png_and_a_file_of_zeros_are_skipped_without_decoding_them(tmp_path):
    import zlib

    data = make_class_folders(tmp_path / "data", n_per_class=4, n_classes=2)
    # A 20000 x 20000 PNG header (valid IHDR) with no pixel data: refused from its header.
    ihdr = (20000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    def chunk_of(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
    png = b"\x89PNG\r\n\x1a\n" + chunk_of(b"IHDR", ihdr) + chunk_of(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk_of(b"IEND", b"")
    (data / "class_0" / "huge.png").write_bytes(png)
    with open(data / "class_1" / "zeros.png", "wb") as f:  # a sparse 1 GB file of zeros
        f.truncate(1 << 30)
    with pytest.warns(UserWarning) as caught:
        ds = load_dataset(str(data))
    reasons = dict(ds.skipped)
    assert "too large to decode here" in reasons[str(data / "class_0" / "huge.png")]
    assert "cannot decode" in reasons[str(data / "class_1" / "zeros.png")]
    assert len(ds) == 8 and len(caught) == 2


def test_csv_errors_name_the_right_line_and_refuse_nul_folders_and_devices(tmp_path):
    make_class_folders(tmp_path / "data", n_per_class=4, n_classes=2)
    rows = [f"data/class_{c}/img_00{i}.png,{c}" for c in range(2) for i in range(4)]
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\n\n" + rows[0] + "\n\n\"missing\n.png\",1\n")
    with pytest.raises(DataError, match=r"line 5: the path or label holds a control character"):
        load_dataset(str(csv_path))  # the row starts on line 5, after two blank lines, and runs over two
    csv_path.write_text("path,label\n\n" + rows[0] + "\n\"data/x\",\"1\"\n\nmissing.png,1\n")
    with pytest.raises(DataError, match=r"line 4: .*x does not exist"):
        load_dataset(str(csv_path))
    csv_path.write_text("path,label\n" + rows[0] + "\n" + rows[1].replace(",0", ",da\x00isy") + "\n")
    with pytest.raises(DataError, match="line 3: the path or label holds a control character"):
        load_dataset(str(csv_path))
    csv_path.write_text("path,label\ndata/class_0,0\n")
    with pytest.raises(DataError, match="line 2: .* is a folder, not an image file"):
        load_dataset(str(csv_path))
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is not a regular file"):
        load_dataset(str(fifo))


def test_train_beside_Train_is_refused(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "train", n_per_class=4, n_classes=2)
    make_class_folders(root / "Train", n_per_class=4, n_classes=2)
    with pytest.raises(DataError, match="differ only by case"):
        load_dataset(str(root))


def test_non_ascii_class_names_print_under_an_ascii_terminal(tmp_path):
    data = make_class_folders(tmp_path / "data", n_per_class=4, n_classes=2)
    os.rename(data / "class_0", data / "fleur_été")
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    done = subprocess.run([sys.executable, "-m", "transferlab", "data", str(data)], capture_output=True, env=env,
                          text=True, errors="replace", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fleur_\\xe9t\\xe9" in done.stdout or "fleur_" in done.stdout


def test_the_results_folder_removed_during_a_run_is_one_line(trained, tmp_path, capsys, monkeypatch):
    from transferlab.train import run as run_module

    data, _ = trained
    out = tmp_path / "out"
    real = run_module.save_predictions

    def vanish(run_dir, *args):
        shutil.rmtree(out)
        return real(run_dir, *args)
    monkeypatch.setattr(run_module, "save_predictions", vanish)
    assert main(compare_args(data, out)) == 2
    msg = error_of(capsys)
    assert "was removed while this command was writing to it" in msg


def test_a_checkpoint_write_that_fails_names_the_file(trained, tmp_path, capsys, monkeypatch):
    from transferlab.train import checkpoints

    data, _ = trained
    real = torch.save

    def full(obj, f, *a, **k):
        real(obj, f, *a, **k)
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")
    monkeypatch.setattr(checkpoints.torch, "save", full)
    assert main(compare_args(data, tmp_path / "out")) == 2
    msg = error_of(capsys)
    assert "checkpoint.pt" in msg and "Traceback" not in msg and "inline_container" not in msg


def test_splits_of_a_train_test_folder_carve_validation_from_train(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "train", n_per_class=10, n_classes=2)
    make_class_folders(root / "test", n_per_class=5, n_classes=2, seed=3)
    ds = load_dataset(str(root))
    splits = make_splits(ds)
    assert len(splits["test"]) == 10 and len(splits["val"]) == 4 and len(splits["train"]) == 16
    assert Image.open(ds.paths[splits["test"][0]]).size  # the test images are test/'s
    assert all("test" in str(ds.paths[i]) for i in splits["test"])


def test_a_full_cache_disk_names_the_file_and_suggests_transferlab_home(trained, tmp_path, capsys, monkeypatch):
    from transferlab.data import imagecache

    data, _ = trained

    def full(path, **kwargs):  # numpy's open_memmap fails to write, naming no file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(imagecache.np.lib.format, "open_memmap", full)
    monkeypatch.setenv("TRANSFERLAB_HOME", str(tmp_path / "fresh-home"))
    assert main(compare_args(data, tmp_path / "out")) == 2
    msg = error_of(capsys)
    assert "fresh-home" in msg and "disk is full" in msg and "TRANSFERLAB_HOME" in msg and "--out" not in msg


def test_output_to_a_full_device_is_one_line_without_suggesting_out(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "transferlab", "strategies"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "output" in done.stderr and "--out" not in done.stderr
