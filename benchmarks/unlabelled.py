"""What unlabelled images buy, at few labels: flower_photos with k labelled images per class kept from
train, the rest of train and flower_photos_unlabelled as the pool (labels hidden), validation and test
whole. Every strategy runs through ``train_one`` on the same prepared data, as ``sweep --unlabelled``
does; the references run in the same process on the same subsets.

    python benchmarks/unlabelled.py [--data ../shared/datasets/flower_photos]
        [--pool ../shared/datasets/flower_photos_unlabelled] [--per-class 5,20,60] [--subsets 3]
        [--strategies features,probe,self-train,finetune]
        [--references probe-cv,probe-unit-variance,finetune-1step,self-train-finetune]
        [--suggest] [--suggest-references unspread,margin,typicality,probcover,badge]
        [--record rows.jsonl] [--out runs/bench-unlabelled]
        [--surrogate-objective simclr|exemplar] [--surrogate-size PX] [--surrogate-minutes M]
        [--student-share S] [--student-rounds R]

References:
- probe-cv: the probe as it was, C by stratified cross-validation on the training images, centre
  crops only, every feature scaled to unit variance (``fit_logreg`` without ``val``, ``scale_prior=0``),
  on the same cached features.
- probe-unit-variance: the probe's fit (C on validation, every view) without the shrinkage of the
  features' variances (``scale_prior=0``).
- scratch, when surrogate strategies run too, gets their time (pretraining included) as its budget:
  equal compute.
- finetune-1step: finetune with a head epoch of one pass whatever the training set's size (the
  engine's ``MIN_HEAD_STEPS`` set to 1), as before the minimum was added.
- self-train-finetune: self-train's students with finetune as their teacher: finetune's phases, then
  the student phase (the last two groups and the head, reset to the finetuned weights each round,
  on the labelled images and the pool the model before labels).
- suggest (``--suggest``): a simulated labeller who knows train's labels. From 2 labelled images per
  class, 5 rounds of 10 more: chosen by ``train.acquisition.choose_to_label`` (the probe's calibrated
  probabilities, pretrained features) against chosen at random; the probe (C on validation) trained on
  each after the last round. The pool is the rest of train. ``--suggest-references`` adds other
  pickers from the same start: choose_to_label without the labelled images' labels (its picks not
  spread over the classes, as before), the smallest margin alone, TypiClust's typicality alone,
  ProbCover (cosine radius 0.35), BADGE (Ash et al. 2020: k-means++ seeding on the gradient embeddings
  of the last layer).

Printed: a row per run as it ends, then test accuracy per strategy and size, mean +- 95% CI (t) over
the subsets, and what kind of CPU (native bf16 or not) it ran on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from transferlab.core.arrays import unit_rows
from transferlab.data import load_dataset, make_splits
from transferlab.data.pool import attach_pool
from transferlab.data.splits import per_class_subset
from transferlab.experiments.compare import compute_seconds
from transferlab.experiments.results import mean_ci
from transferlab.models import TransferModel, create_backbone
from transferlab.runtime.device import bf16_native
from transferlab.train import TrainConfig, engine, prepare, train_one
from transferlab.train import strategies as recipes
from transferlab.train.acquisition import _spread_over_classes, choose_to_label, margins
from transferlab.train.calibration import fit_temperature
from transferlab.train.config import SemiConfig
from transferlab.train.features import FeatureStore, ImageSource
from transferlab.train.probe import fit_logreg

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _features(prep, views: int) -> torch.Tensor:
    """Pretrained pooled features (views, N, F) of every image (the feature cache the strategies share)."""
    bb = create_backbone(TrainConfig().model.backbone, pretrained=True)
    model = TransferModel(bb, len(prep.dataset.classes))
    prep.precision.to_model(model)
    store = FeatureStore(bb, prep.dataset, bf16=prep.precision.bf16)
    images = ImageSource(prep.images, prep.data_config, prep.precision, 64)
    return store.get(model, images, np.arange(len(prep.dataset)), views)


def _accuracy(fit, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x @ fit.weight.T + fit.bias).argmax(1) == y).float().mean())


def _probe_cv(feats: torch.Tensor, labels: torch.Tensor, train: np.ndarray, test: np.ndarray, seed: int) -> float:
    fit = fit_logreg(feats[0, train], labels[train], seed, scale_prior=0)
    return _accuracy(fit, feats[0, test], labels[test])


def _probe_unit_variance(feats: torch.Tensor, labels: torch.Tensor, train: np.ndarray, splits: dict) -> float:
    """The probe's fit (C on validation, every view) with every feature scaled to unit variance."""
    views = feats.shape[0]
    fit = fit_logreg(feats[:, train].flatten(0, 1), labels[train].repeat(views), scale_prior=0,
                     val=(feats[0, splits["val"]], labels[splits["val"]]))
    return _accuracy(fit, feats[0, splits["test"]], labels[splits["test"]])


