"""The classic studies as commands: backbone choice (accuracy against time), the dataset-size sweep
(Kornblith et al. 2019, fig. 9) and layer transferability (Yosinski et al. 2014, fig. 2).

Each writes ``results.json``, ``results.csv``, ``plots/*.png`` and ``report.html`` / ``report.md``
into its results directory.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backbones import create_backbone, weights_offline
from .data import ImageDataset, load_dataset, make_splits, per_class_subset
from .engine import ImageBatches, evaluate, fit_phase
from .errors import TransferlabError
from .heads import HeadSpec, TransferModel
from .progress import console
from .report import Section, plt, render
from .runtime import Precision
from .strategies import HEAD, Phase
from .training import TrainConfig, prepare, train_one

BENCHMARK_BACKBONES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                       "timm:mobilenetv3_large_100", "timm:resnet50", "tv:vgg19", "timm:inception_resnet_v2"]


def _write_rows(out: Path, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"rows": rows, **(extra or {})}, indent=2))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)


def _figure(path: Path, fig: plt.Figure) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Backbone choice


@torch.no_grad()
def time_forward(model: torch.nn.Module, size: int, batch: int, precision: Precision, repeats: int = 5) -> float:
    """Median seconds of one forward pass of a ``batch`` of ``size`` px images (after a warm-up)."""
    model = precision.to_model(model.eval())
    x = precision.to_input(torch.randn(batch, 3, size, size))
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        with precision.autocast():
            model(x)
        if precision.device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first pass warms up kernels and caches
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def recommend(rows: list[dict[str, Any]], budget_ms: float | None) -> dict[str, Any] | None:
    """The most accurate backbone (transfer accuracy when measured, else ImageNet top-1) within budget."""
    def score(r: dict[str, Any]) -> float:
        return r.get("probe_acc", -1.0) * 100 if "probe_acc" in r else (r.get("top1") or 0.0)

    fits = [r for r in rows if budget_ms is None or r["latency_ms"] <= budget_ms]
    return max(fits, key=score) if fits else None


def benchmark_backbones(names: list[str] | None = None, batch: int = 8, budget_ms: float | None = None,
                        data: str | None = None, out: str | Path = "runs/backbones", device: str = "auto",
                        repeats: int = 3, quiet: bool = False) -> dict[str, Any]:
    """Latency (batch 1) and throughput (batch ``batch``) of each backbone on this machine, joined with
    ImageNet top-1 / params / GMACs; with ``data``, the probe's test accuracy for every backbone whose
    weights are available offline."""
    names = names or BENCHMARK_BACKBONES
    precision = Precision.choose(device)
    rows = []
    ds = load_dataset(data) if data else None
    for name in names:
        offline = weights_offline(name)
        bb = create_backbone(name, pretrained=offline)
        size = bb.data_config["input_size"][-1]
        latency = time_forward(bb.model, size, 1, precision, repeats)
        per_batch = time_forward(bb.model, size, batch, precision, max(1, repeats // 2))
        row = {"name": name, "weights": "pretrained" if offline else "random (timing only)",
               "input_px": size, "latency_ms": latency * 1000, "throughput_img_s": batch / per_batch,
               "top1": bb.meta.get("top1"), "params_m": bb.meta.get("params_m"), "gmacs": bb.meta.get("gmacs")}
        if ds is not None and offline:
            config = TrainConfig(backbone=name, device=device)
            splits = make_splits(ds)
            prep = prepare(ds, splits, config, quiet=quiet)
            res = train_one(prep, config, "probe", 0, Path(out) / "probe" / name.replace(":", "_"), quiet=quiet)
            row["probe_acc"] = res.test_acc
        rows.append(row)
        if not quiet:
            console.print(f"{name}: {row['latency_ms']:.1f} ms, {row['throughput_img_s']:.1f} img/s")
    best = recommend(rows, budget_ms)
    out = Path(out)
    _write_rows(out, rows, {"budget_ms": budget_ms, "recommended": best and best["name"],
                            "precision": precision.describe()})
    fig, axes = plt.subplots(1, 2 if ds is not None else 1, figsize=(11 if ds is not None else 6.5, 4.2),
                             squeeze=False)
    panels = [("top1", "ImageNet top-1 (%, published)")] + ([("probe_acc", "transfer accuracy (probe, test)")]
                                                            if ds is not None else [])
    for ax, (key, label) in zip(axes[0], panels):
        for r in rows:
            if r.get(key) is None:
                continue
            y = r[key] * 100 if key == "probe_acc" else r[key]
            ax.scatter(r["latency_ms"], y, color="#2b7bba" if r["weights"] == "pretrained" else "#999999")
            ax.annotate(r["name"], (r["latency_ms"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if budget_ms:
            ax.axvline(budget_ms, color="#d62728", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("latency, batch 1 (ms, log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].set_title("accuracy against latency on this machine")
    plot = _figure(out / "plots" / "accuracy_vs_latency.png", fig)
    table = [["backbone", "weights", "px", "latency ms", "img/s", "top-1", "params M", "GMACs"]
             + (["probe acc"] if ds is not None else [])]
    for r in rows:
        table.append([r["name"], r["weights"], str(r["input_px"]), f"{r['latency_ms']:.1f}",
                      f"{r['throughput_img_s']:.1f}", str(r["top1"]), str(r["params_m"]), str(r["gmacs"])]
                     + ([f"{r['probe_acc']:.1%}" if "probe_acc" in r else "-"] if ds is not None else []))
    text = (f"Measured with {precision.describe()}, batch 1 for latency and batch {batch} for throughput. "
            "Backbones whose weights are not available offline run with random weights: their timing is "
            "real, their accuracy is the published ImageNet figure.")
    if best:
        text += f"\n\nRecommended{f' within {budget_ms:g} ms' if budget_ms else ''}: {best['name']}."
    render("transferlab: backbone choice", [Section("Accuracy against time", text, table, plot)], out)
    return {"rows": rows, "recommended": best and best["name"]}


# ---------------------------------------------------------------------------------------------
# Dataset-size sweep


def sweep(data: str, per_class: list[int], subsets: int = 3, strategies: list[str] | None = None,
          config: TrainConfig | None = None, out: str | Path = "runs/sweep", split_seed: int = 0,
          quiet: bool = False) -> dict[str, Any]:
    """Test accuracy against examples per class: nested random subsets of the training split (the
    same ``subsets`` seeds for every size), a fixed validation and test split."""
    strategies = strategies or ["probe", "finetune", "scratch"]
    config = config or TrainConfig()
    out = Path(out)
    ds = load_dataset(data)
    base = make_splits(ds, seed=split_seed)
    prep = prepare(ds, base, config, quiet=quiet)
    largest = int(np.bincount(ds.labels[base["train"]]).min())
    rows = []
    for n in per_class:
        for s in range(subsets):
            train = per_class_subset(base["train"], ds.labels, n, seed=s)
            sub = replace(prep, splits={**base, "train": train})
            for strategy in strategies:
                res = train_one(sub, config, strategy, s, out / f"n{n}" / f"subset{s}" / strategy, quiet=quiet)
                rows.append({"per_class": n, "per_class_used": min(n, largest), "subset": s, "strategy": strategy,
                             "train_images": len(train), "test_acc": res.test_acc, "seconds": res.seconds})
                if not quiet:
                    console.print(f"n={n} subset {s} {strategy}: {res.test_acc:.1%}")
    capped = sorted({n for n in per_class if n > largest})
    _write_rows(out, rows, {"largest_per_class": largest, "capped": capped, "test_images": len(base["test"])})
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    means: dict[str, dict[int, float]] = {}
    for strategy in strategies:
        xs = sorted({r["per_class_used"] for r in rows})
        accs = [[r["test_acc"] * 100 for r in rows if r["strategy"] == strategy and r["per_class_used"] == x]
                for x in xs]
        m = [float(np.mean(v)) for v in accs]
        means[strategy] = dict(zip(xs, m))
        style = {"color": "#777777", "linestyle": "--"} if strategy == "scratch" else {}
        a.errorbar(xs, m, yerr=[float(np.std(v)) for v in accs], marker="o", capsize=3, label=strategy, **style)
    a.set_xscale("log")
    a.set_xlabel("training examples per class (log scale)")
    a.set_ylabel("test accuracy (%), mean ± sd over subsets")
    a.legend()
    a.grid(alpha=0.3)
    a.set_title("accuracy against dataset size")
    if "scratch" in means:
        for strategy in strategies:
            if strategy != "scratch":
                xs = sorted(means[strategy])
                b.plot(xs, [means[strategy][x] - means["scratch"][x] for x in xs], marker="o", label=strategy)
        b.set_xscale("log")
        b.set_xlabel("training examples per class (log scale)")
        b.set_ylabel("gap over scratch (points)")
        b.axhline(0, color="black", linewidth=0.8)
        b.legend()
        b.grid(alpha=0.3)
        b.set_title("what pretraining buys")
    plot = _figure(out / "plots" / "sweep.png", fig)
    table = [["per class", *strategies]]
    for x in sorted({r["per_class_used"] for r in rows}):
        table.append([str(x)] + [f"{means[s][x]:.1f}%" for s in strategies])
    note = f"{subsets} nested random subsets per size; the same {len(base['test'])} test images throughout."
    if capped:
        note += f" Sizes {capped} exceed the smallest class ({largest} training images) and were capped to it."
    render("transferlab: dataset-size sweep", [Section("Test accuracy against examples per class", note, table,
                                                       plot)], out)
    return {"rows": rows, "capped": capped}


# ---------------------------------------------------------------------------------------------
# Layer transferability


def _relabel(ds: ImageDataset, keep: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the images of classes ``keep`` and their labels renumbered 0..len(keep)-1."""
    idx = np.flatnonzero(np.isin(ds.labels, keep))
    mapping = {c: k for k, c in enumerate(keep)}
    labels = np.full(len(ds), -1, dtype=np.int64)
    labels[idx] = [mapping[int(c)] for c in ds.labels[idx]]
    return idx, labels


