"""Every strategy with efficientnet_lite0: transferlab vs the textbook PyTorch loop, in one run.

    python benchmarks/strategies.py --data ../shared/datasets/hymenoptera [--strategies ...]
    python benchmarks/strategies.py --data ../shared/datasets/flower_photos --device cuda --workers 8

Data: with ``train/ val/ test/`` folders (flower_photos) those splits; with ``train/ test/``
(hymenoptera), ``train/`` is split 80/20 (stratified, seed 0) into training and validation and
``test/`` is the test set. Both sides run on ``--device`` and use the same model, the same phases
(learning rates, epochs, patience, early stopping on validation loss with best-weights restore) and
the same augmentation (random resized crop + flip).

The naive reference is the loop a tutorial writes: a Dataset that opens and decodes each JPEG every
epoch with torchvision transforms, a DataLoader, fp32 in the default memory format, and the whole
backbone run forward every step, frozen or not. It runs in a fresh process of its own, so it gets
nothing transferlab sets up for itself (the allocator tuning of ``runtime.tune_allocator``).
transferlab runs cold: a fresh cache folder per strategy, so its times include decoding the images
and extracting features.

Printed: per strategy, test accuracy, epochs, wall seconds for both, and the speed-up (total time to
the result; for finetune also the median epoch time of the whole-model phase, and the mean over all
its epochs).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from transferlab.data import load_dataset, make_splits, stratified_split
from transferlab.models import LINEAR_HEAD, HeadSpec, TransferModel, backbone_spec, create_backbone
from transferlab.runtime import bf16_native, resolve_device, tune_allocator
from transferlab.runtime.device import configure_torch
from transferlab.train import BudgetConfig, RuntimeConfig, TrainConfig, build_strategy, prepare, train_one
from transferlab.train.config import BatchNormPolicy
from transferlab.train.engine import freeze, set_train_mode

# ---------------------------------------------------------------------------------------------
# The naive reference


class FilesDataset(Dataset):
    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), int(self.labels[i])


def naive_loaders(ds, splits, cfg, batch_size=32, workers=0):
    size = cfg["input_size"][-1]
    norm = T.Normalize(cfg["mean"], cfg["std"])
    interp = T.InterpolationMode(cfg["interpolation"])
    train_tf = T.Compose([T.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=T.InterpolationMode.BILINEAR),
                          T.RandomHorizontalFlip(), T.ToTensor(), norm])
    eval_tf = T.Compose([T.Resize(int(size / cfg["crop_pct"]), interpolation=interp), T.CenterCrop(size),
                         T.ToTensor(), norm])

    def make(idx, tf, shuffle):
        return DataLoader(FilesDataset([ds.paths[i] for i in idx], ds.labels[idx], tf), batch_size=batch_size,
                          shuffle=shuffle, num_workers=workers, pin_memory=workers > 0,
                          persistent_workers=workers > 0)

    return make(splits["train"], train_tf, True), make(splits["val"], eval_tf, False), \
        make(splits["test"], eval_tf, False)


@torch.no_grad()
def naive_eval(model, loader, device="cpu"):
    model.eval()
    losses, correct, n = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        out = model(x)
        losses += F.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
        n += len(y)
    return losses / n, correct / n


def naive_epoch(model, loader, opt, device="cpu") -> None:
    """One textbook training epoch: batches to the device, forward, loss, backward, step."""
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def naive_run(strategy_name, ds, splits, config: TrainConfig, seed=0, device="cpu", workers=0):
    """The textbook loop, phase by phase; returns test accuracy, epochs, seconds, per-epoch times."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    m = config.model
    strategy = build_strategy(strategy_name, backbone_spec(m.backbone).groups, config)
    bb = create_backbone(m.backbone, pretrained=strategy.pretrained)
    torch.manual_seed(seed)
    model = TransferModel(bb, len(ds.classes), LINEAR_HEAD if strategy.linear_head else
                          HeadSpec(config.head.head_hidden, config.head.dropout))
    model.to(device)
    train, val, test = naive_loaders(ds, splits, bb.data_config, config.budget.batch_size, workers)
    epochs, epoch_times = 0, {}
    for phase in strategy.phases:
        method = phase.method
        frozen = freeze(model, phase.trainable)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=method.lr)
        # The same method as transferlab: the starting weights are a candidate for "best".
        best, bad = naive_eval(model, val, device)[0], 0
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        for _ in range(method.max_epochs):
            te = time.perf_counter()
            bn = BatchNormPolicy.TRAIN if method.bn is BatchNormPolicy.AUTO else method.bn
            set_train_mode(model, frozen, True, bn)
            naive_epoch(model, train, opt, device)
            val_loss, _ = naive_eval(model, val, device)
            epoch_times.setdefault(phase.name, []).append(time.perf_counter() - te)
            epochs += 1
            if val_loss < best - 1e-6:
                best, bad = val_loss, 0
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
                if bad >= method.patience:
                    break
        model.load_state_dict(best_state)
    _, acc = naive_eval(model, test, device)
    return acc, epochs, time.perf_counter() - t0, epoch_times


