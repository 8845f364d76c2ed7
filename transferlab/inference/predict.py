"""Predict labels for image files with a trained run, using the run's own preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import DataError
from ..core.io import read_json
from ..data.images import IMAGE_EXTENSIONS
from ..train.calibration import scale
from .classify import preprocess
from .saved import ensemble_members, find_model_dir, load_model


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


@torch.no_grad()
def predict(run_dir: str | Path, inputs: list[str | Path], top_k: int = 1, strategy: str | None = None,
            batch_size: int = 32) -> list[dict[str, Any]]:
    """For each image: ``{"file", "label", "prob", "top": [(label, prob), ...]}``."""
    folder = find_model_dir(run_dir, strategy)
    members = ensemble_members(folder) if (folder / "ensemble.json").is_file() else {folder: 1.0}
    models = [(load_model(f), w) for f, w in members.items()]
    # Temperature scaling fitted on validation (compare writes it): calibrated probabilities.
    calibration = folder / "calibration.json"
    temperature = float(read_json(calibration).get("temperature", 1.0)) if calibration.is_file() else 1.0
    classes = models[0][0][1]["classes"]
    files = expand_inputs(inputs)
    results = []
    for s in range(0, len(files), batch_size):
        chunk = files[s:s + batch_size]
        # An ensemble averages its members' probabilities, each model with its own preprocessing.
        probs = sum(w * model(preprocess(chunk, info["data_config"])).softmax(-1) for (model, info), w in models)
        probs = torch.from_numpy(scale(probs.numpy(), temperature)) if temperature != 1.0 else probs
        values, indices = probs.topk(min(top_k, len(classes)), dim=-1)
        for f, vs, ix in zip(chunk, values.tolist(), indices.tolist()):
            top = [(classes[i], float(v)) for v, i in zip(vs, ix)]
            results.append({"file": str(f), "label": top[0][0], "prob": top[0][1], "top": top})
    return results