def _least_margin(rest_feats: np.ndarray, probs: np.ndarray, chosen_feats: np.ndarray, count: int,
                  seed: int, chosen_labels: np.ndarray) -> np.ndarray:
    """Reference: the pool images with the smallest margin of the calibrated probabilities."""
    return np.argsort(margins(probs), kind="stable")[:count]


def _typicality_only(rest_feats: np.ndarray, probs: np.ndarray, chosen_feats: np.ndarray, count: int,
                     seed: int, chosen_labels: np.ndarray) -> np.ndarray:
    """Reference: choose_to_label with every image equally unsure (TypiClust's clusters and typicality alone)."""
    flat = np.zeros_like(probs)
    flat[:, 0] = 1.0
    return choose_to_label(rest_feats, flat, chosen_feats, count, seed, chosen_labels)


def _unspread(rest_feats: np.ndarray, probs: np.ndarray, chosen_feats: np.ndarray, count: int, seed: int,
              chosen_labels: np.ndarray) -> np.ndarray:
    """Reference: choose_to_label without the labelled images' labels (picks not spread over classes)."""
    return choose_to_label(rest_feats, probs, chosen_feats, count, seed)


def _probcover(rest_feats: np.ndarray, probs: np.ndarray, chosen_feats: np.ndarray, count: int, seed: int,
               chosen_labels: np.ndarray, radius: float = 0.35) -> np.ndarray:
    """Reference: ProbCover (Yehuda et al. 2022): greedily the pool image whose ball (cosine distance
    below ``radius``) covers the most images no chosen image covers yet."""
    x = unit_rows(np.concatenate([chosen_feats, rest_feats]))
    near = (1.0 - x @ x.T) < radius
    covered = near[:len(chosen_feats)].any(0)
    picked: list[int] = []
    for _ in range(min(count, len(rest_feats))):
        gain = (near[len(chosen_feats):] & ~covered).sum(1).astype(float)
        gain[picked] = -1
        picked.append(int(np.argmax(gain)))
        covered |= near[len(chosen_feats) + picked[-1]]
    return np.array(picked, dtype=np.int64)


def _badge(rest_feats: np.ndarray, probs: np.ndarray, chosen_feats: np.ndarray, count: int, seed: int,
           chosen_labels: np.ndarray) -> np.ndarray:
    """Reference: BADGE (Ash et al. 2020): k-means++ seeding on the gradient embeddings of the last
    layer, (p - onehot(predicted class)) times the unit feature, which are long where the model is unsure."""
    x = unit_rows(rest_feats)
    g = ((probs - np.eye(probs.shape[1])[probs.argmax(1)])[:, :, None] * x[:, None, :]).reshape(len(x), -1)
    rng = np.random.default_rng(seed)
    picked = [int(np.argmax((g ** 2).sum(1)))]
    nearest = ((g - g[picked[0]]) ** 2).sum(1)
    while len(picked) < min(count, len(g)):
        picked.append(int(rng.choice(len(g), p=nearest / nearest.sum())))
        nearest = np.minimum(nearest, ((g - g[picked[-1]]) ** 2).sum(1))
    return np.array(picked, dtype=np.int64)


def _kcenter_order(rest_feats: np.ndarray, probs: np.ndarray, chosen_feats: np.ndarray, count: int) -> list[int]:
    """k-center greedy weighted by uncertainty: each time the pool image farthest (cosine) from the
    labelled and picked ones, the distance times one minus the margin."""
    x, done = unit_rows(rest_feats), unit_rows(chosen_feats)
    nearest = (1.0 - x @ done.T).min(1) if len(done) else np.ones(len(x))
    unsure = 1.0 - margins(probs)
    picked: list[int] = []
    while len(picked) < min(count, len(x)):
        gain = nearest * unsure
        gain[picked] = -1
        picked.append(int(np.argmax(gain)))
        nearest = np.minimum(nearest, 1.0 - x @ x[picked[-1]])
    return picked


