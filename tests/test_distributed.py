"""torchrun: a compare spread over two CPU processes (gloo) gives exactly the runs of one process,
and its shared files are written once, complete."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
BASE = ["-m", "transferlab", "compare", "--data", "digits:6", "--image-size", "32", "--max-epochs", "3", "--quiet"]
ARGS = [*BASE, "--strategies", "features,probe", "--seeds", "2"]


def run(nproc: int, out: Path, home: Path) -> subprocess.CompletedProcess:
    # One thread per process in both runs: oneDNN's sums are then in the same order, so a run's
    # numbers do not depend on how many processes share the machine.
    env = {**os.environ, "TRANSFERLAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", *ARGS, "--out", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_run_parallel_compare_matches_one_process(tmp_path):
    home = tmp_path / "home"
    one, two = run(1, tmp_path / "one", home), run(2, tmp_path / "two", home)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("winner:") == 1  # one summary per job, not one per process
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert [(r["strategy"], r["seed"]) for r in m2["runs"]] == [("features", 0), ("features", 1), ("probe", 0),
                                                                ("probe", 1)]
    for a, b in zip(m1["runs"], m2["runs"]):
        assert (a["strategy"], a["seed"], a["test_acc"], a["val_acc"], a["test_loss"], a["epochs"]) == \
            (b["strategy"], b["seed"], b["test_acc"], b["val_acc"], b["test_loss"], b["epochs"])
    rows1 = list(csv.DictReader((tmp_path / "one" / "history.csv").open()))
    rows2 = list(csv.DictReader((tmp_path / "two" / "history.csv").open()))
    key = lambda r: (r["strategy"], r["seed"], r["phase"], r["epoch"], r["val_loss"])  # noqa: E731
    assert sorted(map(key, rows1)) == sorted(map(key, rows2)) and len(rows2) == len(set(map(key, rows2)))
    assert (tmp_path / "two" / "report.html").is_file()


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_data_parallel_compare_matches_one_process_within_rounding(tmp_path):
    """DDP over two processes with the same global batch: each process trains on half of every batch
    and the averaged gradient is the whole batch's, so the runs match one process up to the order of
    float sums. Dropout is off here: its masks would be drawn per process, a legitimate difference."""
    home = tmp_path / "home"
    extra = ["--strategies", "features,finetune", "--seeds", "1", "--dropout", "0", "--fp32", "--parallel", "data"]

    def go(nproc: int, out: Path) -> dict:
        env = {**os.environ, "TRANSFERLAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
        cmd = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", *BASE, *extra, "--out", str(out)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads((out / "metrics.json").read_text())

    one, two = go(1, tmp_path / "one"), go(2, tmp_path / "two")
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["processes"] == {"count": 2, "mode": "data", "global_batch": 32, "batch_per_process": 16,
                                     "learning_rates": "as in one process: the global batch is the --batch-size"}
    for a, b in zip(one["runs"], two["runs"]):
        assert a["strategy"] == b["strategy"] and a["epochs"] == b["epochs"]
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-2)
        assert abs(a["test_acc"] - b["test_acc"]) <= 0.1 + 1e-6  # at most one of the 10 test images
