"""Layer transferability (Yosinski et al. 2014, fig. 2): base networks on two halves of the classes,
then BnB, BnB+, AnB and AnB+ for each cut n, from scratch on a small CNN that a CPU can afford."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ..core.config import Settings, option
from ..core.errors import TransferlabError
from ..core.progress import console
from ..data.builtin import load_dataset
from ..data.datasets import ImageDataset
from ..data.splits import make_splits
from ..models.catalog import backbone_spec, create_backbone
from ..models.heads import HEAD, HeadSpec, TransferModel, copy_groups, groups_state
from ..reporting.plots import save_figure
from ..reporting.render import Section, render
from ..runtime.distributed import broadcast, is_main
from ..train.batches import ImageBatches
from ..train.config import BatchNormPolicy, BudgetConfig, DataConfig, ModelConfig, TrainConfig
from ..train.engine import PhaseContext, evaluate, fit_phase
from ..train.run import Prepared, prepare
from ..train.strategies import Gradient, Phase
from .folder import main_holds
from .study_files import write_rows

# What the study runs on unless told otherwise: many small networks trained from scratch.
DEFAULT_CONFIG = TrainConfig(model=ModelConfig(backbone="small_cnn", image_size=32),
                             budget=BudgetConfig(max_epochs=15, patience=4))
STYLES = {"BnB": ("#2b7bba", "o", "-"), "BnB+": ("#2b7bba", "s", "--"), "AnB": ("#d62728", "o", "-"),
          "AnB+": ("#d62728", "s", "--")}


@dataclass(frozen=True)
class TransferabilityConfig(Settings):
    """How the classes are halved, where the networks are cut, and the learning rate."""

    split: str = option("random", "'random' or the comma-separated classes of half A")
    cuts: tuple[int, ...] | None = option(None, "cut layers, e.g. 1..4 or 1,3 (default: every group but the last)",
                                          minimum=1)
    lr: float = option(1e-3, "learning rate of every network")


def halves(ds: ImageDataset, split: str, seed: int) -> tuple[list[int], list[int]]:
    """The classes of half A and of half B: random (by ``seed``) or A named in ``split``."""
    k = len(ds.classes)
    if split == "random":
        order = np.random.default_rng(seed).permutation(k)
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
    return a_classes, b_classes


class _Study:
    """The networks of the study and how each is trained and scored."""

    def __init__(self, prep: Prepared, config: TrainConfig, lr: float, quiet: bool):
        self.prep, self.config, self.quiet = prep, config, quiet
        s = config.budget
        self.method = Gradient(lr=lr, max_epochs=s.max_epochs or 15, patience=s.patience or 4, bn=BatchNormPolicy.TRAIN)

    def batches(self, classes: list[int]) -> tuple[ImageBatches, ImageBatches, ImageBatches]:
        """Train (augmented), val and test batches of ``classes``, labelled 0..len(classes)-1."""
        ds, splits, bs = self.prep.dataset, self.prep.splits, self.config.budget.batch_size
        labels = np.full(len(ds), -1, dtype=np.int64)
        for k, c in enumerate(classes):
            labels[ds.labels == c] = k
        parts = [s[np.isin(ds.labels[s], classes)] for s in (splits["train"], splits["val"], splits["test"])]
        return (ImageBatches(self.prep.images, parts[0], labels, self.prep.data_config, bs, True),
                ImageBatches(self.prep.images, parts[1], labels, self.prep.data_config, bs, False),
                ImageBatches(self.prep.images, parts[2], labels, self.prep.data_config, bs, False))

    def fresh(self, n_classes: int, seed: int) -> TransferModel:
        """A randomly initialised network with a linear head."""
        torch.manual_seed(seed)
        bb = create_backbone(self.config.model.backbone, pretrained=False, image_size=self.config.model.image_size)
        return TransferModel(bb, n_classes, HeadSpec(hidden=()))

    def train(self, model: TransferModel, trainable: tuple[str, ...], batches: tuple, seed: int) -> float:
        """Train ``trainable`` parts on ``batches``; the test accuracy."""
        self.prep.precision.to_model(model)
        fit_phase(model, Phase("train", trainable, self.method), batches[0], batches[1],
                  PhaseContext(self.prep.precision, seed=seed, quiet=self.quiet))
        return evaluate(model, batches[2], self.prep.precision)[1]


def _cut_networks(study: _Study, bases: dict[str, TransferModel], data_b: tuple, n_classes: int,
                  cuts: tuple[int, ...], seed: int) -> list[dict[str, Any]]:
    """BnB, BnB+, AnB, AnB+ for every cut: the first n groups copied from a base net, frozen or not."""
    rows = []
    for n in cuts:
        for source in ("B", "A"):
            for plus in (False, True):
                model = study.fresh(n_classes, seed + 100 + n)
                copy_groups(model.groups, bases[source].groups, n)
                names = [g.name for g in model.groups]
                before = groups_state(model.groups, n)
                acc = study.train(model, (*names, HEAD) if plus else (*names[n:], HEAD), data_b, seed + 200 + n)
                after = groups_state(model.groups, n)
                if not plus and not all(torch.equal(a[k].cpu(), b[k].cpu()) for a, b in zip(after, before) for k in a):
                    raise RuntimeError(f"{source}nB n={n}: copied layers changed although frozen")
                label = f"{source}nB{'+' if plus else ''}"
                rows.append({"network": label, "n": n, "acc_on_B": acc, "acc_on_A": None})
                if not study.quiet:
                    console.print(f"{label} n={n}: {acc:.1%}")
    return rows


def _plot(rows: list[dict[str, Any]], cuts: tuple[int, ...], base_b: float, path: Path) -> Path:
    fig = Figure(figsize=(7, 4.3))
    ax = fig.subplots()
    for label, (color, marker, line) in STYLES.items():
        pts = [(r["n"], r["acc_on_B"] * 100) for r in rows if r["network"] == label]
        ax.plot(*zip(*pts), marker=marker, linestyle=line, color=color, label=label)
    ax.axhline(base_b, color="black", linewidth=1, label="baseB")
    ax.set_xlabel("layer groups copied (n)")
    ax.set_ylabel("test accuracy on B (%)")
    ax.set_xticks(cuts)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("layer transferability (Yosinski et al. 2014, fig. 2)")
    return save_figure(fig, path)


def transferability(data: DataConfig, config: TrainConfig = DEFAULT_CONFIG, out: str | Path = "runs/transferability",
                    study: TransferabilityConfig = TransferabilityConfig(), quiet: bool = True) -> dict[str, Any]:
    """Yosinski et al.'s experiment: base nets on class halves A and B, then BnB, BnB+, AnB, AnB+ for
    each cut ``n`` (first ``n`` groups copied from a base net, frozen or fine-tuned), accuracy on B.
    ``data.split_seed`` seeds the halves, the splits and the networks."""
    # Under torchrun rank 0 runs it alone (the cut networks need the base networks in its memory).
    with main_holds(Path(out), data.source, "a transferability study"):
        return broadcast(_transferability(data, config, Path(out), study, quiet) if is_main() else None)


def _transferability(data: DataConfig, config: TrainConfig, out: Path, study: TransferabilityConfig,
                     quiet: bool) -> dict[str, Any]:
    t_start, seed = time.perf_counter(), data.split_seed
    ds = load_dataset(data.source, strict=data.strict, exclude=data.exclude)
    a_classes, b_classes = halves(ds, study.split, seed)
    prep = prepare(ds, make_splits(ds, seed=seed), config, quiet=quiet)
    num_groups = len(backbone_spec(config.model.backbone).groups)
    cuts = study.cuts or tuple(range(1, num_groups))
    if any(not 1 <= n < num_groups + 1 for n in cuts):
        raise TransferlabError(f"cuts must lie in 1..{num_groups} for {config.model.backbone}")
    runner = _Study(prep, config, study.lr, quiet)
    data_b = runner.batches(b_classes)
    bases, rows = {}, []
    for name, classes, s in (("A", a_classes, seed), ("B", b_classes, seed + 1)):
        model = runner.fresh(len(classes), s)
        acc = runner.train(model, (*[g.name for g in model.groups], HEAD),
                           data_b if name == "B" else runner.batches(classes), s)
        bases[name] = model
        rows.append({"network": f"base{name}", "n": 0, "acc_on_B": acc if name == "B" else None,
                     "acc_on_A": acc if name == "A" else None})
        if not quiet:
            console.print(f"base{name}: {acc:.1%}")
    rows += _cut_networks(runner, bases, data_b, len(b_classes), cuts, seed)
    seconds = time.perf_counter() - t_start
    m = config.model
    write_rows(out, rows, {"A": [ds.classes[c] for c in a_classes], "B": [ds.classes[c] for c in b_classes],
                           "backbone": m.backbone, "image_size": m.image_size, "cuts": list(cuts), "seconds": seconds})
    base_b = next(r["acc_on_B"] for r in rows if r["network"] == "baseB") * 100
    plot = _plot(rows, cuts, base_b, out / "plots" / "transferability.png")
    table = [["n", *STYLES]]
    for n in cuts:
        table.append([str(n)] + [f"{r['acc_on_B']:.1%}" for label in STYLES for r in rows
                                 if r["network"] == label and r["n"] == n])
    text = (f"A = {', '.join(ds.classes[c] for c in a_classes)}; B = {', '.join(ds.classes[c] for c in b_classes)}. "
            f"{m.backbone} at {m.image_size} px, from scratch; baseB {base_b:.1f}%. BnB: first n groups of baseB, "
            "frozen, the rest re-initialised and trained on B; AnB: the same from baseA; + : everything "
            f"fine-tuned. Wall time {seconds:.0f} s.")
    render("transferlab: layer transferability", [Section("Accuracy on B against the cut", text, table, plot)], out)
    return {"rows": rows, "seconds": seconds}
