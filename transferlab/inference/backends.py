"""What ``serve`` runs a batch of images through: the run's PyTorch model (``Predictor``) or its ONNX
export (onnxruntime). Both give the same calibrated probabilities and unknown-input scores, from the
same squares that ``predict`` makes of an image file."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import TransferlabError
from ..core.layout import RunFolder
from ..data.imagecache import cache_side, resize_center
from ..train.novelty import UnknownRule
from .classify import pixels
from .predict import Predictor


class TorchBackend:
    """A results folder's model (its winner, or ``strategy``'s) in PyTorch."""

    kind = "pytorch"

    def __init__(self, run_dir: str | Path, strategy: str | None = None):
        self.predictor = Predictor(run_dir, strategy)
        (_, info), _ = self.predictor.models[0]
        self.data_config, self.classes = info["data_config"], self.predictor.classes
        self.folder = self.predictor.folder
        rule = self.predictor.rule
        self.threshold = rule.threshold if rule else float("inf")

    def run(self, squares: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities (N, classes) and unknown-input scores (N,) of uint8 squares."""
        probs, scores, _ = self.predictor.unknown_scores(squares)
        return probs, scores

    def explain(self, squares: list[np.ndarray], targets: np.ndarray) -> list[str | None]:
        """A Grad-CAM overlay (PNG data URL) per image for its class ``targets``; None where the model has
        no usable last layer (an ensemble, or a backbone whose groups do not run one by one)."""
        from ..reporting.explain import gradcam, overlay

        if len(self.predictor.models) != 1:
            return [None] * len(squares)
        (model, info), _ = self.predictor.models[0]
        images = np.stack(squares)
        maps = gradcam(model, images, info["data_config"], targets)
        if maps is None:
            return [None] * len(squares)
        return [png_data_url(a) for a in overlay(images, maps, info["data_config"]["input_size"][-1])]


class OnnxBackend:
    """An ONNX export (``transferlab export``) and its sidecar JSON, in onnxruntime."""

    kind = "onnx"

    def __init__(self, path: str | Path):
        from .export import _session, read_sidecar

        self.path = Path(path)
        if not self.path.is_file():
            raise TransferlabError(f"{self.path} does not exist; write it with transferlab export RUN_DIR")
        info = read_sidecar(self.path)
        self.classes, self.data_config = info["classes"], info["preprocessing"]["data_config"]
        self.session = _session(self.path)
        unknown = info.get("unknown")
        self.rule = UnknownRule(**unknown["rule"]) if unknown else None
        self.threshold = unknown["threshold"] if unknown else float("inf")
        self.folder = Path(info["model_folder"]) if info.get("model_folder") else self.path.parent

    def run(self, squares: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        crops = pixels(squares, self.data_config)
        probs, _, scores = self.session.run(["probabilities", "logits", "unknown_score"], {"image": crops})
        return probs.astype(np.float64), scores.astype(np.float64)

    def explain(self, squares: list[np.ndarray], targets: np.ndarray) -> list[str | None]:
        return [None] * len(squares)  # Grad-CAM needs the model's gradients: PyTorch only


def load_backend(run_dir: str | Path, strategy: str | None = None, onnx: str | Path | None = None):
    """The ONNX export ``onnx`` when given, else the run's PyTorch model."""
    return OnnxBackend(onnx) if onnx else TorchBackend(run_dir, strategy)


def square(img: Image.Image, data_config: dict[str, Any]) -> np.ndarray:
    """The uint8 square ``predict`` makes of an image (the centre square, resized to the run's side)."""
    return resize_center(img, cache_side(data_config), data_config["interpolation"])


def png_data_url(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def model_card_of(backend) -> dict[str, Any]:
    """The model card of what ``backend`` serves (written on the fly when the folder has none)."""
    from ..reporting.model_card import model_card

    folder = backend.folder
    card = model_card(folder) if RunFolder(folder).model.is_file() or RunFolder(folder).is_ensemble() else {}
    card["serving"] = {"backend": backend.kind, "classes": backend.classes,
                       "unknown_threshold": backend.threshold if np.isfinite(backend.threshold) else None}
    return card
