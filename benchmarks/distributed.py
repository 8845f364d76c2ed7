"""Wall time of a compare in run-parallel mode: one process against ``torchrun --nproc_per_node=2``.

    python benchmarks/distributed.py [--data digits:20] [--repeats 3]

Both sides run the same compare (cold caches: a fresh TRANSFERLAB_HOME per run) as subprocesses;
the one-process run keeps torch's default thread count (every core), each of the two processes
gets half of the cores (OMP_NUM_THREADS). Prints the median wall time of each and the speed-up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPARE = ["-m", "transferlab", "compare", "--image-size", "64", "--strategies", "features,probe,finetune,chain-thaw",
           "--seeds", "2", "--max-epochs", "4", "--quiet"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    with tempfile.TemporaryDirectory(prefix="tl-dist-") as tmp:
        env = {**env, "TRANSFERLAB_HOME": str(Path(tmp) / "home")}
        t0 = time.perf_counter()
        subprocess.run([*cmd, "--out", str(Path(tmp) / "out")], env=env, check=True, capture_output=True)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="digits:20")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    one = [sys.executable, *COMPARE, "--data", args.data]
    two = [torchrun, "--standalone", "--nproc_per_node=2", *COMPARE, "--data", args.data]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    t1, t2 = [], []
    for _ in range(args.repeats):
        t1.append(timed(one, env))
        t2.append(timed(two, {**env, "OMP_NUM_THREADS": str(max(1, cores // 2))}))
    print(f"compare {' '.join(COMPARE[3:])} --data {args.data}; {cores} cores; {args.repeats} repeats")
    print("| processes | median wall s | all |")
    print("|---|---|---|")
    print(f"| 1 | {statistics.median(t1):.1f} | {', '.join(f'{t:.1f}' for t in t1)} |")
    print(f"| 2 (torchrun, run-parallel) | {statistics.median(t2):.1f} | {', '.join(f'{t:.1f}' for t in t2)} |")
    print(f"speed-up: {statistics.median(t1) / statistics.median(t2):.2f}x")


if __name__ == "__main__":
    main()
