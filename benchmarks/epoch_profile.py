"""Where a whole-model training epoch goes: transferlab under runtime variants, and the textbook loop.

    python benchmarks/epoch_profile.py --data ../shared/datasets/flower_photos --device cuda --workers 8
    python benchmarks/epoch_profile.py --data ../shared/datasets/hymenoptera --epochs 2   # CPU

For each variant (default; no BatchNorm folding; cuDNN autotuning; fp32; contiguous memory format;
BatchNorm in train mode; torch.compile modes) it prints the median seconds of
- ``epoch``: one epoch of finetune's whole-model phase with its validation pass (the engine's
  ``fit_phase``, pretrained lite0, from the first epoch on);
- ``data``: the same epoch's batches (crops, flips, normalisation) without the model;
- ``step``: the forward/backward/optimizer step alone on one fixed batch, times the number of batches.
Then the textbook loop's epoch (ImageFolder-style Dataset decoding JPEG, DataLoader with ``--workers``,
fp32, whole model) in the same process, and a profiler table of the default variant's busiest
operators. The first epoch of each variant (autotuning, compilation) is reported separately.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from strategies import naive_epoch, naive_loaders  # noqa: E402  (the textbook loop)

from transferlab.data import load_dataset, make_splits, stratified_split  # noqa: E402
from transferlab.models import TransferModel, backbone_spec, create_backbone  # noqa: E402
from transferlab.runtime import bf16_native, tune_allocator  # noqa: E402
from transferlab.runtime.device import Precision, configure_torch  # noqa: E402
from transferlab.train import TrainConfig, prepare  # noqa: E402
from transferlab.train.batches import ImageBatches  # noqa: E402
from transferlab.train.config import BatchNormPolicy
from transferlab.train.engine import (
    PhaseContext,
    _train_epoch,
    fit_phase,
    folded,
    freeze,
    make_optimizer,  # noqa: E402
    set_train_mode,
)
from transferlab.train.strategies import HEAD, Gradient, Phase  # noqa: E402

VARIANTS = {
    "default": {},
    "no-fold-bn": {"fold_bn": False},
    "autotune": {"autotune": True},
    "fp32": {"bf16": False},
    "contiguous": {"channels_last": False},
    "bn-train": {"bn_train": True},
    "compile": {"compile": "default"},
    "compile-cudagraphs": {"compile": "reduce-overhead"},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_model(name: str, classes: int, precision: Precision) -> TransferModel:
    torch.manual_seed(0)
    return precision.to_model(TransferModel(create_backbone(name), classes))


def run_variant(prep, splits, classes, variant: dict, epochs: int) -> dict:
    base = prep.precision
    precision = dataclasses.replace(base, bf16=base.bf16 and variant.get("bf16", True),
                                    fold_bn=variant.get("fold_bn", True),
                                    channels_last=variant.get("channels_last", True),
                                    compile=variant.get("compile", "none"))
    torch.backends.cudnn.benchmark = variant.get("autotune", False)
    spec = backbone_spec("efficientnet_lite0")
    model = fresh_model("efficientnet_lite0", classes, precision)
    phase = Phase("all", (*spec.groups, HEAD), Gradient(lr=1e-4, max_epochs=epochs, patience=epochs + 1,
                                                        bn=BatchNormPolicy.TRAIN if variant.get("bn_train")
                                                        else BatchNormPolicy.FROZEN))
    labels = prep.dataset.labels
    train = ImageBatches(prep.images, splits["train"], labels, prep.data_config, 32, augment=True)
    val = ImageBatches(prep.images, splits["val"], labels, prep.data_config, precision.inference_batch(32), False)
    t0 = time.perf_counter()
    result = fit_phase(model, phase, train, val, PhaseContext(precision, quiet=True))
    wall = time.perf_counter() - t0
    secs = [h["seconds"] for h in result.history]

    # The data path alone.
    data_secs = []
    for e in range(3):
        sync(precision.device)
        t = time.perf_counter()
        for _x, _ in train.batches(torch.Generator().manual_seed(e)):
            pass
        sync(precision.device)
        data_secs.append(time.perf_counter() - t)

    # The step alone, on one fixed batch.
    x, y = next(iter(train.batches(torch.Generator().manual_seed(0))))
    frozen = freeze(model, phase.trainable)
    opt = make_optimizer(model, phase.trainable, phase.method)
    step_model = precision.compiled(model)
    n_batches = -(-len(train) // 32)
    step_secs = []
    with folded(model, val, precision):
        set_train_mode(model, frozen, True, phase.method.bn)
        for _rep in range(4):
            sync(precision.device)
            t = time.perf_counter()
            for _ in range(n_batches):
                with precision.autocast():
                    loss = F.cross_entropy(step_model(precision.to_input(x), level=0).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sync(precision.device)
            step_secs.append(time.perf_counter() - t)
    return {"first": secs[0], "epoch": statistics.median(secs[1:]) if len(secs) > 1 else secs[0],
            "data": statistics.median(data_secs[1:]), "step": statistics.median(step_secs[1:]),
            "wall": wall, "val_acc": result.best_val_acc}


def naive_epochs(ds, splits, data_config, device: str, workers: int, epochs: int) -> list[float]:
    torch.manual_seed(0)
    model = TransferModel(create_backbone("efficientnet_lite0"), len(ds.classes)).to(device)
    train, _, _ = naive_loaders(ds, splits, data_config, 32, workers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    out = []
    for _ in range(epochs):
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        t = time.perf_counter()
        naive_epoch(model, train, opt, device)
        sync(torch.device(device))
        out.append(time.perf_counter() - t)
    return out


def profile_default(prep, splits, classes, cold: bool = False) -> str:
    from torch.profiler import ProfilerActivity, profile

    precision = prep.precision
    torch.backends.cudnn.benchmark = False
    spec = backbone_spec("efficientnet_lite0")
    model = fresh_model("efficientnet_lite0", classes, precision)
    trainable = (*spec.groups, HEAD)
    frozen = freeze(model, trainable)
    opt = make_optimizer(model, trainable, Gradient(lr=1e-4))
    labels = prep.dataset.labels
    train = ImageBatches(prep.images, splits["train"], labels, prep.data_config, 32, augment=True)
    val = ImageBatches(prep.images, splits["val"], labels, prep.data_config, precision.inference_batch(32), False)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if precision.device.type == "cuda" else [])
    with folded(model, val, precision):
        set_train_mode(model, frozen, True, BatchNormPolicy.FROZEN)
        if not cold:
            _train_epoch(model, train, opt, precision, torch.Generator().manual_seed(0))  # warm up
        with profile(activities=acts) as prof:
            _train_epoch(model, train, opt, precision, torch.Generator().manual_seed(1))
    key = "self_cuda_time_total" if precision.device.type == "cuda" and not cold else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--profile-cold", action="store_true", help="profile the process's first epoch (with "
                    "--variants '' --no-naive: what the first use of the device costs)")
    args = ap.parse_args()

    tune_allocator()
    configure_torch()
    ds = load_dataset(args.data)
    if "test" in ds.splits:
        splits = make_splits(ds)
    else:
        splits = {"test": ds.splits["val"], **stratified_split(ds.labels, ds.splits["train"], (0.8, 0.2, 0.0), seed=0)}
    prep = prepare(ds, splits, TrainConfig(runtime=dataclasses.replace(TrainConfig().runtime, device=args.device)),
                   quiet=True)
    device = prep.precision.device
    print(f"{args.data}: train {len(splits['train'])}, val {len(splits['val'])}; device {device}"
          f"{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}; native bf16 "
          f"{bf16_native(device)}; image store on the device: {prep.images.resident is not None}; "
          f"torch {torch.__version__}", flush=True)
    print("| variant | first epoch s | median epoch s (with val) | data only s | step only s | best val acc |")
    print("|---|---|---|---|---|---|", flush=True)
    rows = {}
    for name in filter(None, args.variants.split(",")):
        if name.startswith("compile") and device.type != "cuda" and name != "compile":
            continue
        try:
            r = run_variant(prep, splits, len(ds.classes), VARIANTS[name], args.epochs)
        except Exception as exc:  # a variant that fails (say, compile on this stack) is reported, not fatal
            print(f"| {name} | failed: {type(exc).__name__}: {str(exc)[:120]} |", flush=True)
            continue
        rows[name] = r
        print(f"| {name} | {r['first']:.2f} | {r['epoch']:.2f} | {r['data']:.2f} | {r['step']:.2f} | "
              f"{r['val_acc']:.1%} |", flush=True)
    torch.backends.cudnn.benchmark = False  # torch's default, what a textbook loop gets
    if not args.no_naive:
        secs = naive_epochs(ds, splits, prep.data_config, str(device), args.workers, args.epochs)
        med = statistics.median(secs[1:])
        print(f"\ntextbook loop (fp32, DataLoader workers {args.workers}): epochs {[round(s, 2) for s in secs]}, "
              f"median after the first {med:.2f} s")
        for name, r in rows.items():
            print(f"  {name}: textbook / ours (epoch with val) = {med / r['epoch']:.2f}x")
    if not args.no_profile:
        print(f"\nprofile of one {'first' if args.profile_cold else 'later'} whole-model epoch, default variant:")
        print(profile_default(prep, splits, len(ds.classes), args.profile_cold))


if __name__ == "__main__":
    main()
