"""Predict labels for image files with a trained run, using the run's own preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import DataError
from ..core.layout import RunFolder
from ..data.images import IMAGE_EXTENSIONS
from ..train.calibration import Calibration, scale
from .classify import preprocess
from .saved import ensemble_members, find_model_dir, load_model, redo_hint


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and the image files inside folders (sorted, recursive)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(f"{item} holds no image files")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item} does not exist")
    return files


class Predictor:
    """A trained run's model (or ensemble of models) with its preprocessing and calibration, loaded
    once: class probabilities for image files, PIL images or uint8 (H, W, 3) arrays."""

    def __init__(self, run_dir: str | Path, strategy: str | None = None, batch_size: int = 32):
        folder = find_model_dir(run_dir, strategy)
        run = RunFolder(folder)
        members = ensemble_members(folder) if run.is_ensemble() else {folder: 1.0}
        self.models = [(load_model(f), w) for f, w in members.items()]
        # Temperature scaling fitted on validation (compare writes it): calibrated probabilities.
        self.temperature = Calibration.read(run.calibration, redo_hint(folder)).temperature \
            if run.calibration.is_file() else 1.0
        self.classes: list[str] = self.models[0][0][1]["classes"]
        self.folder, self.batch_size = folder, batch_size

    @torch.no_grad()
    def probabilities(self, images: list) -> np.ndarray:
        """(N, classes) calibrated probabilities; an ensemble averages its members' (each model with
        its own preprocessing)."""
        out = []
        for s in range(0, len(images), self.batch_size):
            chunk = images[s:s + self.batch_size]
            probs = sum(w * model(preprocess(chunk, info["data_config"])).softmax(-1).double()
                        for (model, info), w in self.models)
            out.append(scale(probs.numpy(), self.temperature))
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))


def predict(run_dir: str | Path, inputs: list[str | Path], top_k: int = 1, strategy: str | None = None,
            batch_size: int = 32) -> list[dict[str, Any]]:
    """For each image file (folders are searched): ``{"file", "label", "prob", "top": [(label, prob), ...]}``."""
    predictor = Predictor(run_dir, strategy, batch_size)
    files = expand_inputs(inputs)
    probs, classes = predictor.probabilities(files), predictor.classes
    results = []
    for f, p in zip(files, probs):
        order = np.argsort(-p, kind="stable")[:min(top_k, len(classes))]
        top = [(classes[i], float(p[i])) for i in order]
        results.append({"file": str(f), "label": top[0][0], "prob": top[0][1], "top": top})
    return results
