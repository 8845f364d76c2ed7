"""Saved models: load a run's weights, export to ONNX or TorchScript with a parity check.

A run directory holds ``model.safetensors`` (weights) and ``model.json`` (backbone name,
preprocessing, head, classes), enough to rebuild the model offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from .backbones import create_backbone
from .errors import TransferlabError
from .heads import HeadSpec, TransferModel

PARITY_TOLERANCE = 1e-3


def find_model_dir(run_dir: str | Path, strategy: str | None = None) -> Path:
    """The model folder of a results directory: the named strategy's best seed, or the winner's."""
    run_dir = Path(run_dir)
    if (run_dir / "model.json").is_file():
        return run_dir
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise TransferlabError(f"{run_dir} is not a transferlab results directory (no metrics.json or "
                               "model.json); pass the --out folder of a compare or train run")
    metrics = json.loads(metrics_path.read_text())
    name = strategy or metrics["winner"]
    runs = [r for r in metrics["runs"] if r["strategy"] == name]
    if not runs:
        raise TransferlabError(f"{run_dir} has no finished run of strategy {name!r}; it has "
                               f"{', '.join(sorted({r['strategy'] for r in metrics['runs']}))}")
    best = max(runs, key=lambda r: r["test_acc"])
    return run_dir / name / f"seed{best['seed']}"


def load_model(run_dir: str | Path, strategy: str | None = None) -> tuple[TransferModel, dict[str, Any]]:
    """The trained model of a run (eval mode, CPU) and its ``model.json`` information."""
    folder = find_model_dir(run_dir, strategy)
    info = json.loads((folder / "model.json").read_text())
    cfg = info["data_config"]
    bb = create_backbone(info["backbone"], pretrained=False, image_size=cfg["input_size"][-1])
    bb.data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    model = TransferModel(bb, info["num_classes"], HeadSpec.from_dict(info["head"]))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    info["folder"] = str(folder)
    return model.eval(), info


class ImageClassifier(nn.Module):
    """Normalised image batch (N, 3, H, W) -> class logits: what the exported file computes."""

    def __init__(self, model: TransferModel):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)


def _sample_inputs(info: dict[str, Any], n: int = 4) -> torch.Tensor:
    """A few real images of the run's data when they can be read, else image-like noise."""
    size = info["data_config"]["input_size"][-1]
    run_root = Path(info["folder"]).parent.parent
    try:
        import yaml

        from .data import load_dataset
        from .imagecache import build_image_cache, cache_side, eval_batch

        config = yaml.safe_load((run_root / "config.yaml").read_text())
        ds = load_dataset(config["data"])
        cfg = info["data_config"]
        cache = build_image_cache(ds, cache_side(cfg), cfg["interpolation"], quiet=True)
        idx = np.linspace(0, len(ds) - 1, n).astype(int)
        return eval_batch(cache[idx], cfg)
    except Exception:  # noqa: BLE001 - the data may be gone; parity can be checked on noise
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)).clamp(-2, 2)


def export_model(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None,
                 strategy: str | None = None) -> tuple[Path, float]:
    """Export a run's model; return the file and the max abs difference to PyTorch on a few images.

    Raises:
        TransferlabError: unknown format, missing onnx packages, or parity worse than 1e-3.
    """
    model, info = load_model(run_dir, strategy)
    wrapper = ImageClassifier(model).eval()
    x = _sample_inputs(info)
    with torch.no_grad():
        reference = wrapper(x).numpy()
    folder = Path(info["folder"])
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise TransferlabError("ONNX export needs onnx and onnxruntime: "
                                   "pip install 'transferlab[export]'") from None
        path = Path(out) if out else folder / "model.onnx"
        torch.onnx.export(wrapper, (x,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {"image": x.numpy()})[0]
    elif fmt == "torchscript":
        path = Path(out) if out else folder / "model.torchscript.pt"
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, x)
        traced.save(str(path))
        with torch.no_grad():
            got = torch.jit.load(str(path))(x).numpy()
    else:
        raise TransferlabError(f"unknown export format {fmt!r}; use onnx or torchscript")
    diff = float(np.abs(got - reference).max())
    if diff > PARITY_TOLERANCE:
        raise TransferlabError(f"exported {path} differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE}); "
                               "do not use it")
    (path.parent / (path.name + ".json")).write_text(json.dumps(
        {"classes": info["classes"], "input": "normalised RGB batch (N, 3, H, W)",
         "preprocessing": info["data_config"], "max_abs_diff_vs_pytorch": diff}, indent=2))
    return path, diff
