"""Test accuracy with fp32 vs bf16 autocast, same data, strategies and seed.

    python benchmarks/precision.py --data ../shared/datasets/hymenoptera [--strategies features,probe]

bf16 is forced on even where the CPU lacks native bf16 (transferlab's default there is fp32, see
``runtime.bf16_native``): the point is to see whether bf16 hurts accuracy, so on such a CPU the
bf16 rows are slow (oneDNN emulates bf16) and their seconds say nothing about a bf16 machine.
Data as in benchmarks/strategies.py: ``train/`` split 80/20 into training and validation, ``test/``
the test set.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from transferlab.data import load_dataset, stratified_split
from transferlab.runtime import Precision, bf16_native, tune_allocator
from transferlab.train import TrainConfig, prepare, train_one


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--strategies", default="features,probe")
    args = ap.parse_args()
    tune_allocator()  # as the command line does
    ds = load_dataset(args.data)
    splits = {"test": ds.splits["val"],
              **stratified_split(ds.labels, ds.splits["train"], (0.8, 0.2, 0.0), seed=0)}
    config = TrainConfig()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tl-precision-") as home:
        os.environ["TRANSFERLAB_HOME"] = home
        prep = prepare(ds, splits, config, quiet=True)
        native = bf16_native(prep.precision.device)
        for bf16 in (False, True):
            prep.precision = Precision(prep.precision.device, bf16=bf16)
            for name in args.strategies.split(","):
                t0 = time.perf_counter()
                r = train_one(prep, config, name, 0, Path(home) / f"{name}-{bf16}", quiet=True)
                rows.append((name, "bf16" if bf16 else "fp32", r.test_acc, r.val_acc, time.perf_counter() - t0))
                print(f"  {rows[-1][1]} {name:10s} test {r.test_acc:.1%} val {r.val_acc:.1%} "
                      f"{rows[-1][4]:.0f}s", flush=True)
    print(f"\nbf16 native on this device: {native}")
    print("| strategy | precision | test acc | val acc | seconds |\n|---|---|---|---|---|")
    for name, prec, test, val, sec in rows:
        print(f"| {name} | {prec} | {test:.1%} | {val:.1%} | {sec:.0f} |")


if __name__ == "__main__":
    main()
