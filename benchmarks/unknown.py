"""Unknown inputs on flower_photos: how well the unknown-input score of a trained run separates images
of classes it never saw from the test images of its own classes, and what the default threshold does.

    python benchmarks/unknown.py [--data ../shared/datasets/flower_photos]
        [--others ../shared/datasets/hymenoptera] [--strategy probe] [--held-out all|CLASS,...]
        [--out runs/bench-unknown]

For every held-out class: a compare of ``--strategy`` on the other four classes (train, val and test
as given), then ``Predictor.unknown_scores`` on that model's own test images (known) and on the held-out
class's test images (unknown): the AUROC of the score, and the same for the calibrated confidence
alone and the distance alone (the two signals the score adds). Then the five-class model against the
hymenoptera test photos (ants and bees). At the default threshold (95% precision on validation):
the share of known test images refused and the accuracy among those accepted.

Printed: a JSON row per model, then a table; and what kind of CPU (native bf16 or not).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from transferlab.data import load_dataset, make_splits
from transferlab.experiments.compare import CompareConfig, compare
from transferlab.inference.predict import Predictor
from transferlab.runtime.device import bf16_native
from transferlab.train import DataConfig, TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return path


def _auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(known)), np.ones(len(unknown))], np.r_[known, unknown]))


def measure(run: Path, known: list[str], strangers: list[str], truth: list[str]) -> dict:
    """AUROCs of the score and its two parts, and the default threshold's effect on the known images."""
    p = Predictor(run)
    probs, scores, threshold = p.unknown_scores(known + strangers)
    _, distance = p.probabilities_and_distances(known + strangers)
    n = len(known)
    conf = 1 - probs.max(1)
    accepted = scores[:n] <= threshold
    right = np.array([p.classes[k] for k in probs[:n].argmax(1)]) == np.array(truth)
    row = {"auroc": round(_auroc(scores[:n], scores[n:]), 3), "auroc_confidence": round(_auroc(conf[:n], conf[n:]), 3),
           "known_rejected": round(float(1 - accepted.mean()), 3),
           "accuracy_all": round(float(right.mean()), 3),
           "accuracy_accepted": round(float(right[accepted].mean()), 3) if accepted.any() else None,
           "unknown_rejected": round(float((scores[n:] > threshold).mean()), 3)}
    if distance is not None:
        row["auroc_distance"] = round(_auroc(distance[:n], distance[n:]), 3)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(SHARED / "flower_photos"))
    p.add_argument("--others", default=str(SHARED / "hymenoptera"))
    p.add_argument("--strategy", default="probe")
    p.add_argument("--held-out", default="all")
    p.add_argument("--out", default="runs/bench-unknown")
    args = p.parse_args(argv)
    print(f"CPU native bf16: {bf16_native(torch.device('cpu'))}; torch threads {torch.get_num_threads()}", flush=True)
    ds = load_dataset(args.data)
    splits = make_splits(ds)
    where = {int(i): s for s, idx in splits.items() for i in idx}
    rows = [(str(ds.paths[i]), ds.classes[ds.labels[i]], where[i]) for i in range(len(ds))]
    held = ds.classes if args.held_out == "all" else args.held_out.split(",")
    others = sorted(str(f) for f in (Path(args.others) / "test").rglob("*.jpg"))
    config, plan, out = TrainConfig(), CompareConfig(strategies=(args.strategy,), seeds=1), Path(args.out)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for cls in [*held, None]:
            kept = [r for r in rows if r[1] != cls]
            run = out / f"{args.strategy}-without-{cls or 'none'}"
            compare(DataConfig(str(_csv(Path(tmp) / f"{cls}.csv", kept))), config, run, plan, quiet=True)
            test = [r for r in kept if r[2] == "test"]
            strangers = [r[0] for r in rows if r[1] == cls and r[2] == "test"] if cls else others
            row = {"model": f"4 classes, {cls} unknown" if cls else "5 classes, hymenoptera unknown",
                   **measure(run, [r[0] for r in test], strangers, [r[1] for r in test])}
            results.append(row)
            print(json.dumps(row), flush=True)
    near = [r["auroc"] for r in results[:-1]]
    if near:
        print(f"held-out flower class: AUROC {np.mean(near):.3f} on average over {len(near)} "
              f"(min {min(near):.3f}); hymenoptera: {results[-1]['auroc']:.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
