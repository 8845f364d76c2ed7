"""The ``transferlab`` command line: parses arguments, then calls library functions."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable

from rich.table import Table

from .errors import TransferlabError
from .progress import console
from .runtime import tune_allocator

COMMANDS: dict[str, Callable[[argparse.Namespace], int | None]] = {}


def command(name: str) -> Callable:
    def wrap(fn: Callable) -> Callable:
        COMMANDS[name] = fn
        return fn

    return wrap


out = console.__class__()  # stdout console for results; progress goes to stderr


@command("classify")
def _classify(args: argparse.Namespace) -> None:
    from .classify import classify

    results = classify(args.images, backbone=args.backbone, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"file": f, "top": [{"label": lab, "prob": p} for lab, p in r]}
                          for f, r in zip(args.images, results)], indent=2))
        return
    for f, r in zip(args.images, results):
        out.print(f"[bold]{f}[/bold]")
        for lab, p in r:
            out.print(f"  {p:6.1%}  {lab}")


@command("backbones")
def _backbones(args: argparse.Namespace) -> None:
    from .backbones import backbone_info, list_backbones

    if args.benchmark:
        from .studies import benchmark_backbones

        names = [n.strip() for n in args.names.split(",")] if args.names else None
        res = benchmark_backbones(names, batch=args.batch, budget_ms=args.budget_ms, data=args.data, out=args.out,
                                  device=args.device, quiet=args.quiet)
        table = Table(title=f"backbones on this machine ({args.out})")
        for col in ("name", "weights", "latency ms", "img/s", "top-1 %", "params M", "GMACs", "probe acc"):
            table.add_column(col)
        for r in res["rows"]:
            table.add_row(r["name"], r["weights"], f"{r['latency_ms']:.1f}", f"{r['throughput_img_s']:.1f}",
                          str(r["top1"]), str(r["params_m"]), str(r["gmacs"]),
                          f"{r['probe_acc']:.1%}" if "probe_acc" in r else "-")
        out.print(table)
        budget = f" within {args.budget_ms:g} ms" if args.budget_ms else ""
        out.print(f"recommended{budget}: [bold]{res['recommended'] or 'none fits'}[/bold]")
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
                      str(i.get("gmacs", "?")), "yes" if i["offline"] else "no (download)")
    out.print(table)


@command("data")
def _data(args: argparse.Namespace) -> None:
    from .data import load_dataset, make_splits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped files are listed below
        ds = load_dataset(args.data, strict=args.strict)
    splits = make_splits(ds, seed=args.seed)
    info = {
        "data": ds.name, "images": len(ds), "classes": ds.counts(),
        "splits": {k: len(v) for k, v in splits.items()},
        "predefined_splits": sorted(ds.splits), "skipped": [{"file": f, "reason": r} for f, r in ds.skipped],
        "fingerprint": ds.fingerprint,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=f"{ds.name}: {len(ds)} images, {len(ds.classes)} classes")
    table.add_column("class")
    table.add_column("images", justify="right")
    for c, n in info["classes"].items():
        table.add_row(c, str(n))
    out.print(table)
    given = ", ".join(info["predefined_splits"]) or "none"
    out.print("splits: " + ", ".join(f"{k} {v}" for k, v in info["splits"].items())
              + f" (from folders: {given}; seed {args.seed})")
    out.print(f"skipped files: {len(ds.skipped)}")
    for f, r in ds.skipped:
        out.print(f"  {f}: {r}")
    out.print(f"fingerprint: {ds.fingerprint}")


def _experiment(args: argparse.Namespace, strategies: list[str]):
    from .experiment import Experiment
    from .training import TrainConfig

    config = TrainConfig(backbone=args.backbone, image_size=args.image_size, batch_size=args.batch_size,
                         augment=not args.no_augment, views=args.views, max_epochs=args.max_epochs,
                         patience=args.patience, probe_model=args.probe_model, discriminative=args.discriminative,
                         prefix_cache=not args.no_prefix_cache, device=args.device, fp32=args.fp32,
                         fold_bn=not args.no_fold_bn)
    return Experiment(args.data, strategies, seeds=args.seeds, split_seed=args.split_seed, config=config,
                      strict=args.strict)


def _print_summary(metrics: dict, out_dir) -> None:
    table = Table(title=f"results ({out_dir})")
    for col in ("strategy", "test accuracy", "val accuracy", "epochs", "train seconds"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for name, s in metrics["summary"].items():
        ci = f" ± {s['test_acc_ci95']:.1%}" if s["seeds"] > 1 else ""
        mark = " *" if name == metrics["winner"] else ""
        table.add_row(name + mark, f"{s['test_acc']:.1%}{ci}", f"{s['val_acc']:.1%}", f"{s['epochs']:.0f}",
                      f"{s['seconds']:.1f}")
    out.print(table)
    out.print(f"winner: [bold]{metrics['winner']}[/bold]")


def _numbered_out(base: str, resume: bool) -> str:
    """``base``, or ``base-2``, ``base-3`` ... : a new folder for a new run, the latest one to resume."""
    from pathlib import Path

    taken = [base] + [f"{base}-{k}" for k in range(2, 1000) if Path(f"{base}-{k}").exists()]
    existing = [p for p in taken if Path(p).exists()]
    if resume:
        return existing[-1] if existing else base
    return base if not existing else f"{base}-{len(existing) + 1}"


def _default_out(data: str, what: str, resume: bool = False) -> str:
    from pathlib import Path

    stem = Path(str(data).rstrip("/")).name.replace(":", "-") or "data"
    return _numbered_out(str(Path("runs") / f"{stem}-{what}"), resume)


@command("train")
def _train(args: argparse.Namespace) -> None:
    from .experiment import run_experiment

    exp = _experiment(args, [args.strategy])
    out_dir = args.out or _default_out(args.data, args.strategy, args.resume)
    metrics = run_experiment(exp, out_dir, resume=args.resume, quiet=args.quiet)
    _print_summary(metrics, out_dir)


@command("compare")
def _compare(args: argparse.Namespace) -> None:
    from .experiment import run_experiment

    exp = _experiment(args, [s.strip() for s in args.strategies.split(",") if s.strip()])
    out_dir = args.out or _default_out(args.data, "compare", args.resume)
    metrics = run_experiment(exp, out_dir, resume=args.resume, quiet=args.quiet)
    _print_summary(metrics, out_dir)


# The demo: the built-in offline digits, few examples per class (the regime transfer is for), a small
# input size so that all five strategies finish in minutes on a 2-core CPU.
DEMO = {"data": "digits:40", "image_size": 64, "max_epochs": 12, "patience": None}


@command("demo")
def _demo(args: argparse.Namespace) -> None:
    from .experiment import DEFAULT_STRATEGIES, Experiment, run_experiment
    from .training import TrainConfig

    config = TrainConfig(image_size=DEMO["image_size"], max_epochs=DEMO["max_epochs"], patience=DEMO["patience"],
                         device=args.device)
    args.out = args.out or _numbered_out("runs/demo", args.resume)
    exp = Experiment(DEMO["data"], DEFAULT_STRATEGIES, config=config)
    out.print(f"demo: {', '.join(DEFAULT_STRATEGIES)} on {DEMO['data']} (scikit-learn's digits, 40 per class) "
              f"with efficientnet_lite0 at {DEMO['image_size']}px -> {args.out}")
    metrics = run_experiment(exp, args.out, resume=args.resume, quiet=args.quiet,
                             command=f"transferlab demo --out {args.out}")
    _print_summary(metrics, args.out)
    from pathlib import Path

    out.print(f"report: {Path(args.out).resolve() / 'report.html'}")


@command("predict")
def _predict(args: argparse.Namespace) -> None:
    from .predict import predict

    results = predict(args.run_dir, args.images, top_k=args.top_k, strategy=args.strategy)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        extra = "  ".join(f"{lab} {p:.1%}" for lab, p in r["top"][1:])
        out.print(f"{r['file']}\t{r['label']}\t{r['prob']:.1%}" + (f"\t({extra})" if extra else ""), highlight=False)


@command("export")
def _export(args: argparse.Namespace) -> None:
    from .export import export_model

    path, diff = export_model(args.run_dir, args.format, args.output, args.strategy)
    out.print(f"wrote {path} (max abs difference to PyTorch on test inputs: {diff:.2e})")


def _ints(text: str) -> list[int]:
    if ".." in text:
        lo, hi = text.split("..")
        return list(range(int(lo), int(hi) + 1))
    return [int(x) for x in text.split(",") if x.strip()]


@command("sweep")
def _sweep(args: argparse.Namespace) -> None:
    from .studies import sweep
    from .training import TrainConfig

    config = TrainConfig(backbone=args.backbone, image_size=args.image_size, max_epochs=args.max_epochs,
                         patience=args.patience, device=args.device)
    res = sweep(args.data, _ints(args.per_class), args.subsets, [s.strip() for s in args.strategies.split(",")],
                config, args.out, quiet=args.quiet)
    if res["capped"]:
        out.print(f"sizes {res['capped']} exceed the smallest class and were capped")
    out.print(f"results and report: {args.out}")


@command("transferability")
def _transferability(args: argparse.Namespace) -> None:
    from .studies import transferability

    res = transferability(args.data, args.split, _ints(args.cuts) if args.cuts else None, args.backbone,
                          args.image_size, args.epochs, args.patience, out=args.out, device=args.device,
                          quiet=args.quiet)
    out.print(f"done in {res['seconds']:.0f} s; results and report: {args.out}")


def _training_args(p: argparse.ArgumentParser) -> None:
    from .backbones import DEFAULT_BACKBONE

    p.add_argument("--data", required=True, help="digits, flowers17[:k], or a folder")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--out", help="results directory (default runs/<data>-<what>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--seeds", type=int, default=1, help="seeds per strategy (0..N-1)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split")
    p.add_argument("--image-size", type=int, help="input size instead of the backbone's own")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-epochs", type=int, help="cap on the epochs of every phase")
    p.add_argument("--patience", type=int, help="cap on the early-stopping patience of every phase")
    p.add_argument("--no-augment", action="store_true", help="no random crops / flips")
    p.add_argument("--views", type=int, default=3, help="cached augmented views per image for frozen prefixes")
    p.add_argument("--probe-model", choices=["logreg", "svm"], default="logreg")
    p.add_argument("--discriminative", action="store_true", help="gradual: lower rates for lower groups")
    p.add_argument("--no-prefix-cache", action="store_true", help="always run the whole backbone")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--no-fold-bn", action="store_true",
                   help="run BatchNorm as is instead of folding it into the convolutions")
    p.add_argument("--strict", action="store_true", help="unreadable images are an error")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transferlab", description="Transfer learning for image classification.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("classify", help="ImageNet top-k with a backbone's pretrained head")
    c.add_argument("images", nargs="+")
    c.add_argument("--backbone", default="efficientnet_lite0")
    c.add_argument("--top-k", type=int, default=5)
    c.add_argument("--json", action="store_true")

    b = sub.add_parser("backbones", help="list backbones with their metadata; --benchmark times them here")
    b.add_argument("--json", action="store_true")
    b.add_argument("--benchmark", action="store_true", help="measure latency and throughput on this machine")
    b.add_argument("--names", help="comma-separated backbones to benchmark (default: a mobile-to-server range)")
    b.add_argument("--budget-ms", type=float, help="recommend the most accurate backbone within this latency")
    b.add_argument("--batch", type=int, default=8, help="batch size for the throughput figure")
    b.add_argument("--data", help="also run the probe strategy on DATA for each backbone with offline weights")
    b.add_argument("--out", default="runs/backbones")
    b.add_argument("--device", default="auto")
    b.add_argument("--quiet", action="store_true")

    d = sub.add_parser("data", help="inspect a dataset: classes, counts, splits, skipped files")
    d.add_argument("data", help="digits, flowers17[:k], or a folder")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--strict", action="store_true", help="unreadable images are an error")
    d.add_argument("--json", action="store_true")

    from .strategies import list_strategies

    t = sub.add_parser("train", help="train one strategy (one seed by default)")
    _training_args(t)
    t.add_argument("--strategy", default="finetune", choices=list_strategies())

    from .experiment import DEFAULT_STRATEGIES

    cp = sub.add_parser("compare", help="train several strategies on the same splits and compare them")
    _training_args(cp)
    cp.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                    help=f"comma-separated, from: {', '.join(list_strategies())}")

    dm = sub.add_parser("demo", help="compare all strategies on the built-in offline digits (minutes)")
    dm.add_argument("--out", help="results directory (default runs/demo, or runs/demo-2 ... if taken)")
    dm.add_argument("--resume", action="store_true")
    dm.add_argument("--device", default="auto")
    dm.add_argument("--quiet", action="store_true")

    sw = sub.add_parser("sweep", help="test accuracy against examples per class (nested subsets)")
    sw.add_argument("--data", required=True)
    sw.add_argument("--per-class", default="1,2,5,10,20,40")
    sw.add_argument("--subsets", type=int, default=3)
    sw.add_argument("--strategies", default="probe,finetune,scratch")
    sw.add_argument("--backbone", default="efficientnet_lite0")
    sw.add_argument("--image-size", type=int, default=32)
    sw.add_argument("--max-epochs", type=int, default=6)
    sw.add_argument("--patience", type=int, default=3)
    sw.add_argument("--out", default="runs/sweep")
    sw.add_argument("--device", default="auto")
    sw.add_argument("--quiet", action="store_true")

    tr = sub.add_parser("transferability", help="layer transferability: AnB / BnB (Yosinski et al. 2014)")
    tr.add_argument("--data", required=True)
    tr.add_argument("--split", default="random", help="'random' or the comma-separated classes of half A")
    tr.add_argument("--cuts", help="e.g. 1..4 or 1,3 (default: every group but the last)")
    tr.add_argument("--backbone", default="small_cnn")
    tr.add_argument("--image-size", type=int, default=32)
    tr.add_argument("--epochs", type=int, default=15)
    tr.add_argument("--patience", type=int, default=4)
    tr.add_argument("--out", default="runs/transferability")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--quiet", action="store_true")

    pr = sub.add_parser("predict", help="label images with a trained run")
    pr.add_argument("run_dir")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--top-k", type=int, default=1)
    pr.add_argument("--strategy", help="use this strategy's model instead of the winner")
    pr.add_argument("--json", action="store_true")

    ex = sub.add_parser("export", help="export a run's model to ONNX or TorchScript (with a parity check)")
    ex.add_argument("run_dir")
    ex.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    ex.add_argument("--output", help="file to write (default: beside the model)")
    ex.add_argument("--strategy", help="export this strategy's model instead of the winner")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    try:
        return COMMANDS[args.command](args) or 0
    except TransferlabError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
