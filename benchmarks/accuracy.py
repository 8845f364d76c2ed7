"""Accuracy against the references a user would otherwise use, same splits, same weights, several seeds.

    python benchmarks/accuracy.py --data ../shared/datasets/flower_photos --seeds 3 \
        [--ours features,probe,finetune,chain-thaw,ensemble] [--ours-args="--resume ..."] \
        [--fastai-python /path/to/venv/bin/python] [--only textbook,textbook-adam,fastai,ours] \
        [--record runs.jsonl [--first-seed K]]

References, each on the same train/val/test split and the same ImageNet weights (efficientnet_lite0, or
``--backbone``; sizes below are lite0's 224 px, the others use their own input size and scale the rest):

- textbook: the PyTorch transfer-learning tutorial's fine-tuning loop. A fresh linear head, the whole
  model trained from the first epoch with SGD (lr 1e-3, momentum 0.9), the rate divided by 10 every 7
  epochs, RandomResizedCrop(224) + flip from the whole JPEG, evaluation on Resize(256) +
  CenterCrop(224), the weights of the epoch with the best validation accuracy kept. fp32.
- textbook-adam: the same loop with Adam at a constant 1e-4 (the other common tutorial recipe),
  ``--adam-epochs`` epochs. On lite0 the tutorial's SGD recipe under-trains the new head (flower_photos,
  seed 0: 78.6% test after 25 epochs), so this is the stronger reference.
- fastai: ``vision_learner(dls, arch).fine_tune(10)`` with fastai's defaults (its head, one frozen
  epoch, then discriminative rates with one-cycle), presizing (``Resize(460)`` then
  ``aug_transforms(size=224)``), inputs normalised with the backbone's own mean and std. fastai is
  never a transferlab dependency: give ``--fastai-python``, the interpreter of an environment that has
  fastai and can import transferlab (for the offline weights), and it runs in a subprocess there.
  One way, reusing this environment's torch: ``python -m venv /tmp/fa``, a ``.pth`` file in its
  site-packages listing this environment's site-packages and the repository root, then
  ``/tmp/fa/bin/pip install fastai``.
- ours: ``transferlab compare`` with ``--ours`` strategies and ``--seeds``, plus ``--ours-args``.

Data: with ``train/ val/ test/`` folders (flower_photos) those splits; with ``train/ test/``
(hymenoptera), ``train/`` is split 80/20 (stratified, seed 0) into training and validation and
``test/`` is the test set (the split transferlab makes by itself for such a folder).

Printed: one line per run as it ends, then a table of test accuracy per method, mean +- 95% CI
over seeds (t interval), with each seed's value, the mean seconds per run and the difference to the
textbook loop.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch.utils.data import DataLoader
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).parent))
from strategies import FilesDataset, naive_eval  # noqa: E402

from transferlab.data import load_dataset, make_splits  # noqa: E402
from transferlab.models import LINEAR_HEAD, TransferModel, create_backbone  # noqa: E402
from transferlab.runtime import bf16_native  # noqa: E402

BACKBONE = "efficientnet_lite0"  # the default of --backbone: an offline lite0/1/2 for every method alike


def split_paths(data: str) -> tuple[dict[str, tuple[list[Path], np.ndarray]], list[str]]:
    """Paths and labels of train/val/test, as transferlab splits ``data`` by default, and the classes."""
    ds = load_dataset(data)
    splits = make_splits(ds)
    return {k: ([ds.paths[i] for i in idx], ds.labels[idx]) for k, idx in splits.items()}, ds.classes


# ---------------------------------------------------------------------------------------------
# The textbook loop


def textbook(parts, classes, seed: int, epochs: int, backbone: str, optimizer: str = "sgd") -> float:
    torch.manual_seed(seed)
    np.random.seed(seed)
    bb = create_backbone(backbone)
    model = TransferModel(bb, len(classes), LINEAR_HEAD)
    cfg = bb.data_config
    norm = T.Normalize(cfg["mean"], cfg["std"])
    size = cfg["input_size"][-1]  # the tutorial's 224 for lite0; the backbone's own size for the others
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    eval_tf = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), norm])

    def loader(name, tf, shuffle):
        return DataLoader(FilesDataset(*parts[name], tf), batch_size=32, shuffle=shuffle, num_workers=0)

    train, val, test = loader("train", train_tf, True), loader("val", eval_tf, False), loader("test", eval_tf, False)
    if optimizer == "sgd":  # the tutorial's
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    else:  # Adam at 1e-4, constant: the other loop tutorials and forum answers write
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    best, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        for x, y in train:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        sched.step()
        acc = naive_eval(model, val)[1]
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return naive_eval(model, test)[1]


# ---------------------------------------------------------------------------------------------
# fastai, in its own environment

FASTAI_SCRIPT = r"""
import json, sys
from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.transforms import FuncSplitter, ItemGetter
from fastai.vision.all import ImageBlock, Normalize, Resize, accuracy, aug_transforms, set_seed, vision_learner
import timm
from transferlab.models import create_backbone
from transferlab.models.lite_weights import load_lite_weights