def transferability(data: str, split: str = "random", cuts: list[int] | None = None,
                    backbone: str = "small_cnn", image_size: int = 32, epochs: int = 15, patience: int = 4,
                    lr: float = 1e-3, seed: int = 0, out: str | Path = "runs/transferability", device: str = "auto",
                    quiet: bool = False) -> dict[str, Any]:
    """Yosinski et al.'s experiment: base nets on class halves A and B, then BnB, BnB+, AnB, AnB+ for
    each cut ``n`` (first ``n`` groups copied from a base net, frozen or fine-tuned), accuracy on B."""
    t_start = time.perf_counter()
    out = Path(out)
    ds = load_dataset(data)
    rng = np.random.default_rng(seed)
    k = len(ds.classes)
    if split == "random":
        order = rng.permutation(k)
        a_classes, b_classes = sorted(order[:k // 2].tolist()), sorted(order[k // 2:].tolist())
    else:
        names = [c.strip() for c in split.split(",")]
        unknown = [c for c in names if c not in ds.classes]
        if unknown:
            raise TransferlabError(f"--split names unknown classes {unknown}; classes: {ds.classes}")
        a_classes = sorted(ds.classes.index(c) for c in names)
        b_classes = [c for c in range(k) if c not in a_classes]
    if not a_classes or not b_classes:
        raise TransferlabError("both halves need at least one class")
    config = TrainConfig(backbone=backbone, image_size=image_size, device=device)
    splits = make_splits(ds, seed=seed)
    prep = prepare(ds, splits, config, quiet=quiet)
    num_groups = len(create_backbone(backbone, pretrained=False, image_size=image_size).groups)
    cuts = cuts or list(range(1, num_groups))
    if any(not 1 <= n < num_groups + 1 for n in cuts):
        raise TransferlabError(f"cuts must lie in 1..{num_groups} for {backbone}")

    def data_for(classes: list[int]) -> tuple[ImageBatches, ImageBatches, ImageBatches]:
        _, labels = _relabel(ds, classes)
        parts = [s[np.isin(ds.labels[s], classes)] for s in (splits["train"], splits["val"], splits["test"])]
        return (ImageBatches(prep.cache, parts[0], labels, prep.data_config, 32, True),
                ImageBatches(prep.cache, parts[1], labels, prep.data_config, 32, False),
                ImageBatches(prep.cache, parts[2], labels, prep.data_config, 32, False))

    def train(model: TransferModel, groups: list, trainable: tuple[str, ...], batches: tuple, run_seed: int) -> float:
        prep.precision.to_model(model)
        phase = Phase("train", trainable, lr=lr, max_epochs=epochs, patience=patience, bn_eval=False)
        fit_phase(model, groups, phase, batches[0], batches[1], prep.precision, seed=run_seed, quiet=quiet)
        return evaluate(model, batches[2], prep.precision)[1]

    def fresh(n_classes: int, run_seed: int) -> tuple[TransferModel, list]:
        torch.manual_seed(run_seed)
        bb = create_backbone(backbone, pretrained=False, image_size=image_size)
        return TransferModel(bb, n_classes, HeadSpec(hidden=())), bb.groups

    data_a, data_b = data_for(a_classes), data_for(b_classes)
    bases = {}
    rows = []
    for name, classes, batches, s in (("A", a_classes, data_a, seed), ("B", b_classes, data_b, seed + 1)):
        model, groups = fresh(len(classes), s)
        acc = train(model, groups, (*[g.name for g in groups], HEAD), batches, s)
        bases[name] = model
        rows.append({"network": f"base{name}", "n": 0, "acc_on_B": acc if name == "B" else None,
                     "acc_on_A": acc if name == "A" else None})
        if not quiet:
            console.print(f"base{name}: {acc:.1%}")
    for n in cuts:
        for source in ("B", "A"):
            for plus in (False, True):
                model, groups = fresh(len(b_classes), seed + 100 + n)
                copied = {key: v for key, v in bases[source].state_dict().items()
                          if key.startswith("body.stages.") and int(key.split(".")[2]) < n}
                model.load_state_dict(copied, strict=False)
                names = [g.name for g in groups]
                trainable = (*names, HEAD) if plus else (*names[n:], HEAD)
                frozen_before = {key: v.clone() for key, v in copied.items()}
                acc = train(model, groups, trainable, data_b, seed + 200 + n)
                state = model.state_dict()
                if not plus and not all(torch.equal(state[key].cpu(), v.cpu()) for key, v in frozen_before.items()):
                    raise RuntimeError(f"{source}nB n={n}: copied layers changed although frozen")
                label = f"{source}n{'B'}{'+' if plus else ''}"
                rows.append({"network": label, "n": n, "acc_on_B": acc, "acc_on_A": None})
                if not quiet:
                    console.print(f"{label} n={n}: {acc:.1%}")
    seconds = time.perf_counter() - t_start
    _write_rows(out, rows, {"A": [ds.classes[c] for c in a_classes], "B": [ds.classes[c] for c in b_classes],
                            "backbone": backbone, "image_size": image_size, "cuts": cuts, "seconds": seconds})
    fig, ax = plt.subplots(figsize=(7, 4.3))
    styles = {"BnB": ("#2b7bba", "o", "-"), "BnB+": ("#2b7bba", "s", "--"), "AnB": ("#d62728", "o", "-"),
              "AnB+": ("#d62728", "s", "--")}
    for label, (color, marker, line) in styles.items():
        pts = [(r["n"], r["acc_on_B"] * 100) for r in rows if r["network"] == label]
        ax.plot(*zip(*pts), marker=marker, linestyle=line, color=color, label=label)
    base_b = next(r["acc_on_B"] for r in rows if r["network"] == "baseB") * 100
    ax.axhline(base_b, color="black", linewidth=1, label="baseB")
    ax.set_xlabel("layer groups copied (n)")
    ax.set_ylabel("test accuracy on B (%)")
    ax.set_xticks(cuts)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("layer transferability (Yosinski et al. 2014, fig. 2)")
    plot = _figure(out / "plots" / "transferability.png", fig)
    table = [["n", *styles]]
    for n in cuts:
        table.append([str(n)] + [f"{r['acc_on_B']:.1%}" for label in styles for r in rows
                                 if r["network"] == label and r["n"] == n])
    text = (f"A = {', '.join(ds.classes[c] for c in a_classes)}; B = {', '.join(ds.classes[c] for c in b_classes)}. "
            f"{backbone} at {image_size} px, from scratch; baseB {base_b:.1f}%. BnB: first n groups of baseB, "
            "frozen, the rest re-initialised and trained on B; AnB: the same from baseA; + : everything "
            f"fine-tuned. Wall time {seconds:.0f} s.")
    render("transferlab: layer transferability", [Section("Accuracy on B against the cut", text, table, plot)], out)
    return {"rows": rows, "seconds": seconds}
