"""Export a run's model to ONNX or TorchScript, checked against PyTorch on a few real images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import TransferlabError
from ..core.io import atomic_path, write_json
from ..core.layout import ResultsFolder
from ..data.builtin import load_dataset
from ..data.imagecache import build_image_cache, cache_side
from ..data.transforms import eval_batch
from ..experiments.experiment import load_experiment
from ..models.heads import TransferModel
from .saved import load_model

PARITY_TOLERANCE = 1e-3


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
    try:
        exp = load_experiment(ResultsFolder(Path(info["run_dir"])).config)  # the one loader of --config too
        ds = load_dataset(exp.data.source)
        cfg = info["data_config"]
        cache = build_image_cache(ds, cache_side(cfg), cfg["interpolation"], quiet=True)
        idx = np.linspace(0, len(ds) - 1, n).astype(int)
        return eval_batch(cache[idx], cfg)
    except Exception:  # noqa: BLE001 - the data may be gone; parity can be checked on noise
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)).clamp(-2, 2)


def _target(out: str | Path | None, default: Path) -> Path:
    """The file to write: ``out`` (its folder made if missing; a folder means a file inside it) or ``default``."""
    if out is None:
        return default
    path = Path(out)
    if path.is_dir():
        return path / default.name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _check_parity(got: np.ndarray, reference: np.ndarray, path: Path) -> float:
    """The largest difference to PyTorch's outputs; an export that differs too much is refused (and
    then not written)."""
    diff = float(np.abs(got - reference).max())
    if diff > PARITY_TOLERANCE:
        raise TransferlabError(f"the export to {path} differs from PyTorch by {diff:.2e} (> {PARITY_TOLERANCE}); "
                               "it was not written")
    return diff


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
        path = _target(out, folder / "model.onnx")
        with atomic_path(path) as tmp:
            torch.onnx.export(wrapper, (x,), str(tmp), input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            diff = _check_parity(session.run(["logits"], {"image": x.numpy()})[0], reference, path)
    elif fmt == "torchscript":
        path = _target(out, folder / "model.torchscript.pt")
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, x)
        with atomic_path(path) as tmp:
            traced.save(str(tmp))
            with torch.no_grad():
                diff = _check_parity(torch.jit.load(str(tmp))(x).numpy(), reference, path)
    else:
        raise TransferlabError(f"unknown export format {fmt!r}; use onnx or torchscript")
    write_json(path.parent / (path.name + ".json"),
               {"classes": info["classes"], "input": "normalised RGB batch (N, 3, H, W)",
                "preprocessing": info["data_config"], "max_abs_diff_vs_pytorch": diff})
    return path, diff
