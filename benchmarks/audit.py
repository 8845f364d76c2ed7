"""The audit on flower_photos: duplicates injected across splits, labels flipped at random, photos of
ants and bees slipped in, and what training on the audited data gives back.

    python benchmarks/audit.py [--data ../shared/datasets/flower_photos]
        [--others ../shared/datasets/hymenoptera] [--parts duplicates,labels,outliers,training,cost]
        [--seeds 3] [--flip 0.1] [--strategies probe,finetune] [--out runs/bench-audit]
        [--draws 0,1,2] [--trained-on clean,flipped,audited,relabelled,oracle] [--train-seeds 0,1]

Parts:
- duplicates: 40 images of each kind (exact copy, JPEG quality 60, resized to 0.5x, 10% cropped, mirrored),
  half of them copies of train images put into test, half of test images put into train. Recall of
  the injected pairs per kind; the pairs found on the clean set (a contact sheet of them,
  ``clean_pairs.html``, is written for the check by eye) and their count.
- labels: ``--flip`` of the training labels changed to another class at random (``--seeds`` draws).
  Among the top-N images of the confident-learning ranking (N = the number of flips), the share that
  were flipped; the recall of the flagged set. On the clean set: the top 10 suspects.
- outliers: 20 hymenoptera photos added to train under random flower labels; how many are flagged as
  outliers, and how many of the flower photos are.
- training: test accuracy of each strategy trained on the clean labels, on the flipped ones, on the
  flipped ones without the training images the audit flags as label errors, and on the
  flipped ones with the flagged label errors given their suggested label, on the flipped ones without
  the flipped images (``oracle``: the most an audit could give back; not in the default), per draw (``--draws``
  and ``--trained-on`` pick some of them: a finetune run takes tens of minutes on a CPU), and the share
  of the accuracy the flips cost that the audit gives back. ``--train-seeds`` trains each of them with
  several training seeds (the draw fixes the labels, the training seed the initialisation and the
  order): a finetune run's test accuracy moves by a point or more with its seed alone, as much as
  the flips cost, so one seed per draw cannot tell the audit's effect from that noise.
- cost: the audit of the clean set once its features are cached (what it costs after a compare).

Printed: a JSON row per measurement, then the tables; and what kind of CPU (native bf16 or not).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from sklearn.metrics import roc_auc_score

from transferlab.data import load_dataset, make_splits
from transferlab.data.duplicates import find_duplicates
from transferlab.experiments.audit import audit_prepared, labelled_features
from transferlab.experiments.results import mean_ci
from transferlab.reporting.render import thumbnail
from transferlab.runtime.device import bf16_native
from transferlab.train import TrainConfig, prepare, train_one

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
KINDS = ("exact", "jpeg60", "half", "crop10", "mirror")


def _copy(src: Path, dst: Path, kind: str, rng: np.random.Generator) -> None:
    """Write the ``kind`` copy of ``src`` to ``dst``."""
    if kind == "exact":
        shutil.copyfile(src, dst)
        return
    img = Image.open(src).convert("RGB")
    if kind == "half":
        img = img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.BICUBIC)
    elif kind == "crop10":  # 90% of each side kept, at a random offset
        w, h = int(img.width * 0.9), int(img.height * 0.9)
        x, y = int(rng.integers(0, img.width - w + 1)), int(rng.integers(0, img.height - h + 1))
        img = img.crop((x, y, x + w, y + h))
    elif kind == "mirror":
        img = ImageOps.mirror(img)
    img.save(dst, "JPEG", quality=60 if kind == "jpeg60" else 90)


def _entries(ds) -> list[tuple[str, str, str]]:
    """(file, class, split) of every image of a train/val/test folder data set."""
    splits = make_splits(ds)
    where = {int(i): s for s, idx in splits.items() for i in idx}
    return [(str(ds.paths[i]), ds.classes[ds.labels[i]], where[i]) for i in range(len(ds))]


def _write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return path


def duplicates_part(args, tmp: Path, config: TrainConfig) -> dict:
    ds = load_dataset(args.data)
    rows = _entries(ds)
    rng = np.random.default_rng(0)
    train = [r for r in rows if r[2] == "train"]
    test = [r for r in rows if r[2] == "test"]
    injected: list[tuple[str, str, str]] = []
    pairs_of: dict[str, list[tuple[str, str]]] = {k: [] for k in KINDS}
    origin: dict[str, str] = {}
    for kind in KINDS:
        for source, into in ((train, "test"), (test, "train")):
            for r in [source[i] for i in rng.choice(len(source), 20, replace=False)]:
                dst = tmp / f"{kind}-{into}-{Path(r[0]).stem}.jpg"
                _copy(Path(r[0]), dst, kind, rng)
                injected.append((str(dst), r[1], into))
                pairs_of[kind].append((str(Path(r[0]).resolve()), str(dst.resolve())))
                origin[str(dst.resolve())] = str(Path(r[0]).resolve())
    out = {}
    for name, listing in (("clean", rows), ("injected", rows + injected)):
        data = load_dataset(_write_csv(tmp / f"{name}.csv", listing))
        prep = prepare(data, make_splits(data), config, quiet=True)
        started = time.perf_counter()
        labelled = np.arange(len(data))
        feats = labelled_features(prep, config, labelled)[0]
        found = find_duplicates(prep.cache, labelled, feats)
        seconds = time.perf_counter() - started
        keys = data.keys()
        got = {frozenset((keys[p.first], keys[p.second])) for p in found}
        out[name] = {"pairs": len(found), "seconds": round(seconds, 2)}
        if name == "clean":
            _sheet(tmp.parent / "clean_pairs.html", prep, found)
            clean = got
            continue
        for kind in KINDS:
            hit = sum(frozenset(p) in got for p in pairs_of[kind])
            out[name][kind] = f"{hit}/{len(pairs_of[kind])}"
        wanted = {frozenset(p) for ps in pairs_of.values() for p in ps}
        out[name]["recall"] = round(sum(p in got for p in wanted) / len(wanted), 4)
        # Two copies of one image are copies of each other too: only pairs of different origins are unexpected.
        # so are copies of two images that are copies on the clean set.
        origins = [frozenset(origin.get(k, k) for k in p) for p in got - wanted - clean]
        out[name]["unexpected"] = sum(len(o) > 1 and o not in clean for o in origins)
    print(json.dumps({"part": "duplicates", **out}), flush=True)
    return out


def _sheet(path: Path, prep, pairs) -> None:
    cells = "".join(f"<div><img src='data:image/jpeg;base64,{thumbnail(prep.cache[p.first], 128)}'>"
                    f"<img src='data:image/jpeg;base64,{thumbnail(prep.cache[p.second], 128)}'> {p.similarity:.3f}"
                    f"{' exact' if p.exact else ''}</div>" for p in pairs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<html><body><h1>{len(pairs)} pairs on the clean set</h1>{cells}</body></html>")


def _flipped(labels: np.ndarray, train: np.ndarray, share: float, classes: int,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    chosen = rng.choice(train, int(round(share * len(train))), replace=False)
    out = labels.copy()
    out[chosen] = (labels[chosen] + rng.integers(1, classes, len(chosen))) % classes
    return out, np.sort(chosen)


def labels_part(args, config: TrainConfig) -> list[dict]:
    ds = load_dataset(args.data)
    prep = prepare(ds, make_splits(ds), config, quiet=True)
    clean = audit_prepared(prep, config)
    train = prep.splits["train"]
    keys = ds.keys()
    order = np.argsort(-clean.issues.margin)
    row_of = {int(i): r for r, i in enumerate(clean.labelled)}
    top = [{"file": str(Path(keys[clean.labelled[r]]).relative_to(Path(args.data).resolve())),
            "label": ds.classes[ds.labels[clean.labelled[r]]],
            "suggested": ds.classes[clean.issues.suggested[r]], "margin": round(float(clean.issues.margin[r]), 3)}
           for r in order[:10]]
    print(json.dumps({"part": "labels", "clean_top10": top,
                      "clean_flagged": int(clean.issues.flagged.sum())}), flush=True)
    rows = []
    for seed in range(args.seeds):
        labels, flips = _flipped(ds.labels, train, args.flip, len(ds.classes), seed)
        noisy = dataclasses.replace(prep, dataset=dataclasses.replace(ds, labels=labels))
        rep = audit_prepared(noisy, config)
        in_train = np.array([row_of[int(i)] for i in train])
        ranked = train[np.argsort(-rep.issues.margin[in_train])]
        n = len(flips)
        flagged = {f.index for f in rep.of_kind("label error")} & set(train.tolist())
        row = {"part": "labels", "seed": seed, "flips": n,
               "precision_at_n": round(len(set(ranked[:n].tolist()) & set(flips.tolist())) / n, 3),
               "flagged_in_train": len(flagged), "flagged_flips": len(flagged & set(flips.tolist())),
               "seconds": round(rep.seconds, 2)}
        suggested = np.array([(f.index, ds.classes.index(f.suggested)) for f in rep.of_kind("label error")
                              if f.index in flagged], np.int64).reshape(-1, 2)
        rows.append({**row, "labels": labels, "flips_idx": flips, "flagged": np.array(sorted(flagged)),
                     "suggested": suggested})
        print(json.dumps(row), flush=True)
    return rows


def outliers_part(args, tmp: Path, config: TrainConfig) -> dict:
    ds = load_dataset(args.data)
    rows = _entries(ds)
    others = sorted(Path(args.others).rglob("*.jpg"))
    rng = np.random.default_rng(0)
    picked = [others[i] for i in rng.choice(len(others), 20, replace=False)]
    extra = [(str(p), ds.classes[int(rng.integers(len(ds.classes)))], "train") for p in picked]
    data = load_dataset(_write_csv(tmp / "outliers.csv", rows + extra))
    prep = prepare(data, make_splits(data), config, quiet=True)
    rep = audit_prepared(prep, config)
    keys = np.array(data.keys())[rep.labelled]
    stranger = np.array([k in {str(p.resolve()) for p in picked} for k in keys])
    flagged = {f.index for f in rep.of_kind("outlier")}
    is_flagged = np.array([i in flagged for i in rep.labelled])
    top = [str(Path(keys[r]).relative_to(Path(args.data).resolve())) for r in np.argsort(-rep.outliers)
           if not stranger[r]][:16]
    out = {"part": "outliers", "auroc_strangers": round(float(roc_auc_score(stranger, rep.outliers)), 3),
           "strangers_flagged": int((is_flagged & stranger).sum()), "strangers": int(stranger.sum()),
           "flowers_flagged": int((is_flagged & ~stranger).sum()), "flowers": int((~stranger).sum()),
           "top_flower_outliers": top}
    _grid(Path(args.out) / "outliers.png", prep,
          [int(rep.labelled[r]) for r in np.argsort(-rep.outliers) if not stranger[r]][:16])
    print(json.dumps(out), flush=True)
    return out


def _grid(path: Path, prep, indices: list[int], side: int = 125) -> None:
    """The squares ``indices`` in a grid of 8 per row, saved as ``path`` (for the check by eye)."""
    rows = (len(indices) + 7) // 8
    canvas = Image.new("RGB", (8 * (side + 5), max(1, rows) * (side + 5)), "white")
    for j, i in enumerate(indices):
        canvas.paste(Image.fromarray(prep.cache[i]).resize((side, side)), ((j % 8) * (side + 5), (j // 8) * (side + 5)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def _without_in_train(prep, rows: np.ndarray):
    """``prep`` with the images ``rows`` left out of its training split (validation and test unchanged)."""
    return dataclasses.replace(prep, splits={**prep.splits, "train": np.setdiff1d(prep.splits["train"], rows)})


def training_part(args, config: TrainConfig, label_rows: list[dict], out: Path) -> list[dict]:
    ds = load_dataset(args.data)
    prep = prepare(ds, make_splits(ds), config, quiet=True)
    results = []
    draws = {int(d) for d in args.draws.split(",")} if args.draws else {r["seed"] for r in label_rows}
    kinds = args.trained_on.split(",")
    train_seeds = [int(s) for s in args.train_seeds.split(",")]
    for r in (r for r in label_rows if r["seed"] in draws):
        noisy = dataclasses.replace(prep, dataset=dataclasses.replace(ds, labels=r["labels"]))
        cleaned = _without_in_train(noisy, r["flagged"])
        oracle = _without_in_train(noisy, r["flips_idx"])  # the flips left out: the most any audit gives back
        relabelled = r["labels"].copy()
        relabelled[r["suggested"][:, 0]] = r["suggested"][:, 1]
        fixed = dataclasses.replace(prep, dataset=dataclasses.replace(ds, labels=relabelled))
        for strategy, seed in itertools.product(args.strategies.split(","), train_seeds):
            for name, data in (("clean", prep), ("flipped", noisy), ("audited", cleaned), ("relabelled", fixed),
                               ("oracle", oracle)):
                if name not in kinds:
                    continue
                if name == "clean" and any(x["strategy"] == strategy and x["data"] == "clean"
                                           and x["seed"] == seed for x in results):
                    continue  # the clean labels are the same in every draw
                # Seed 0 keeps the folder name it had before --train-seeds, so earlier runs resume.
                folder = f"{strategy}-{name}-{r['seed']}" + (f"-seed{seed}" if seed else "")
                res = train_one(data, config, strategy, seed, out / folder, resume=True, quiet=True)
                row = {"part": "training", "strategy": strategy, "data": name, "draw": r["seed"], "seed": seed,
                       "test_acc": round(res.test_acc, 4), "train_images": int(len(data.splits["train"]))}
                results.append(row)
                print(json.dumps(row), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(SHARED / "flower_photos"))
    p.add_argument("--others", default=str(SHARED / "hymenoptera"))
    p.add_argument("--parts", default="duplicates,labels,outliers,training,cost")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--flip", type=float, default=0.1)
    p.add_argument("--strategies", default="probe,finetune")
    p.add_argument("--out", default="runs/bench-audit")
    p.add_argument("--draws", default="", help="the draws of flips to train on (default: every draw)")
    p.add_argument("--trained-on", default="clean,flipped,audited,relabelled")
    p.add_argument("--train-seeds", default="0", help="training seeds of every run (default: 0)")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    config = TrainConfig()
    out = Path(args.out)
    print(f"CPU native bf16: {bf16_native(torch.device('cpu'))}; torch threads {torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "duplicates" in parts:
            (tmp / "dup").mkdir()
            duplicates_part(args, tmp / "dup", config)
        if "outliers" in parts:
            outliers_part(args, tmp, config)
    label_rows = labels_part(args, config) if parts & {"labels", "training"} else []
    if label_rows:
        prec = [r["precision_at_n"] for r in label_rows]
        m, ci = mean_ci(prec)
        print(f"label errors: precision among the top N = {m:.1%} +- {ci:.1%} over {len(prec)} draws", flush=True)
    if "training" in parts:
        rows = training_part(args, config, label_rows, out)
        for strategy in args.strategies.split(","):
            line = []
            for name in ("clean", "flipped", "audited", "relabelled", "oracle"):
                accs = [r["test_acc"] for r in rows if r["strategy"] == strategy and r["data"] == name]
                if not accs:  # not trained on (--trained-on)
                    continue
                m, ci = mean_ci(accs)
                line.append(f"{name} {m:.1%} +- {ci:.1%} (n={len(accs)})")
            print(f"{strategy}: " + ", ".join(line), flush=True)
            for seed in sorted({r["seed"] for r in rows}):
                mine = [r for r in rows if r["strategy"] == strategy and r["seed"] == seed]
                clean = [r["test_acc"] for r in mine if r["data"] == "clean"]
                for d in sorted({r["draw"] for r in mine}):
                    acc = {r["data"]: r["test_acc"] for r in mine if r["draw"] == d}
                    if not clean or "flipped" not in acc or clean[0] <= acc["flipped"]:
                        continue
                    cost = clean[0] - acc["flipped"]
                    for name in ("audited", "oracle"):
                        if name in acc:
                            share = (acc[name] - acc["flipped"]) / cost
                            print(f"{strategy}, draw {d}, seed {seed}: {name} gives back {share:.0%} of the "
                                  f"{cost:.1%} the flips cost", flush=True)
    if "cost" in parts:
        ds = load_dataset(args.data)
        prep = prepare(ds, make_splits(ds), config, quiet=True)
        audit_prepared(prep, config)  # the features cached, as after a compare
        seconds = [audit_prepared(prep, config).seconds for _ in range(3)]
        print(json.dumps({"part": "cost", "median_s": round(float(np.median(seconds)), 2), "runs": seconds}),
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
