"""``transferlab predict`` and ``export``: use and ship a trained run."""

from __future__ import annotations

import argparse
import json

from ..inference.export import export_model
from ..inference.predict import predict
from .common import out
from .options import number


def run_predict(args: argparse.Namespace) -> None:
    """Label images (files or folders) with a run's winner or a named strategy."""
    results = predict(args.run_dir, args.images, top_k=args.top_k, strategy=args.strategy)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        extra = "  ".join(f"{lab} {p:.1%}" for lab, p in r["top"][1:])
        out.print(f"{r['file']}\t{r['label']}\t{r['prob']:.1%}" + (f"\t({extra})" if extra else ""),
                  markup=False, highlight=False)


def run_export(args: argparse.Namespace) -> None:
    """Write ONNX or TorchScript, checked against PyTorch."""
    path, diff = export_model(args.run_dir, args.format, args.out, args.strategy)
    out.print(f"wrote {path} (max abs difference to PyTorch on test inputs: {diff:.2e})", markup=False,
              highlight=False)


def register(sub: argparse._SubParsersAction) -> None:
    """Add predict and export."""
    p = sub.add_parser("predict", help="label images with a trained run")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=number(int, 1), default=1, help="labels per image (default: 1)")
    p.add_argument("--strategy", help="use this strategy's model instead of the winner")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run_predict, subparser=p)

    e = sub.add_parser("export", help="export a run's model to ONNX or TorchScript (with a parity check)")
    e.add_argument("run_dir")
    e.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    e.add_argument("--out", help="file to write (default: beside the model)")
    e.add_argument("--strategy", help="export this strategy's model instead of the winner")
    e.set_defaults(handler=run_export, subparser=e)
