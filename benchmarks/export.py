"""Exports against predict on a run's test images, and the int8 model against fp32.

    python benchmarks/export.py RUN_DIR [--strategy NAME]

Exports the run's model to ONNX with ``--int8`` (``transferlab export``), then labels every test image
of the run twice: with ``transferlab predict`` (PyTorch) and with the exported file through the
standalone example the export writes (``predict_with_onnx.py``: Pillow, numpy and onnxruntime only,
from the image file). Printed: the largest difference in probabilities and in unknown-input score,
how often the labels agree, and the fp32 / int8 table (size, median latency for one image, test
accuracy), with the kind of CPU it ran on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import numpy as np
import torch

from transferlab.core.layout import ResultsFolder
from transferlab.data.builtin import load_dataset
from transferlab.experiments.experiment import load_experiment
from transferlab.inference.export import export_model
from transferlab.inference.predict import predict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--strategy")
    args = p.parse_args()
    start = time.time()
    done = export_model(args.run_dir, strategy=args.strategy, int8=True)
    seconds = time.time() - start
    exp = load_experiment(ResultsFolder(args.run_dir).config)
    ds = load_dataset(exp.data.source, strict=exp.data.strict, exclude=exp.data.exclude)
    test = np.load(ResultsFolder(args.run_dir).splits)["test"]
    files = [str(ds.paths[i]) for i in test]
    expected = predict(args.run_dir, files, top_k=len(ds.classes), strategy=args.strategy)

    spec = importlib.util.spec_from_file_location("example", done.path.parent / "predict_with_onnx.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    import onnxruntime as ort

    classes = example.INFO["classes"]
    rows = {}
    for name, path in (("fp32", done.path), ("int8", done.int8_path)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        probs, scores = [], []
        for s in range(0, len(files), 32):
            batch = np.stack([example.crop(f) for f in files[s:s + 32]])
            pr, _, sc = session.run(["probabilities", "logits", "unknown_score"], {"image": batch})
            probs.append(pr)
            scores.append(sc)
        rows[name] = (np.concatenate(probs), np.concatenate(scores))
    want = np.array([[dict(r["top"])[c] for c in classes] for r in expected])
    want_scores = np.array([r["unknown_score"] for r in expected])
    labels = np.array([ds.classes.index(ds.classes[ds.labels[i]]) for i in test])
    cpu = "native bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no native bf16"
    print(f"\n### Export against predict: {len(files)} test images of {args.run_dir} ({os.cpu_count()} cores, {cpu};"
          f" export with --int8 took {seconds:.0f} s)\n")
    print("| model | max abs diff in probabilities | max abs diff in unknown score | same label as predict | "
          "test accuracy | MB | ms per image (median) |\n|---|---|---|---|---|---|---|")
    table = {r["model"]: r for r in done.table}
    for name, (probs, scores) in rows.items():
        same = float((probs.argmax(1) == want.argmax(1)).mean())
        acc = float((probs.argmax(1) == labels).mean())
        print(f"| {name} | {np.abs(probs - want).max():.1e} | {np.abs(scores - want_scores).max():.1e} | {same:.1%} "
              f"| {acc:.1%} | {table[name]['mb']} | {table[name]['ms_per_image']} |")
    print("\n" + json.dumps({"export": str(done.path), "int8": str(done.int8_path), "table": done.table}))


if __name__ == "__main__":
    main()
