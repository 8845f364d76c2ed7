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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="transferlab", description="Transfer learning for image classification.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("classify", help="ImageNet top-k with a backbone's pretrained head")
    c.add_argument("images", nargs="+")
    c.add_argument("--backbone", default="efficientnet_lite0")
    c.add_argument("--top-k", type=int, default=5)
    c.add_argument("--json", action="store_true")

    b = sub.add_parser("backbones", help="list backbones with their metadata")
    b.add_argument("--json", action="store_true")

    d = sub.add_parser("data", help="inspect a dataset: classes, counts, splits, skipped files")
    d.add_argument("data", help="digits, flowers17[:k], or a folder")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--strict", action="store_true", help="unreadable images are an error")
    d.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