def _kcenter(rest_feats: np.ndarray, probs: np.ndarray, chosen_feats: np.ndarray, count: int, seed: int,
             chosen_labels: np.ndarray) -> np.ndarray:
    """Reference: k-center greedy (Sener & Savarese 2018, the core set) with each distance weighted by
    the uncertainty, as the issue first sketched it."""
    return np.array(_kcenter_order(rest_feats, probs, chosen_feats, count), dtype=np.int64)


def _kcenter_spread(rest_feats: np.ndarray, probs: np.ndarray, chosen_feats: np.ndarray, count: int, seed: int,
                    chosen_labels: np.ndarray) -> np.ndarray:
    """Reference: three times as many k-center candidates, then spread over the predicted classes as
    ``suggest`` spreads its own."""
    candidates = _kcenter_order(rest_feats, probs, chosen_feats, 3 * count)
    return np.array(_spread_over_classes(candidates, probs.argmax(1), chosen_labels, probs.shape[1], count),
                    dtype=np.int64)


SUGGEST_METHODS = {"suggest": choose_to_label, "unspread": _unspread, "margin": _least_margin,
                   "typicality": _typicality_only, "probcover": _probcover, "badge": _badge,
                   "kcenter": _kcenter, "kcenter-spread": _kcenter_spread}


def _self_train_finetune(groups: list[str], config: TrainConfig) -> recipes.Strategy:
    """Reference: self-train's students with finetune as their teacher (finetune's phases, then the students)."""
    phases = [*recipes.finetune(groups, config).phases, recipes.student_phase(groups, config)]
    return recipes.Strategy("self-train-finetune", pretrained=True, phases=phases, needs_pool=True)