def naive_probe(ds, splits, config: TrainConfig, seed=0, device="cpu", workers=0):
    """Off-the-shelf features computed image by image from JPEG, then the same CV'd logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    bb = create_backbone(config.model.backbone)
    model = TransferModel(bb, len(ds.classes)).eval().to(device)
    _, _, test = naive_loaders(ds, splits, bb.data_config, workers=workers)
    eval_train = naive_loaders(ds, {"train": splits["train"], "val": splits["train"], "test": splits["test"]},
                               bb.data_config, workers=workers)[1]

    @torch.no_grad()
    def feats(loader):
        xs, ys = zip(*[(model.features(x.to(device)).cpu().numpy(), y.numpy()) for x, y in loader])
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = feats(eval_train)
    xte, yte = feats(test)
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
                          {"logisticregression__C": np.logspace(-4, 2, 7)}, cv=StratifiedKFold(5, shuffle=True,
                                                                                               random_state=0))
    search.fit(xtr, ytr)
    return float((search.predict(xte) == yte).mean()), 1, time.perf_counter() - t0, {}


# ---------------------------------------------------------------------------------------------


def ours(strategy_name, ds, splits, config: TrainConfig, seed=0):
    """transferlab, cold: a fresh cache folder, so decoding and feature extraction are counted."""
    with tempfile.TemporaryDirectory(prefix="tl-bench-") as home:
        os.environ["TRANSFERLAB_HOME"] = home
        t0 = time.perf_counter()
        prep = prepare(ds, splits, config, quiet=True)
        result = train_one(prep, config, strategy_name, seed, Path(home) / "run", quiet=True)
        seconds = time.perf_counter() - t0
    epoch_times: dict[str, list[float]] = {}
    for h in result.history:
        epoch_times.setdefault(h["phase"], []).append(h["seconds"])
    return result.test_acc, result.epochs, seconds, epoch_times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--strategies", default="features,probe,finetune,chain-thaw,scratch")
    ap.add_argument("--naive", default="features,probe,finetune,chain-thaw",
                    help="strategies to also run with the naive loop")
    ap.add_argument("--max-epochs", type=int)
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda: both loops run there")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the naive loop")
    args = ap.parse_args()

    os.environ.setdefault("TRANSFERLAB_HOME", tempfile.mkdtemp(prefix="tl-bench-"))
    ds = load_dataset(args.data)
    if "test" in ds.splits:
        splits = make_splits(ds)
    else:
        splits = {"test": ds.splits["val"],
                  **stratified_split(ds.labels, ds.splits["train"], (0.8, 0.2, 0.0), seed=0)}
    config = TrainConfig(budget=BudgetConfig(max_epochs=args.max_epochs), runtime=RuntimeConfig(device=args.device))
    device = str(resolve_device(args.device))
    # transferlab's side runs in this process, set up as the command line would set it up.
    tune_allocator()
    configure_torch()
    print(f"{args.data}: train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])}; "
          f"torch threads {torch.get_num_threads()}; device {device}"
          f"{' ' + torch.cuda.get_device_name() if device.startswith('cuda') else ''}; "
          f"native bf16 {bf16_native(torch.device(device))}", flush=True)
    rows = []
    for name in args.strategies.split(","):
        acc, ep, sec, times = ours(name, ds, splits, config)
        row = {"strategy": name, "acc": acc, "epochs": ep, "sec": sec, "times": times}
        medians = {phase: round(statistics.median(t), 2) for phase, t in times.items()}
        print(f"  ours  {name:11s} acc {acc:.1%} epochs {ep} {sec:.0f}s; median epoch s per phase {medians}",
              flush=True)
        if name in args.naive.split(","):
            # A fresh spawned process (not a daemonic Pool worker: its DataLoader starts workers of its own).
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                fn = naive_probe if name == "probe" else naive_run
                nacc, nep, nsec, ntimes = pool.submit(fn, *((ds, splits, config) if name == "probe" else
                                                            (name, ds, splits, config)),
                                                      device=device, workers=args.workers).result()
            row |= {"n_acc": nacc, "n_epochs": nep, "n_sec": nsec, "n_times": ntimes}
            medians = {phase: round(statistics.median(t), 2) for phase, t in ntimes.items()}
            print(f"  naive {name:11s} acc {nacc:.1%} epochs {nep} {nsec:.0f}s; median epoch s per phase {medians}",
                  flush=True)
        rows.append(row)

    print()
    print("| strategy | test acc | epochs | seconds | naive test acc | naive epochs | naive seconds | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        naive = [f"{r['n_acc']:.1%}", str(r["n_epochs"]), f"{r['n_sec']:.0f}", f"{r['n_sec'] / r['sec']:.1f}x"] \
            if "n_acc" in r else ["-"] * 4
        print(f"| {r['strategy']} | {r['acc']:.1%} | {r['epochs']} | {r['sec']:.0f} | " + " | ".join(naive) + " |")
    for r in rows:
        if r["strategy"] == "finetune" and "n_times" in r and "all" in r["times"]:
            a, b = statistics.median(r["times"]["all"]), statistics.median(r["n_times"]["all"])
            print(f"\nfinetune, whole-model phase, median epoch: ours {a:.1f}s, naive {b:.1f}s: {b / a:.1f}x")
            a, b = r["sec"] / r["epochs"], r["n_sec"] / r["n_epochs"]
            print(f"finetune, mean over all its epochs (head and whole model): ours {a:.1f}s, naive {b:.1f}s: "
                  f"{b / a:.1f}x")


if __name__ == "__main__":
    main()
