"""``transferlab data``, ``backbones``, ``strategies`` and ``classify``: look before you train."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.table import Table

from ..core.progress import warn
from ..data.builtin import load_dataset
from ..data.datasets import ImageDataset
from ..data.duplicates import find_duplicates, leak_warning
from ..data.imagecache import build_image_cache, cache_side
from ..data.pool import load_pool
from ..data.quality import short_sides
from ..data.splits import make_splits
from ..experiments.audit import audit
from ..experiments.backbone_choice import BenchmarkConfig, benchmark_backbones
from ..inference.classify import classify
from ..models.backbone import DEFAULT_BACKBONE
from ..models.catalog import backbone_info, backbone_spec, list_backbones
from ..train.config import AugmentConfig, BudgetConfig, DataConfig, ModelConfig, RuntimeConfig, TrainConfig
from ..train.strategies import describe_strategy, list_strategies
from .common import default_out, out
from .options import add_config_options, add_json_option, add_output_options, config_from_args, number

WEIGHTS_SHOWN = {"offline": "yes", "download": "no (download)", "none": "none (random init only)"}


def run_data(args: argparse.Namespace) -> None:
    """Classes, counts, splits, skipped files and fingerprint of DATA."""
    data = config_from_args(DataConfig, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped files are listed below
        ds = load_dataset(data.source, strict=data.strict, exclude=data.exclude)
        pool = load_pool(data.unlabelled, data.source, data.strict) if data.unlabelled else None
    splits = make_splits(ds, seed=data.split_seed)
    info = {
        "data": ds.name, "images": len(ds), "classes": ds.counts(),
        "splits": {k: len(v) for k, v in splits.items()},
        "predefined_splits": sorted(ds.splits), "skipped": [{"file": f, "reason": r} for f, r in ds.skipped],
        "fingerprint": ds.fingerprint,
    }
    if pool is not None:  # copies of labelled images are found when a compare decodes them
        info["unlabelled"] = {"source": pool.name, "images": len(pool),
                              "skipped": [{"file": f, "reason": r} for f, r in pool.skipped]}
    copies = _copies_across_splits(ds, splits, quiet=args.json)
    info["copies_across_splits"] = copies
    if args.json:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=escape(f"{ds.name}: {len(ds)} images, {len(ds.classes)} classes"))
    table.add_column("class")
    table.add_column("images", justify="right")
    for c, n in info["classes"].items():
        table.add_row(escape(c), str(n))
    out.print(table)
    given = ", ".join(info["predefined_splits"]) or "none"
    out.print("splits: " + ", ".join(f"{k} {v}" for k, v in info["splits"].items())
              + f" (from folders: {given}; split seed {data.split_seed})", highlight=False)
    out.print(f"skipped files: {len(ds.skipped)}")
    for f, r in ds.skipped:
        out.print(f"  {f}: {r}", markup=False, highlight=False)
    out.print(f"fingerprint: {ds.fingerprint}")
    if pool is not None:
        out.print(f"unlabelled pool: {len(pool)} images in {pool.name} ({len(pool.skipped)} unreadable skipped)",
                  markup=False, highlight=False)
        for f, r in pool.skipped:
            out.print(f"  {f}: {r}", markup=False, highlight=False)
    imbalance = ds.imbalance_warning()
    if imbalance:
        warn(imbalance)
    if copies:
        warn(copies)


def _copies_across_splits(ds: ImageDataset, splits: dict, quiet: bool) -> str | None:
    """The warning about copies across splits that pixels alone show (equal, re-encoded, resized or
    mirrored; transferlab audit also finds cropped ones), on the default backbone's image cache."""
    config = backbone_spec(DEFAULT_BACKBONE).data_config
    cache = build_image_cache(ds, cache_side(config), config["interpolation"], quiet=quiet)
    labelled = np.sort(np.concatenate(list(splits.values())))
    return leak_warning(find_duplicates(cache, labelled, sides=short_sides(ds, labelled)), splits)


def run_audit(args: argparse.Namespace) -> None:
    """Duplicates and leaks, label conflicts, likely label errors, outliers and low-quality images of DATA."""
    data = config_from_args(DataConfig, args)
    out_dir = Path(args.out or default_out(data.source, "audit", resume=True))
    report = audit(data, config_from_args(TrainConfig, args), out_dir, quiet=args.quiet)
    if args.json:
        print(json.dumps({"data": report.dataset.name, "images": int(len(report.labelled)),
                          "counts": report.counts(), "notes": report.notes, "seconds": round(report.seconds, 2),
                          "csv": str(out_dir / "audit.csv"), "html": str(out_dir / "audit.html")}, indent=2))
        return
    table = Table(title=escape(f"audit of {report.dataset.name}: {len(report.labelled)} labelled images"))
    for col in ("finding", "images", "first"):
        table.add_column(col)
    keys = report.dataset.keys()
    for kind, n in report.counts().items():
        first = report.of_kind(kind)[:1]
        table.add_row(kind, str(n), escape(f"{Path(keys[first[0].index]).name}: {first[0].detail}") if first else "")
    out.print(table)
    for note in report.notes:
        warn(note)
    leaks = report.of_kind("leak")
    if leaks:
        warn(f"{len(leaks)} image(s) copy an image of another split: the test score counts images the model was "
             "trained on; pass --dedupe to compare and train to leave the training copies out")
    out.print(f"audit.csv and audit.html in {out_dir} ({report.seconds:.1f} s); to leave the listed images out of "
              "any command, delete the rows of images to keep and pass --exclude audit.csv", markup=False,
              highlight=False)