def _suggest_study(prep, feats: torch.Tensor, labels: torch.Tensor, subsets: int,
                   methods: list[str]) -> list[dict]:
    """Active learning with a simulated labeller: each method (and random) from the same start, the
    probe after each round."""
    splits = prep.splits
    val = (feats[0, splits["val"]], labels[splits["val"]])
    rows = []
    for seed in range(subsets):
        for method in [*methods, "random"]:
            rng = np.random.default_rng(seed)
            chosen = list(per_class_subset(splits["train"], prep.dataset.labels, 2, seed=seed))
            accs = []
            for step in range(6):
                fit = fit_logreg(feats[0, chosen], labels[chosen], val=val)
                accs.append(_accuracy(fit, feats[0, splits["test"]], labels[splits["test"]]))
                if step == 5:
                    break
                rest = np.setdiff1d(splits["train"], chosen)
                if method == "random":
                    chosen += rng.choice(rest, 10, replace=False).tolist()
                    continue
                t = fit_temperature((val[0] @ fit.weight.T + fit.bias).softmax(1).numpy(), val[1].numpy())
                probs = ((feats[0, rest] @ fit.weight.T + fit.bias) / t).softmax(1).numpy()
                picked = SUGGEST_METHODS[method](feats[0, rest].numpy(), probs, feats[0, chosen].numpy(), 10, seed,
                                                 prep.dataset.labels[chosen])
                chosen += rest[picked].tolist()
            rows.append({"study": "suggest", "method": method, "subset": seed, "test_acc": accs,
                         "val_acc": _accuracy(fit, *val),
                         "classes_labelled": np.bincount(prep.dataset.labels[chosen],
                                                         minlength=len(prep.dataset.classes)).tolist()})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(SHARED / "flower_photos"))
    p.add_argument("--pool", default=str(SHARED / "flower_photos_unlabelled"))
    p.add_argument("--per-class", default="5,20,60")
    p.add_argument("--subsets", type=int, default=3)
    p.add_argument("--strategies", default="features,probe,self-train,finetune")
    p.add_argument("--references", default="probe-cv",
                   help="probe-cv, probe-unit-variance, finetune-1step, self-train-finetune (comma-separated, "
                        "or none)")
    p.add_argument("--suggest", action="store_true", help="also the active-learning study")
    p.add_argument("--suggest-references", default="none",
                   help="also these pickers in the study: unspread, margin, typicality, probcover, badge, kcenter, "
                        "kcenter-spread "
                        "(comma-separated, or none)")
    p.add_argument("--record", help="append every row to this JSONL file")
    p.add_argument("--out", default="runs/bench-unlabelled")
    p.add_argument("--surrogate-objective", default=SemiConfig().surrogate_objective)
    p.add_argument("--surrogate-size", type=int, default=SemiConfig().surrogate_size)
    p.add_argument("--surrogate-minutes", type=float, default=SemiConfig().surrogate_minutes)
    p.add_argument("--student-share", type=float, default=SemiConfig().student_share)
    p.add_argument("--student-rounds", type=int, default=SemiConfig().student_rounds)
    args = p.parse_args(argv)

    config = TrainConfig(semi=SemiConfig(surrogate_objective=args.surrogate_objective,
                                         surrogate_size=args.surrogate_size, surrogate_minutes=args.surrogate_minutes,
                                         student_share=args.student_share, student_rounds=args.student_rounds))
    ds = load_dataset(args.data)
    base = make_splits(ds)
    prep = prepare(attach_pool(ds, args.pool, args.data), base, config, quiet=False)
    native = bf16_native(torch.device("cpu"))
    print(f"pool: {prep.pool}; CPU native bf16: {native}; precision: {prep.precision.describe()}", flush=True)
    feats = _features(prep, config.augment.views)
    labels = torch.as_tensor(prep.dataset.labels)
    rows: list[dict] = []
    strategies = [s for s in args.strategies.split(",") if s]
    references = [r for r in args.references.split(",") if r and r != "none"]
    if "self-train-finetune" in references and "self-train-finetune" not in recipes.STRATEGIES:
        recipes.STRATEGIES.register("self-train-finetune")(_self_train_finetune)
    for k in map(int, args.per_class.split(",")):
        for s in range(args.subsets):
            train = per_class_subset(base["train"], ds.labels, k, seed=s)
            splits = {**prep.splits, "train": train,
                      "pool": np.concatenate([np.setdiff1d(base["train"], train), prep.splits["pool"]])}
            sub = replace(prep, splits=splits)
            done = []
            # scratch last: its budget is the surrogate runs' time
            for name in sorted(strategies + references, key=lambda n: n == "scratch"):
                t0 = time.perf_counter()
                if name == "probe-cv":
                    acc, compute = _probe_cv(feats, labels, train, splits["test"], s), None
                elif name == "probe-unit-variance":
                    acc, compute = _probe_unit_variance(feats, labels, train, splits), None
                else:
                    steps = engine.MIN_HEAD_STEPS
                    if name == "finetune-1step":
                        engine.MIN_HEAD_STEPS = 1
                    # scratch at equal compute: the time of the surrogate runs of this subset (their
                    # pretraining included, cached or not), as compare gives it the pretrained ones'
                    budget = max((compute_seconds(r) for r in done if r.strategy == "surrogate"),
                                 default=None) if name == "scratch" else None
                    try:
                        res = train_one(sub, config, name.removesuffix("-1step"), s,
                                        Path(args.out) / f"n{k}" / f"s{s}" / name, resume=True, quiet=True,
                                        budget=budget)
                        done.append(res)
                    finally:
                        engine.MIN_HEAD_STEPS = steps
                    acc, compute = res.test_acc, compute_seconds(res)
                rows.append({"per_class": k, "subset": s, "strategy": name, "test_acc": acc,
                             "seconds": time.perf_counter() - t0, "compute_s": compute})
                print(json.dumps(rows[-1]), flush=True)
                if args.record:
                    with open(args.record, "a") as f:
                        f.write(json.dumps(rows[-1]) + "\n")
    _print_table(rows)
    if args.suggest:
        methods = ["suggest", *(m for m in args.suggest_references.split(",") if m and m != "none")]
        study = _suggest_study(prep, feats, labels, args.subsets, methods)
        for method in [*methods, "random"]:
            accs = np.array([r["test_acc"] for r in study if r["method"] == method]) * 100
            m, ci = mean_ci(list(accs[:, -1]))
            val = np.mean([r["val_acc"] for r in study if r["method"] == method]) * 100
            print(f"{method}: per round {' '.join(f'{a:.1f}' for a in accs.mean(0))}; last {m:.1f} +- {ci:.1f} "
                  f"(validation {val:.1f})")
        if args.record:
            with open(args.record, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in study)


def _print_table(rows: list[dict]) -> None:
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    sizes = sorted({r["per_class"] for r in rows})
    print("\n| per class | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for k in sizes:
        cells = []
        for n in names:
            accs = [r["test_acc"] * 100 for r in rows if r["per_class"] == k and r["strategy"] == n]
            m, ci = mean_ci(accs) if accs else (float("nan"), float("nan"))
            secs = np.median([r["seconds"] for r in rows if r["per_class"] == k and r["strategy"] == n])
            cells.append(f"{m:.1f} +- {ci:.1f} ({secs:.0f} s)")
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
