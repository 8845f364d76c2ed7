"""Bad input, damaged files, full disks and concurrent writers: one clear error each, nothing lost."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import compare_argv, error_of, make_class_folders
from transferlab.cli import main
from transferlab.core import io as tl_io
from transferlab.core.errors import DataError
from transferlab.core.io import folder_lock
from transferlab.data.datasets import load_folder
from transferlab.data.imagecache import resize_center

FAST = ["--backbone", "test_tiny", "--strategies", "probe", "--quiet"]


def compare_args(data: Path, out: Path, *extra: str) -> list[str]:
    return compare_argv(data, out, FAST, *extra)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished probe run on a tiny folder data set."""
    root = tmp_path_factory.mktemp("bad")
    data = make_class_folders(root / "data", n_per_class=8, n_classes=2)
    out = root / "out"
    assert main(compare_args(data, out)) == 0
    return data, out


def copy_run(out: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    return copy


# ---------------------------------------------------------------------------------------------
# --out


def test_out_that_is_a_file_is_refused(trained, tmp_path, capsys):
    data, _ = trained
    target = tmp_path / "results.txt"
    target.write_text("mine")
    assert main(compare_args(data, target)) == 2
    assert "is a file, not a folder" in error_of(capsys)
    assert target.read_text() == "mine"


def test_out_inside_the_data_folder_is_refused(trained, tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", n_per_class=4, n_classes=2)
    assert main(compare_args(data, data / "results")) == 2
    assert "inside the data folder" in error_of(capsys)
    assert not (data / "results").exists()


def test_failed_start_leaves_nothing_that_blocks_a_rerun(trained, tmp_path, capsys):
    data, _ = trained
    out = tmp_path / "out"
    assert main(compare_args(tmp_path / "no-such-data", out)) == 2
    assert "does not exist" in error_of(capsys)
    assert not (out / "config.yaml").exists()
    assert main(["compare", "--data", str(data), "--out", str(out), "--backbone", "no_such_net",
                 "--strategies", "probe", "--quiet"]) == 2
    assert not (out / "config.yaml").exists()
    assert main(compare_args(data, out)) == 0  # the same folder is then usable


def test_a_second_writer_of_the_same_results_folder_stops(trained, tmp_path, capsys):
    data, _ = trained
    out = tmp_path / "out"
    with folder_lock(out):
        assert main(compare_args(data, out)) == 2
    assert "another transferlab process" in error_of(capsys)


def test_stale_temporaries_of_dead_processes_are_removed(trained, tmp_path):
    data, out = trained
    run = copy_run(out, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run / "probe" / "seed0" / f".model.tmp{dead.pid}.safetensors"
    stale.write_bytes(b"half")
    mine = run / f".notes.tmp{os.getpid()}.json"  # a live process's: left alone
    mine.write_text("{}")
    assert main(compare_args(data, run, "--resume")) == 0
    assert not stale.exists() and mine.exists()


# ---------------------------------------------------------------------------------------------
# Damaged files


def test_damaged_metrics_json_names_the_file_and_resume_rewrites_it(trained, tmp_path, capsys):
    data, out = trained
    run = copy_run(out, tmp_path)
    (run / "metrics.json").write_text((out / "metrics.json").read_text()[:80])
    img = next((data / "class_0").iterdir())
    assert main(["predict", str(run), str(img)]) == 2
    msg = error_of(capsys)
    assert "metrics.json is damaged" in msg and "--resume" in msg
    assert main(compare_args(data, run, "--resume")) == 0
    assert main(["predict", str(run), str(img)]) == 0


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_damaged_weights_name_the_file(trained, tmp_path, capsys, damage):
    data, out = trained
    run = copy_run(out, tmp_path)
    weights = run / "probe" / "seed0" / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:100])
    assert main(["predict", str(run), str(next((data / "class_1").iterdir()))]) == 2
    msg = error_of(capsys)
    assert "model.safetensors" in msg and ("missing" in msg or "damaged" in msg) and "--resume" in msg


def test_damaged_config_yaml_is_an_error_not_a_traceback(trained, tmp_path, capsys):
    _, out = trained
    run = copy_run(out, tmp_path)
    (run / "config.yaml").write_text("data: {source: [unclosed\n")
    assert main(["compare", "--config", str(run / "config.yaml"), "--out", str(tmp_path / "again")]) == 2
    assert "config.yaml is damaged" in error_of(capsys)


def test_damaged_checkpoint_and_result_are_trained_again_on_resume(trained, tmp_path, capsys):
    data, out = trained
    run = copy_run(out, tmp_path)
    (run / "probe" / "seed0" / "result.json").write_text('{"strategy": "pro')
    (run / "probe" / "seed0" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(compare_args(data, run, "--resume")) == 0
    err = error_of(capsys)
    assert "result.json is damaged" in err and "checkpoint.pt is damaged" in err
    assert (run / "probe" / "seed0" / "result.json").read_text().startswith("{")


# ---------------------------------------------------------------------------------------------
# Data that changed, or does not fit together


def rewrite_same_size(path: Path, seed: int) -> None:
    """New pixels in a BMP of the same dimensions (so the same byte size), with the old mtime."""
    st = path.stat()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


def bmp_folders(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(6):
            img = np.full((24, 24, 3), 60 + 120 * c, np.uint8) + rng.integers(0, 20, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.bmp")
    return root


def test_new_pixels_with_the_same_name_size_and_mtime_change_the_fingerprint(tmp_path):
    data = bmp_folders(tmp_path / "data")
    before = load_folder(data).fingerprint
    time.sleep(0.01)
    rewrite_same_size(data / "c0" / "0.bmp", seed=1)
    assert load_folder(data).fingerprint != before


def test_two_folders_with_the_same_listing_get_their_own_fingerprints(tmp_path):
    a = bmp_folders(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b, copy_function=shutil.copy2)  # same names, sizes and mtimes
    rewrite_same_size(b / "c1" / "3.bmp", seed=2)
    assert load_folder(a).fingerprint != load_folder(b).fingerprint


def test_resume_after_the_data_changed_is_refused(tmp_path, capsys):
    data = bmp_folders(tmp_path / "data")
    out = tmp_path / "out"
    assert main(compare_args(data, out)) == 0
    rewrite_same_size(data / "c0" / "2.bmp", seed=3)
    assert main(compare_args(data, out, "--resume")) == 2
    assert "the data changed" in error_of(capsys)


def test_split_folders_must_hold_the_same_classes(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "train", n_per_class=4, n_classes=3)
    make_class_folders(root / "test", n_per_class=2, n_classes=2)
    with pytest.raises(DataError, match=r"test lacks the class folder\(s\) class_2"):
        load_folder(root)


def test_names_with_brackets_and_colons_are_printed_as_they_are(tmp_path, capsys):
    root = tmp_path / "data"
    for name in ("[bold]roses[x]", "tulips:fire:"):
        make_class_folders(tmp_path / "tmp", n_per_class=3, n_classes=1)
        shutil.move(tmp_path / "tmp" / "class_0", root / name)
    assert main(["data", str(root)]) == 0
    out = "".join(capsys.readouterr().out.split())
    assert "[bold]roses[x]" in out and "tulips:fire:" in out


# ---------------------------------------------------------------------------------------------
# Images that are too big, and full disks


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` pixels (a decompression bomb by header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_given_to_predict_is_a_clear_error(trained, tmp_path, capsys):
    _, out = trained
    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, 60_000, 60_000)
    assert main(["predict", str(out), str(bomb)]) == 2
    msg = error_of(capsys)
    assert "bomb.png" in msg and "too large" in msg


def test_predict_on_a_folder_skips_a_corrupt_image_and_names_it(trained, tmp_path, capsys):
    data, out = trained
    folder = tmp_path / "photos"
    folder.mkdir()
    good = [shutil.copy(p, folder) for p in sorted((data / "class_0").iterdir())[:2]]
    (folder / "broken.jpg").write_bytes(b"not an image")
    assert main(["predict", str(out), str(folder), "--json"]) == 0
    captured = capsys.readouterr()
    assert sorted(r["file"] for r in json.loads(captured.out)) == sorted(map(str, good))
    assert "skipped" in captured.err and "broken.jpg" in captured.err and "not a readable image" in captured.err
    # Named on the command line, the same file is an error: the user asked for it.
    assert main(["predict", str(out), str(folder / "broken.jpg")]) == 2
    assert "broken.jpg" in error_of(capsys)


def test_a_long_thin_strip_is_cached_without_enlarging_all_of_it():
    strip = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), 400).reshape(1, -1)).convert("RGB")
    out = resize_center(strip, 64)  # before: resized to 6.5 M x 64 px first (~1.2 GB) to keep one square
    assert out.shape == (64, 64, 3)


def test_too_little_free_space_fails_before_writing(trained, tmp_path, capsys, monkeypatch):
    data, _ = trained
    monkeypatch.setattr(tl_io.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    assert main(compare_args(data, tmp_path / "out")) == 2
    assert "not enough free disk space" in error_of(capsys)


def test_a_full_disk_while_writing_is_one_line_naming_the_file(trained, tmp_path, capsys, monkeypatch):
    data, _ = trained
    from transferlab.experiments import compare as compare_module

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    monkeypatch.setattr(compare_module, "write_text", full)
    assert main(compare_args(data, tmp_path / "out")) == 2
    msg = error_of(capsys)
    assert "config.yaml" in msg and "disk is full" in msg


def test_export_creates_its_folder(trained, tmp_path, capsys):
    _, out = trained
    target = tmp_path / "new" / "deeper" / "model.pt"
    assert main(["export", str(out), "--format", "torchscript", "--out", str(target)]) == 0
    assert target.is_file() and not list(target.parent.glob(".*tmp*"))


@pytest.mark.parametrize("argv", [["predict", "RUN", "x.png", "--top-k", "0"],
                                  ["classify", "x.png", "--top-k", "-1"]])
def test_top_k_is_checked_at_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "--top-k" in capsys.readouterr().err


def test_an_unreadable_image_is_skipped_like_a_corrupt_one(tmp_path, monkeypatch):
    data = make_class_folders(tmp_path / "data", n_per_class=4, n_classes=2)
    locked = data / "class_1" / "img_002.png"
    real_open = Path.open

    def open_(self, *args, **kwargs):
        if self == locked:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_open(self, *args, **kwargs)
    monkeypatch.setattr(Path, "open", open_)
    with pytest.warns(UserWarning, match="img_002.png: cannot read"):
        ds = load_folder(data)
    assert len(ds) == 7
    with pytest.raises(DataError, match="img_002.png: cannot read"):
        load_folder(data, strict=True)


@pytest.mark.parametrize("edit, message", [
    ("ema: 1.5", "key train.body.ema: 1.5 is above the maximum of 0.9999"),
    ("batch_size: 0", "key train.budget.batch_size: 0 is below the minimum of 1"),
    ("body_bn: sometimes", "key train.body.body_bn: 'sometimes' is not one of")])
def test_a_config_yaml_outside_the_limits_is_refused_like_the_command_line(trained, tmp_path, capsys, edit, message):
    _, out = trained
    run = copy_run(out, tmp_path)
    key = edit.split(":")[0]
    text = (run / "config.yaml").read_text()
    lines = [line[:len(line) - len(line.lstrip())] + edit if line.strip().startswith(f"{key}:") else line
             for line in text.splitlines()]
    assert lines != text.splitlines()
    (run / "config.yaml").write_text("\n".join(lines) + "\n")
    assert main(["compare", "--config", str(run / "config.yaml"), "--out", str(tmp_path / "again")]) == 2
    msg = error_of(capsys)
    assert message in msg and "config.yaml" in msg
    assert not (tmp_path / "again").exists()
