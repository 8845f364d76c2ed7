"""Unknown inputs: which score separates unseen classes best, on a backbone's pretrained features.

    python benchmarks/unknown_scores.py [--backbone efficientnet_lite0] [--data ../shared/datasets/flower_photos]
        [--others ../shared/datasets/hymenoptera] [--match TEXT]

benchmarks/unknown.py measures the score transferlab ships (train.novelty: calibrated confidence plus
the cosine distance to the nearest training image, each standardised on validation). This one asks
whether another score would do better, without training a run per variant: the pretrained pooled
features (and the pooled output of the last inner stage) of every image, centre crops at the
backbone's resolution, then for each held-out flower class a logistic regression (standardised
features, C = 0.1) on the other four classes' training images and every candidate score.

A variant is chosen on validation (the held-out class's validation images against the known classes'
validation images), then read on test; the five-class model is read against the hymenoptera test
photos (ants and bees). Signals of a sum are each standardised on the known validation images, as
train.novelty does.

Printed: a table of AUROCs per held-out class, their mean, and hymenoptera; validation first, then test.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from transferlab.core.arrays import unit_rows
from transferlab.data import load_dataset, make_splits
from transferlab.inference.classify import preprocess
from transferlab.models.catalog import create_backbone
from transferlab.runtime.device import bf16_native
from transferlab.train.novelty import distance_rows

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@torch.no_grad()
def extract(backbone: str, paths: list[str], batch: int = 32) -> dict[str, np.ndarray]:
    """Pooled final features ("pool") and the pooled output of the last inner stage ("inner")."""
    bb = create_backbone(backbone)
    net = bb.model.eval()
    pool, inner = [], []
    for s in range(0, len(paths), batch):
        x = preprocess(paths[s:s + batch], bb.data_config)
        h = net.forward_features(x, 0, len(net.stages) - 1)
        inner.append(h.mean((2, 3)))
        pool.append(net.forward_head(net.forward_features(h, len(net.stages) - 1), pre_logits=True))
        print(f"  features {min(s + batch, len(paths))}/{len(paths)}", end="\r", flush=True)
    print()
    return {"pool": torch.cat(pool).numpy(), "inner": torch.cat(inner).numpy()}


# A signal: (features, labels of the training rows, training rows, rows to score) -> score per row (higher:
# stranger). The classifier's signals share one fit per (features, training rows).
Signal = Callable[[dict, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
_fits: dict = {}


def _classifier(f: dict, y: np.ndarray, tr: np.ndarray) -> tuple[StandardScaler, LogisticRegression]:
    key = tr.tobytes()
    if key not in _fits:
        sc = StandardScaler().fit(f["pool"][tr])
        _fits[key] = sc, LogisticRegression(C=0.1, max_iter=3000).fit(sc.transform(f["pool"][tr]), y[tr])
    return _fits[key]


def _logits(f, y, tr, rows):
    sc, lr = _classifier(f, y, tr)
    return lr.decision_function(sc.transform(f["pool"][rows]))


def _probs(f, y, tr, rows):
    sc, lr = _classifier(f, y, tr)
    return lr.predict_proba(sc.transform(f["pool"][rows]))


def _clipped_energy(percentile: float) -> Signal:
    """The energy of the same classifier's logits after every feature of the scored rows is capped at
    the ``percentile`` of the training rows' features (ReAct, Sun et al. 2021): the classifier is not
    refitted, only its inputs clipped."""
    def signal(f, y, tr, rows):
        sc, lr = _classifier(f, y, tr)
        cap = np.percentile(f["pool"][tr], percentile)
        return -logsumexp(lr.decision_function(sc.transform(np.minimum(f["pool"][rows], cap))), 1)
    return signal


def _distance_rows(x: np.ndarray, power: float) -> np.ndarray:
    """The rows transferlab's distance compares (signed power, then unit length), as numpy."""
    return distance_rows(torch.from_numpy(x), power).numpy()


def _mahalanobis(power: float = 1.0) -> Signal:
    """The squared Mahalanobis distance to the nearest class mean, one shared Ledoit-Wolf covariance of
    the unit rows of the (powered) features (Lee et al. 2018)."""
    def signal(f, y, tr, rows):
        a, b = _distance_rows(f["pool"][tr], power), _distance_rows(f["pool"][rows], power)
        classes = np.unique(y[tr])
        means = np.stack([a[y[tr] == c].mean(0) for c in classes])
        prec = LedoitWolf().fit(a - means[np.searchsorted(classes, y[tr])]).precision_
        return np.stack([np.einsum("ij,jk,ik->i", b - m, prec, b - m) for m in means], 1).min(1)
    return signal


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(p + 1e-12)).sum(1)


def _knn(level: str, k: int = 1, standardise: bool = False, power: float = 1.0) -> Signal:
    def signal(f, y, tr, rows):
        a, b = f[level][tr], f[level][rows]
        if standardise:  # (only with power 1: the power comes after it here)
            sc = StandardScaler().fit(a)
            a, b = sc.transform(a).astype(np.float32), sc.transform(b).astype(np.float32)
        a, b = _distance_rows(a, power), _distance_rows(b, power)  # the same rows as train.novelty's distance
        return 1.0 - np.sort(b @ a.T, 1)[:, -k]
    return signal


