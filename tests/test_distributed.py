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
ARGS = ["-m", "transferlab", "compare", "--data", "digits:6", "--image-size", "32", "--strategies",
        "features,probe", "--seeds", "2", "--max-epochs", "3", "--quiet"]


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
