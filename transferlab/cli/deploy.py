"""``transferlab predict``, ``suggest`` and ``export``: use and ship a trained run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..core.errors import TransferlabError
from ..inference.export import export_model
from ..inference.predict import predict
from ..train.novelty import DEFAULT_TARGET
from .common import out
from .options import add_json_option, number


def run_predict(args: argparse.Namespace) -> None:
    """Label images (files or folders) with a run's winner or a named strategy."""
    results = predict(args.run_dir, args.images, top_k=args.top_k, strategy=args.strategy,
                      reject_target=args.reject_target)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        extra = "  ".join(f"{lab} {p:.1%}" for lab, p in r["top"][1:])
        answer = f"unknown\t(nearest: {r['nearest']} {r['prob']:.1%})" if r["label"] == "unknown" else \
            f"{r['label']}\t{r['prob']:.1%}"
        out.print(f"{r['file']}\t{answer}" + (f"\t({extra})" if extra else ""), markup=False, highlight=False)


def run_suggest(args: argparse.Namespace) -> None:
    """Write the pool images to label next (CSV in the label format, and a contact sheet)."""
    from ..inference.suggest import suggest

    out_csv = args.out or str(Path(args.run_dir) / "suggestions.csv")
    chosen = suggest(args.run_dir, args.unlabelled, args.count, out_csv, args.strategy, quiet=args.quiet)
    for k, s in enumerate(chosen, 1):
        out.print(f"{k:3d}. {s.path}\t(guess {s.guess}, {s.confidence:.0%})", markup=False, highlight=False)
    out.print(f"wrote {out_csv} and {Path(out_csv).with_suffix('.html')}: fill in the label column of the "
              f"{len(chosen)} rows without one and pass the file back with --data", markup=False, highlight=False)


def run_export(args: argparse.Namespace) -> None:
    """Write ONNX or TorchScript (and an int8 ONNX), checked against predict."""
    done = export_model(args.run_dir, args.format, args.out, args.strategy, int8=args.int8)
    out.print(f"wrote {done.path} (probabilities within {done.max_abs_diff:.1e} of predict on the run's images), "
              f"{done.path.name}.json (classes, preprocessing, temperature, unknown threshold) and "
              f"{done.path.parent / 'MODEL_CARD.md'}", markup=False, highlight=False)
    if args.format == "onnx":
        out.print(f"try it: python {done.path.parent / 'predict_with_onnx.py'} IMAGE", markup=False,
                  highlight=False)
    for row in done.table:
        out.print(f"{row['model']}: {row['file']}  {row['mb']} MB  {row['ms_per_image']} ms per image  "
                  f"test accuracy {row['test_acc']:.1%}", markup=False, highlight=False)


def run_serve(args: argparse.Namespace) -> None:
    """Serve a run's model (or its ONNX export) over HTTP, with the page at /."""
    try:
        from ..inference.server import Limits, serve
    except ImportError:
        raise TransferlabError("serve needs starlette, uvicorn and python-multipart: "
                               "pip install 'transferlab[serve]'") from None
    from ..inference.backends import load_backend
    from ..inference.batching import load_in_model_thread

    backend, executor = load_in_model_thread(lambda: load_backend(args.run_dir, args.strategy, args.onnx))
    out.print(f"serving {backend.kind} model of {backend.folder} ({len(backend.classes)} classes): "
              f"page http://{args.host}:{args.port}/  api POST http://{args.host}:{args.port}/predict  "
              "(Ctrl-C stops)", markup=False, highlight=False)
    serve(backend, args.host, args.port, args.max_batch, args.batch_window_ms,
          Limits(max_upload_mb=args.max_upload_mb, max_images=args.max_images), quiet=args.quiet, executor=executor)


def register(sub: argparse._SubParsersAction) -> None:
    """Add predict and export."""
    p = sub.add_parser("predict", help="label images with a trained run")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--top-k", type=number(int, 1), default=1, help="labels per image (default: 1)")
    p.add_argument("--strategy", help="use this strategy's model instead of the winner")
    p.add_argument("--reject-target", type=number(float, 0, 1), default=DEFAULT_TARGET,
                   help="answer 'unknown' for images whose unknown-input score is above the threshold at which the "
                        "accepted validation images reach this precision; 0: always answer a class "
                        f"(default: {DEFAULT_TARGET})")
    add_json_option(p, "each answer (with its unknown-input score, threshold and nearest class)")
    p.set_defaults(handler=run_predict, subparser=p)

    g = sub.add_parser("suggest", help="the unlabelled images to label next (a CSV to fill in and a contact sheet)")
    g.add_argument("run_dir")
    g.add_argument("--unlabelled", required=True, help="a folder of unlabelled images (any nesting), or a CSV whose "
                                                        "rows with an empty label are unlabelled")
    g.add_argument("--count", type=number(int, 1), default=20, help="images to suggest (default: 20)")
    g.add_argument("--strategy", help="use this strategy's model instead of the winner")
    g.add_argument("--out", help="the CSV to write (default: RUN_DIR/suggestions.csv; the sheet beside it)")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    g.set_defaults(handler=run_suggest, subparser=g)

    e = sub.add_parser("export", help="export a run's model to ONNX or TorchScript (with a parity check)")
    e.add_argument("run_dir")
    e.add_argument("--format", choices=["onnx", "torchscript"], default="onnx",
                   help="onnx (for onnxruntime) or torchscript (loads in PyTorch or libtorch without "
                        "transferlab; default: onnx)")
    e.add_argument("--out", help="file to write (default: beside the model)")
    e.add_argument("--strategy", help="export this strategy's model instead of the winner")
    e.add_argument("--int8", action="store_true", help="also write an int8 ONNX model (static quantization calibrated "
                                                       "on training images; refused if it loses over 1 point of test "
                                                       "accuracy)")
    e.set_defaults(handler=run_export, subparser=e)

    v = sub.add_parser("serve", help="serve a run's model over HTTP: POST /predict, GET /model, and a page to try it")
    v.set_defaults(on_sigterm="the server stopped (SIGTERM)")
    v.add_argument("run_dir")
    v.add_argument("--strategy", help="serve this strategy's model instead of the winner")
    v.add_argument("--onnx", help="serve this ONNX export (onnxruntime) instead of the PyTorch model")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    v.add_argument("--port", type=number(int, 1, 65535), default=8000, help="default: 8000")
    v.add_argument("--max-batch", type=number(int, 1), default=8,
                   help="images run through the model together, from concurrent requests (default: 8, the fastest on a "
                        "2-core CPU in benchmarks/serve.py; 1: one request at a time)")
    v.add_argument("--batch-window-ms", type=number(float, 0), default=5.0,
                   help="how long a batch waits for more requests (default: 5)")
    v.add_argument("--max-upload-mb", type=number(float, 0.01), default=20.0, help="largest request (default: 20)")
    v.add_argument("--max-images", type=number(int, 1), default=64, help="images per request (default: 64)")
    v.add_argument("--quiet", action="store_true", help="no access log")
    v.set_defaults(handler=run_serve, subparser=v)