def _print_benchmark(res: dict, args: argparse.Namespace) -> None:
    table = Table(title=escape(f"backbones on this machine ({args.out})"))
    for col in ("name", "weights", "latency ms", "img/s", "top-1 %", "params M", "GMACs", "probe acc"):
        table.add_column(col)
    for r in res["rows"]:
        table.add_row(r["name"], r["weights"], f"{r['latency_ms']:.1f}", f"{r['throughput_img_s']:.1f}",
                      str(r["top1"]), str(r["params_m"]), str(r["gmacs"]),
                      f"{r['probe_acc']:.1%}" if "probe_acc" in r else "-")
    out.print(table)
    budget = f" within {args.budget_ms:g} ms" if args.budget_ms else ""
    out.print(f"recommended{budget}: [bold]{res['recommended'] or 'none fits'}[/bold]")


def run_backbones(args: argparse.Namespace) -> None:
    """List the backbones; with --benchmark, time them here and recommend one."""
    if args.benchmark:
        data = config_from_args(DataConfig, args) if args.source else None
        res = benchmark_backbones(data, config_from_args(TrainConfig, args), args.out,
                                  config_from_args(BenchmarkConfig, args), quiet=args.quiet)
        _print_benchmark(res, args)
        return
    infos = [backbone_info(n) for n in list_backbones()]
    if args.json:
        print(json.dumps(infos, indent=2))
        return
    table = Table(title="backbones (ImageNet figures as published)")
    for col in ("name", "top-1 %", "params (M)", "GMACs", "weights offline"):
        table.add_column(col)
    for i in infos:
        table.add_row(i["name"], str(i.get("top1", "?")), str(i.get("params_m", "?")),
                      str(i.get("gmacs", "?")), WEIGHTS_SHOWN[i["weights"]])
    out.print(table)


def run_strategies(args: argparse.Namespace) -> None:
    """The registered strategies, each with what it does."""
    rows = [{"name": n, "description": describe_strategy(n)} for n in list_strategies()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="strategies")
    table.add_column("name")
    table.add_column("what it does")
    for r in rows:
        table.add_row(r["name"], r["description"])
    out.print(table)
    out.print("and, in a compare only: ensemble (a weighted average of the other strategies' probabilities, "
              "members and weights chosen on validation)", highlight=False)


def run_classify(args: argparse.Namespace) -> None:
    """ImageNet top-k of each image with a backbone's own pretrained classifier."""
    results = classify(args.images, backbone=args.backbone, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"file": f, "top": [{"label": lab, "prob": p} for lab, p in r]}
                          for f, r in zip(args.images, results)], indent=2))
        return
    for f, r in zip(args.images, results):
        out.print(f"[bold]{escape(f)}[/bold]")
        for lab, p in r:
            out.print(f"  {p:6.1%}  {lab}", markup=False, highlight=False)


def register(sub: argparse._SubParsersAction) -> None:
    """Add data, backbones, strategies and classify."""
    d = sub.add_parser("data", help="inspect a dataset: classes, counts, splits, skipped files")
    d.add_argument("source", metavar="DATA", help="digits, digits:N, flowers17[:k], or a folder")
    add_config_options(d, DataConfig, skip=("source",))
    add_json_option(d, "the summary")
    d.set_defaults(handler=run_data, subparser=d)

    a = sub.add_parser("audit", help="find duplicates and leaks across splits, likely label errors, outliers and "
                                     "low-quality images; writes audit.csv and audit.html")
    a.add_argument("source", metavar="DATA", help="digits, digits:N, flowers17[:k], a folder, or a CSV")
    add_config_options(a, DataConfig, skip=("source", "unlabelled", "dedupe"))
    add_config_options(a, ModelConfig)
    add_config_options(a, AugmentConfig, only=("views",))
    add_config_options(a, RuntimeConfig, only=("device", "fp32"))
    add_json_option(a, "the findings")
    add_output_options(a, "folder of audit.csv and audit.html (default runs/<data>-audit)")
    a.set_defaults(handler=run_audit, subparser=a)

    b = sub.add_parser("backbones", help="list backbones with their metadata; --benchmark times them here")
    add_json_option(b, "the backbones")
    b.add_argument("--benchmark", action="store_true", help="measure latency and throughput on this machine")
    add_config_options(b, BenchmarkConfig)
    # --data is optional here: with it, the probe's accuracy is measured for every offline backbone.
    add_config_options(b, DataConfig, {"source": ""}, skip=("unlabelled",))
    add_config_options(b, BudgetConfig, {"batch_size": 8}, only=("batch_size",))
    add_config_options(b, RuntimeConfig, only=("device", "fp32", "fold_bn"))
    add_output_options(b, "results directory of --benchmark", out_default="runs/backbones")
    b.set_defaults(handler=run_backbones, subparser=b)

    s = sub.add_parser("strategies", help="list the strategies and what each does")
    add_json_option(s, "the strategies")
    s.set_defaults(handler=run_strategies, subparser=s)

    c = sub.add_parser("classify", help="ImageNet top-k with a backbone's pretrained head")
    c.add_argument("images", nargs="+")
    c.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help=f"whose ImageNet head answers (see transferlab backbones; default: {DEFAULT_BACKBONE})")
    c.add_argument("--top-k", type=number(int, 1), default=5, help="labels per image (default: 5)")
    add_json_option(c, "the labels")
    c.set_defaults(handler=run_classify, subparser=c)
