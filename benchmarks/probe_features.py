"""Which features should the probe see? Logistic regression (C by cross-validation, ``train.probe``) on
pooled features of the last stages and of several offline backbones, centre view, same split.

    python benchmarks/probe_features.py --data ../shared/datasets/flower_photos [--seeds 3]

Rows: for each of efficientnet_lite0/1/2, the pooled features alone (what the ``probe`` strategy
fits today), with the average-pooled input of the last group added, with the inputs of the last two
groups added; then the pooled features of several backbones concatenated. Features are extracted
once (deterministic: the centre view); a seed changes the cross-validation folds only. Prints val and
test accuracy, the mean over seeds and each seed's test value.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from transferlab.data import load_dataset, make_splits
from transferlab.models import LINEAR_HEAD, TransferModel, create_backbone
from transferlab.runtime import bf16_native
from transferlab.train.config import ModelConfig, TrainConfig
from transferlab.train.features import ImageSource
from transferlab.train.probe import fit_logreg
from transferlab.train.run import prepare

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


@torch.no_grad()
def extract(ds, splits, name: str) -> dict[tuple[str, str], torch.Tensor]:
    """(what, split) -> features: "pool" (the head's input), "in-1" / "in-2" (the average-pooled
    inputs of the last group and of the one before)."""
    prep = prepare(ds, splits, TrainConfig(model=ModelConfig(backbone=name)), quiet=True)
    model = TransferModel(create_backbone(name), len(ds.classes), LINEAR_HEAD).eval()
    source = ImageSource(prep.images, prep.data_config, prep.precision, 64, True)
    last = model.num_groups - 1
    out: dict[tuple[str, str], torch.Tensor] = {}
    for split, idx in splits.items():
        parts: dict[str, list[torch.Tensor]] = {"in-2": [], "in-1": [], "pool": []}
        for s in range(0, len(idx), 64):
            with source.precision.autocast():
                h = model.features(source.precision.to_input(source.view(idx[s:s + 64], 0)), 0, stop=last - 1)
                parts["in-2"].append(h.float().mean((2, 3)))
                h = model.features(h, last - 1, stop=last)
                parts["in-1"].append(h.float().mean((2, 3)))
                parts["pool"].append(model.features(h, last).float())
        out |= {(what, split): torch.cat(v).cpu() for what, v in parts.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    ds = load_dataset(args.data)
    splits = make_splits(ds)
    print(f"{args.data}: train {len(splits['train'])}, val {len(splits['val'])}, test {len(splits['test'])}; "
          f"native bf16 {bf16_native(torch.device('cpu'))}", flush=True)
    feats: dict[tuple[str, str, str], torch.Tensor] = {}
    for name in BACKBONES:
        t0 = time.perf_counter()
        feats |= {(name, what, split): f for (what, split), f in extract(ds, splits, name).items()}
        print(f"  {name}: extracted in {time.perf_counter() - t0:.0f}s", flush=True)
    y = {split: torch.as_tensor(ds.labels[idx]) for split, idx in splits.items()}

    def row(label: str, keys: list[tuple[str, str]]) -> None:
        x = {split: torch.cat([feats[(b, what, split)] for b, what in keys], 1) for split in splits}
        val, test = [], []
        for seed in range(args.seeds):
            fit = fit_logreg(x["train"], y["train"], seed=seed)
            right = {s: (x[s] @ fit.weight.T + fit.bias).argmax(1) == y[s] for s in ("val", "test")}
            val.append(float(right["val"].float().mean()))
            test.append(float(right["test"].float().mean()))
        print(f"| {label} | {x['train'].shape[1]} | {100 * np.mean(val):.1f} | {100 * np.mean(test):.1f} | "
              f"{' / '.join(f'{100 * t:.1f}' for t in test)} |", flush=True)

    print("\n| features | dims | val acc | test acc (mean) | test per seed |\n|---|---|---|---|---|")
    for name in BACKBONES:
        short = name.replace("efficientnet_", "")
        row(f"{short} pooled", [(name, "pool")])
        row(f"{short} pooled + last group's input", [(name, "pool"), (name, "in-1")])
        row(f"{short} pooled + last two groups' inputs", [(name, "pool"), (name, "in-1"), (name, "in-2")])
    row("lite0 + lite2 pooled", [(BACKBONES[0], "pool"), (BACKBONES[2], "pool")])
    row("lite0 + lite1 + lite2 pooled", [(b, "pool") for b in BACKBONES])


if __name__ == "__main__":
    main()