spec = json.loads(sys.argv[1])
set_seed(spec["seed"], reproducible=True)
cfg = create_backbone(spec["backbone"]).data_config
items = [(p, y, name == "val") for name in ("train", "val") for p, y in zip(*spec[name])]
block = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab=spec["classes"])), get_x=ItemGetter(0),
                  get_y=ItemGetter(1), splitter=FuncSplitter(ItemGetter(2)), item_tfms=Resize(460),
                  batch_tfms=[*aug_transforms(size=cfg["input_size"][-1]),
                              Normalize.from_stats(cfg["mean"], cfg["std"])])
dls = block.dataloaders(items, bs=32, num_workers=0)


def arch(pretrained=True):
    # timm's model with the offline ImageNet weights; fastai cuts it at its pooling layer, adds its head.
    model = timm.create_model("tf_" + spec["backbone"], pretrained=False)
    load_lite_weights(model, int(spec["backbone"][-1]))
    return model


learn = vision_learner(dls, arch, metrics=accuracy, normalize=False)
learn.fine_tune(spec["epochs"])
test_dl = dls.test_dl([(p, y, True) for p, y in zip(*spec["test"])], with_labels=True)
probs, y = learn.get_preds(dl=test_dl)
print("RESULT", json.dumps({"acc": float((probs.argmax(1) == y).float().mean())}))
"""


def fastai(python: str, parts, classes, seed: int, epochs: int, backbone: str) -> float:
    spec = {"seed": seed, "epochs": epochs, "backbone": backbone, "classes": list(classes),
            **{k: ([str(p) for p in paths], [classes[int(i)] for i in labels]) for k, (paths, labels) in parts.items()}}
    done = subprocess.run([python, "-c", FASTAI_SCRIPT, json.dumps(spec)], capture_output=True, text=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"fastai run failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])["acc"]


# ---------------------------------------------------------------------------------------------
# ours


def ours(data: str, strategies: str, seeds: int, extra: str, out: Path,
         backbone: str) -> dict[str, tuple[list[float], float]]:
    """transferlab compare; per strategy the test accuracy of each seed and the mean seconds per run."""
    cmd = [sys.executable, "-m", "transferlab", "compare", "--data", data, "--strategies", strategies,
           "--backbone", backbone, "--seeds", str(seeds), "--out", str(out), "--quiet", *shlex.split(extra)]
    print("  " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    runs = json.loads((out / "metrics.json").read_text())["runs"]
    result: dict[str, tuple[list[float], float]] = {}
    for name in strategies.split(","):
        mine = [r for r in runs if r["strategy"] == name]
        result[f"ours {name}"] = ([r["test_acc"] for r in mine], float(np.mean([r["seconds"] for r in mine])))
    return result


def interval(values: list[float]) -> float:
    """Half width of the 95% t interval of the mean (0 for one value)."""
    if len(values) < 2:
        return 0.0
    return float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--backbone", default=BACKBONE, choices=[f"efficientnet_lite{i}" for i in range(3)],
                    help="the ImageNet weights every method starts from")
    ap.add_argument("--only", default="textbook,textbook-adam,fastai,ours")
    ap.add_argument("--textbook-epochs", type=int, default=25, help="the tutorial's 25")
    ap.add_argument("--adam-epochs", type=int, default=15)
    ap.add_argument("--fastai-epochs", type=int, default=10)
    ap.add_argument("--fastai-python", help="interpreter of an environment with fastai (skipped without)")
    ap.add_argument("--ours", default="features,probe,finetune,chain-thaw,ensemble")
    ap.add_argument("--ours-args", default="", help="more options for transferlab compare")
    ap.add_argument("--out", help="results folder of ours (default: a temporary folder)")
    ap.add_argument("--first-seed", type=int, default=0, help="references: start at this seed")
    ap.add_argument("--record", help="a JSON-lines file: each reference run is appended as it ends, and "
                                     "the table also counts the runs already in it (a long benchmark can "
                                     "be stopped and continued with --first-seed)")
    args = ap.parse_args()
    backbone = args.backbone

    parts, classes = split_paths(args.data)
    only = args.only.split(",")
    print(f"{args.data}, {backbone}: train {len(parts['train'][0])}, val {len(parts['val'][0])}, "
          f"test {len(parts['test'][0])}; "
          f"torch threads {torch.get_num_threads()}; native bf16 {bf16_native(torch.device('cpu'))}", flush=True)
    record = Path(args.record) if args.record else None
    runs = [json.loads(x) for x in record.read_text().splitlines() if x.strip()] \
        if record is not None and record.is_file() else []
    references = {
        "textbook": (args.textbook_epochs, lambda seed: textbook(parts, classes, seed, args.textbook_epochs, backbone)),
        "textbook-adam": (args.adam_epochs, lambda seed: textbook(parts, classes, seed, args.adam_epochs, backbone,
                                                                          "adam")),
        "fastai": (args.fastai_epochs, lambda seed: fastai(args.fastai_python, parts, classes, seed,
                                                           args.fastai_epochs, backbone)),
    }
    for method, (epochs, run_one) in references.items():
        if method not in only or (method == "fastai" and not args.fastai_python):
            continue
        for seed in range(args.first_seed, args.seeds):
            t0 = time.perf_counter()
            acc = run_one(seed)
            run = {"method": method, "seed": seed, "acc": acc, "seconds": time.perf_counter() - t0,
                   "epochs": epochs}
            runs = [r for r in runs if (r["method"], r["seed"]) != (method, seed)] + [run]
            if record is not None:
                with record.open("a") as f:
                    f.write(json.dumps(run) + "\n")
            print(f"  {method} seed {seed}: test {acc:.1%} in {run['seconds']:.0f}s", flush=True)
    latest = {(r["method"], r["seed"]): r for r in runs}  # a seed run again counts once, its last run
    results: dict[str, tuple[list[float], float]] = {}
    for method in references:
        mine = sorted((r for r in latest.values() if r["method"] == method), key=lambda r: r["seed"])
        if mine:
            results[method] = ([r["acc"] for r in mine], float(np.mean([r["seconds"] for r in mine])))
    if "ours" in only:
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tl-acc-")) / "out"
        results |= ours(args.data, args.ours, args.seeds, args.ours_args, out, backbone)

    base_name = next((m for m in ("textbook-adam", "textbook") if m in results), None)
    base = np.mean(results[base_name][0]) if base_name else None
    print(f"\n| method | test accuracy, mean +- 95% CI ({args.seeds} seeds) | per seed | seconds per run | "
          f"vs {base_name or 'textbook'} |")
    print("|---|---|---|---|---|")
    for name, (accs, secs) in results.items():
        diff = f"{100 * (np.mean(accs) - base):+.1f}" if base is not None else "-"
        print(f"| {name} | {100 * np.mean(accs):.1f} +- {100 * interval(accs):.1f} | "
              f"{' / '.join(f'{100 * a:.1f}' for a in accs)} | {secs:.0f} | {diff} |")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
