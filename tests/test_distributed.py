"""torchrun: a compare spread over two CPU processes (gloo) gives exactly the runs of one process,
and its shared files are written once, complete."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    float sums. Dropout is off here: its masks would be drawn per process, a legitimate difference.
    Each run has a cache home of its own, so the two processes extract the frozen features together
    (half each, gathered) and their feature cache must equal the one process's."""
    extra = ["--strategies", "features,finetune", "--seeds", "1", "--dropout", "0", "--fp32", "--parallel", "data"]

    def go(nproc: int, out: Path) -> dict:
        env = {**os.environ, "TRANSFERLAB_HOME": str(tmp_path / f"home{nproc}"), "OMP_NUM_THREADS": "1"}
        cmd = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", *BASE, *extra, "--out", str(out)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads((out / "metrics.json").read_text())

    one, two = go(1, tmp_path / "one"), go(2, tmp_path / "two")
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["processes"] == {"count": 2, "mode": "data", "backend": "gloo", "global_batch": 32,
                                     "batch_per_process": 16,
                                     "learning_rates": "as in one process: the global batch is the --batch-size"}
    # One process under torchrun takes the same DDP path (a group of one: NCCL's smoke test on one GPU).
    alone = json.loads((tmp_path / "one" / "manifest.json").read_text())["processes"]
    assert (alone["count"], alone["mode"], alone["backend"], alone["global_batch"]) == (1, "data", "gloo", 32)
    for a, b in zip(one["runs"], two["runs"]):
        assert a["strategy"] == b["strategy"] and a["epochs"] == b["epochs"]
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-2)
        assert abs(a["test_acc"] - b["test_acc"]) <= 0.1 + 1e-6  # at most one of the 10 test images
    [d1], [d2] = ((tmp_path / f"home{n}" / "features").glob("*/done.npy") for n in (1, 2))
    assert np.array_equal(np.load(d1), np.load(d2))
    views = sorted(p.name for p in d1.parent.glob("view*.npy"))
    assert views and views == sorted(p.name for p in d2.parent.glob("view*.npy"))
    for name in views:
        np.testing.assert_allclose(np.load(d2.parent / name), np.load(d1.parent / name), rtol=1e-4, atol=1e-5)


def _worker_pid(torchrun: subprocess.Popen, rank: int) -> int:
    """The pid of the worker process of ``rank`` that ``torchrun`` started (its child with RANK=rank)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
        if ppid == torchrun.pid and f"RANK={rank}".encode() in env:
            return int(stat.parent.name)
    raise AssertionError(f"no worker of rank {rank} under torchrun {torchrun.pid}")


@pytest.mark.skipif(TORCHRUN is None or not Path("/proc/self/environ").exists(), reason="torchrun and /proc")
def test_a_dying_rank_stops_the_job_with_a_message_and_resume_finishes_it(tmp_path):
    """Two runs, one per process: rank 0 fits the probe (a second) and waits for rank 1's finetune.
    Rank 1 is killed (SIGKILL) in the middle of it: the job ends, rank 0 says why and that --resume
    continues. --resume trains only what is missing, and rank 0 again waits for rank 1 longer than
    the lock-step collective timeout (3 s here), which the exchange of finished runs must survive."""
    out, home = tmp_path / "out", tmp_path / "home"
    env = {**os.environ, "TRANSFERLAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", *BASE, "--max-epochs", "6", "--strategies",
           "probe,finetune", "--parallel", "runs", "--checkpoint-seconds", "0", "--out", str(out)]
    first = out / "probe" / "seed0" / "result.json"
    midway, finished = (out / "finetune" / "seed0" / name for name in ("checkpoint.pt", "result.json"))
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as job:
        deadline = time.monotonic() + 300
        while not (first.is_file() and midway.is_file()):
            assert job.poll() is None and time.monotonic() < deadline, "the runs never got under way"
            time.sleep(0.02)
        assert not finished.exists(), "rank 1 finished before it could be killed"
        os.kill(_worker_pid(job, 1), signal.SIGKILL)
        output, _ = job.communicate(timeout=300)
    assert job.returncode != 0
    stopped = [line for line in output.splitlines() if "rank 0:" in line]
    assert stopped and "--resume" in stopped[0], output[-3000:]
    saved = first.stat().st_mtime_ns
    assert not finished.exists()

    shutil.rmtree(out / "finetune")  # rank 1 trains it whole again: a wait of more than 3 s for rank 0
    resumed = subprocess.run([*cmd, "--resume"], env={**env, "TRANSFERLAB_COLLECTIVE_TIMEOUT": "3"},
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    runs = json.loads((out / "metrics.json").read_text())["runs"]
    assert [(r["strategy"], r["seed"]) for r in runs] == [("probe", 0), ("finetune", 0)]
    assert runs[1]["seconds"] > 3, "the wait this test is about did not happen"
    assert first.stat().st_mtime_ns == saved  # a finished run is kept, not trained again