def _residual(dims: int) -> Signal:
    """Distance from the training features' first ``dims`` principal directions (ViM's residual)."""
    def signal(f, y, tr, rows):
        p = PCA(dims).fit(unit_rows(f["pool"][tr]))
        x = unit_rows(f["pool"][rows])
        return np.linalg.norm(x - p.inverse_transform(p.transform(x)), axis=1)
    return signal


SIGNALS: dict[str, Signal] = {
    "confidence": lambda f, y, tr, rows: 1.0 - _probs(f, y, tr, rows).max(1),
    "entropy": lambda f, y, tr, rows: _entropy(_probs(f, y, tr, rows)),
    "max logit": lambda f, y, tr, rows: -_logits(f, y, tr, rows).max(1),
    "energy": lambda f, y, tr, rows: -logsumexp(_logits(f, y, tr, rows), 1),
    "nearest": _knn("pool"),
    "nearest, features to the power 0.2": _knn("pool", power=0.2),
    "nearest, features to the power 0.3": _knn("pool", power=0.3),
    "nearest, features to the power 0.5": _knn("pool", power=0.5),
    "5th nearest": _knn("pool", 5),
    "nearest, standardised": _knn("pool", standardise=True),
    "nearest, inner stage": _knn("inner"),
    "PCA residual (64)": _residual(64),
    "energy with features clipped at their 80th percentile (ReAct)": _clipped_energy(80),
    "energy with features clipped at their 90th percentile (ReAct)": _clipped_energy(90),
    "Mahalanobis, features to the power 0.3": _mahalanobis(0.3),
}
SHIPPED = ("confidence", "nearest, features to the power 0.3")
VARIANTS = [("confidence", "nearest"), ("confidence",), ("nearest",), ("nearest, features to the power 0.3",),
            ("confidence", "nearest, features to the power 0.2"), ("confidence", "nearest, features to the power 0.3"),
            ("confidence", "nearest, features to the power 0.5"), ("entropy", "nearest"),
            ("max logit", "nearest"), ("energy", "nearest"), ("confidence", "5th nearest"),
            ("confidence", "nearest, standardised"), ("confidence", "nearest, inner stage"),
            ("confidence", "nearest", "nearest, inner stage"), ("confidence", "PCA residual (64)"),
            ("confidence", "nearest", "PCA residual (64)"),
            ("energy", "nearest, features to the power 0.3"),
            ("energy with features clipped at their 80th percentile (ReAct)", "nearest, features to the power 0.3"),
            ("energy with features clipped at their 90th percentile (ReAct)", "nearest, features to the power 0.3"),
            ("Mahalanobis, features to the power 0.3",),
            ("confidence", "Mahalanobis, features to the power 0.3"),
            ("confidence", "nearest, features to the power 0.3", "Mahalanobis, features to the power 0.3")]


def auroc(f: dict, y: np.ndarray, tr: np.ndarray, val: np.ndarray, known: np.ndarray, strangers: np.ndarray,
          variant: tuple[str, ...]) -> float:
    """AUROC of the summed, validation-standardised signals between ``known`` and ``strangers``."""
    total = 0.0
    for name in variant:
        v, s = SIGNALS[name](f, y, tr, val), SIGNALS[name](f, y, tr, np.r_[known, strangers])
        total = total + (s - v.mean()) / max(v.std(), 1e-9)
    return float(roc_auc_score(np.r_[np.zeros(len(known)), np.ones(len(strangers))], total))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--data", default=str(SHARED / "flower_photos"))
    p.add_argument("--others", default=str(SHARED / "hymenoptera"))
    p.add_argument("--match", default="", help="only the variants whose name contains one of these "
                   "comma-separated texts, and the shipped one (confidence + nearest, features to the power 0.3)")
    args = p.parse_args(argv)
    variants = [v for v in VARIANTS if v == SHIPPED or any(m in " + ".join(v) for m in args.match.split(","))]
    print(f"CPU native bf16: {bf16_native(torch.device('cpu'))} (features in fp32); backbone {args.backbone}")
    ds = load_dataset(args.data)
    sp = make_splits(ds)
    others = sorted(str(f) for f in (Path(args.others) / "test").rglob("*.jpg"))
    f = extract(args.backbone, [str(x) for x in ds.paths] + others)
    y = np.r_[ds.labels, np.full(len(others), -1)]
    hyme = np.arange(len(ds), len(y))
    head = " | ".join(f"{c} unknown" for c in ds.classes)
    for part in ("val", "test"):
        print(f"\n{part}: AUROC, known {part} images against the held-out class's {part} images "
              f"(hymenoptera: its test photos against the five-class model's test images)\n")
        print(f"| score | {head} | mean | hymenoptera |\n|{'---|' * (len(ds.classes) + 3)}")
        for variant in variants:
            row = []
            for c in range(len(ds.classes)):
                tr, val, ev = (idx[y[idx] != c] for idx in (sp["train"], sp["val"], sp[part]))
                held = sp[part][y[sp[part]] == c]
                row.append(auroc(f, y, tr, val, ev, held, variant))
            h = auroc(f, y, sp["train"], sp["val"], sp["test"], hyme, variant)
            print(f"| {' + '.join(variant)} | " + " | ".join(f"{a:.3f}" for a in row)
                  + f" | {np.mean(row):.3f} | {h:.3f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
