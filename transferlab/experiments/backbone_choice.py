"""Backbone choice by accuracy against time: latency and throughput of each backbone on this machine,
joined with the published ImageNet figures and, given data, the probe's accuracy on it."""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from ..core.config import Settings, option
from ..core.progress import console
from ..data.builtin import load_dataset
from ..data.splits import make_splits
from ..models.catalog import create_backbone, weights_offline
from ..reporting.plots import save_figure
from ..reporting.render import Section, render
from ..runtime.device import Precision
from ..runtime.distributed import broadcast, is_main
from ..train.config import DataConfig, TrainConfig
from ..train.run import prepare, train_one
from .folder import main_holds
from .study_files import write_rows

BENCHMARK_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                       "timm:mobilenetv3_large_100", "timm:resnet50", "tv:vgg19", "timm:inception_resnet_v2")


@dataclass(frozen=True)
class BenchmarkConfig(Settings):
    """Which backbones to time, and the latency budget for the recommendation."""

    names: tuple[str, ...] = option(BENCHMARK_BACKBONES, "comma-separated backbones to benchmark")
    budget_ms: float | None = option(None, "recommend the most accurate backbone within this latency (ms)",
                                     minimum=0)
    repeats: int = option(3, "timed forward passes per backbone (the median is kept)", minimum=1)


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


def _measure(name: str, config: TrainConfig, study: BenchmarkConfig, precision: Precision) -> dict[str, Any]:
    offline = weights_offline(name)
    bb = create_backbone(name, pretrained=offline)
    size = bb.data_config["input_size"][-1]
    batch = config.budget.batch_size
    latency = time_forward(bb.model, size, 1, precision, study.repeats)
    per_batch = time_forward(bb.model, size, batch, precision, max(1, study.repeats // 2))
    return {"name": name, "weights": "pretrained" if offline else "random (timing only)",
            "input_px": size, "latency_ms": latency * 1000, "throughput_img_s": batch / per_batch,
            "top1": bb.meta.get("top1"), "params_m": bb.meta.get("params_m"), "gmacs": bb.meta.get("gmacs")}


def _plot(rows: list[dict[str, Any]], with_probe: bool, budget_ms: float | None, path: Path) -> Path:
    fig = Figure(figsize=(11 if with_probe else 6.5, 4.2))
    axes = fig.subplots(1, 2 if with_probe else 1, squeeze=False)
    panels = [("top1", "ImageNet top-1 (%, published)")]
    panels += [("probe_acc", "transfer accuracy (probe, test)")] if with_probe else []
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
    return save_figure(fig, path)


def _table(rows: list[dict[str, Any]], with_probe: bool) -> list[list[str]]:
    table = [["backbone", "weights", "px", "latency ms", "img/s", "top-1", "params M", "GMACs"]
             + (["probe acc"] if with_probe else [])]
    for r in rows:
        table.append([r["name"], r["weights"], str(r["input_px"]), f"{r['latency_ms']:.1f}",
                      f"{r['throughput_img_s']:.1f}", str(r["top1"]), str(r["params_m"]), str(r["gmacs"])]
                     + ([f"{r['probe_acc']:.1%}" if "probe_acc" in r else "-"] if with_probe else []))
    return table


def benchmark_backbones(data: DataConfig | None, config: TrainConfig, out: str | Path,
                        study: BenchmarkConfig = BenchmarkConfig(), quiet: bool = True) -> dict[str, Any]:
    """Latency (batch 1) and throughput (batch ``config.budget.batch_size``) of each backbone on this
    machine, joined with ImageNet top-1 / params / GMACs; with ``data``, the probe's test accuracy for
    every backbone whose weights are available offline."""
    # Under torchrun rank 0 measures alone: latencies measured side by side would disturb each other.
    with main_holds(Path(out), data.source if data is not None else None, "a backbone benchmark"):
        return broadcast(_benchmark(data, config, Path(out), study, quiet) if is_main() else None)


def _benchmark(data: DataConfig | None, config: TrainConfig, out: Path, study: BenchmarkConfig,
               quiet: bool) -> dict[str, Any]:
    precision = Precision.choose(config.runtime.device)
    ds = None
    if data is not None and data.source:
        ds = load_dataset(data.source, strict=data.strict, exclude=data.exclude)
    rows = []
    for name in study.names:
        row = _measure(name, config, study, precision)
        if ds is not None and row["weights"] == "pretrained":
            probe_config = dataclasses.replace(config, model=dataclasses.replace(config.model, backbone=name))
            prep = prepare(ds, make_splits(ds, seed=data.split_seed), probe_config, quiet=quiet)
            res = train_one(prep, probe_config, "probe", 0, out / "probe" / name.replace(":", "_"), quiet=quiet)
            row["probe_acc"] = res.test_acc
        rows.append(row)
        if not quiet:
            console.print(f"{name}: {row['latency_ms']:.1f} ms, {row['throughput_img_s']:.1f} img/s")
    best = recommend(rows, study.budget_ms)
    write_rows(out, rows, {"budget_ms": study.budget_ms, "recommended": best and best["name"],
                           "precision": precision.describe()})
    plot = _plot(rows, ds is not None, study.budget_ms, out / "plots" / "accuracy_vs_latency.png")
    text = (f"Measured with {precision.describe()}, batch 1 for latency and batch {config.budget.batch_size} "
            "for throughput. Backbones whose weights are not available offline run with random weights: their "
            "timing is real, their accuracy is the published ImageNet figure.")
    if best:
        text += f"\n\nRecommended{f' within {study.budget_ms:g} ms' if study.budget_ms else ''}: {best['name']}."
    render("transferlab: backbone choice", [Section("Accuracy against time", text, _table(rows, ds is not None),
                                                    plot)], out)
    return {"rows": rows, "recommended": best and best["name"]}
