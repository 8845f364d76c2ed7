"""Predict labels for image files with a trained run, using the run's own preprocessing."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ..core.errors import DataError
from ..core.layout import RunFolder
from ..core.records import read_record
from ..data.datasets import DataWarning
from ..data.images import IMAGE_EXTENSIONS
from ..runtime.bnfold import fold_for_inference
from ..train.calibration import Calibration, scale
from ..train.novelty import DEFAULT_TARGET, UnknownRule, nearest_distance
from .classify import preprocess
from .saved import ensemble_members, find_model_dir, load_model, redo_hint


def expand_inputs(inputs: list[str | Path]) -> list[tuple[Path, bool]]:
    """Files as given, and the image files inside folders (sorted, recursive), each with whether it
    was found by searching a folder."""
    files: list[tuple[Path, bool]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(f"{item} holds no image files")
            files += [(f, True) for f in found]
        elif item.is_file():
            files.append((item, False))
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
        for (model, info), _ in self.models:
            # oneDNN's fastest layout on a CPU (lite0, 2 cores: 11 ms per image in batches of 4 against 23 ms
            # contiguous), and BatchNorm folded into the convolutions (a third less time in batches); the
            # probabilities move by about 1e-6.
            model.to(memory_format=torch.channels_last)
            example = torch.randn(2, *info["data_config"]["input_size"], generator=torch.Generator().manual_seed(0))
            example = example.contiguous(memory_format=torch.channels_last)
            fold_for_inference(model, lambda m=model, x=example: m(x))
        # Temperature scaling fitted on validation (compare writes it): calibrated probabilities.
        self.temperature = Calibration.read(run.calibration, redo_hint(folder)).temperature \
            if run.calibration.is_file() else 1.0
        self.classes: list[str] = self.models[0][0][1]["classes"]
        self.folder, self.batch_size = folder, batch_size
        # The unknown-input rule (compare fits it on validation) and the training features it measures against.
        self.rule = read_record(UnknownRule, run.unknown, redo_hint(folder)) if run.unknown.is_file() else None
        self.train_features = None
        if self.rule is not None and self.rule.distance_mean is not None and run.train_features.is_file():
            self.train_features = load_file(str(run.train_features))["features"]

    @torch.no_grad()
    def probabilities_and_distances(self, images: list) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities (N, classes) and, for one model with its training features, each image's
        distance to the nearest training image in the model's feature space."""
        probs_out, dist_out = [], []
        for s in range(0, len(images), self.batch_size):
            chunk = images[s:s + self.batch_size]
            probs = 0.0
            for (model, info), w in self.models:
                x = preprocess(chunk, info["data_config"]).contiguous(memory_format=torch.channels_last)
                feats = model.features(x)
                probs = probs + w * model.head(feats).softmax(-1).double()
                if self.train_features is not None:
                    dist_out.append(nearest_distance(self.train_features, feats, self.rule.feature_power))
            probs_out.append(scale(probs.numpy(), self.temperature))
        if not probs_out:
            return np.zeros((0, len(self.classes))), None
        return np.concatenate(probs_out), np.concatenate(dist_out) if dist_out else None

    def probabilities(self, images: list) -> np.ndarray:
        """(N, classes) calibrated probabilities; an ensemble averages its members' (each model with
        its own preprocessing)."""
        return self.probabilities_and_distances(images)[0]

    def unknown_scores(self, images: list, target: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """Calibrated probabilities, the unknown-input score of each image and the threshold above which it
        is unknown (for ``target`` precision, default the rule's own); a run without a rule (trained before
        there was one) scores every image 0 against an infinite threshold."""
        probs, distance = self.probabilities_and_distances(images)
        if self.rule is None:
            return probs, np.zeros(len(probs)), float("inf")
        rule = self.rule if target is None else self.rule.with_target(target)
        return probs, rule.score(probs, distance), rule.threshold


UNKNOWN = "unknown"


def predict(run_dir: str | Path, inputs: list[str | Path], top_k: int = 1, strategy: str | None = None,
            batch_size: int = 32, reject_target: float | None = DEFAULT_TARGET) -> list[dict[str, Any]]:
    """For each image file (folders are searched): ``{"file", "label", "prob", "top": [(label, prob), ...],
    "nearest", "unknown_score", "threshold"}``. ``label`` is ``"unknown"`` when the image's unknown-input
    score is above the threshold that gives ``reject_target`` precision on validation (None or 0: never);
    ``nearest`` is then the most probable class."""
    predictor = Predictor(run_dir, strategy, batch_size)
    files, probs, scores, threshold = _readable_scores(predictor, expand_inputs(inputs), reject_target or None)
    classes = predictor.classes
    results = []
    for f, p, score in zip(files, probs, scores):
        order = np.argsort(-p, kind="stable")[:min(top_k, len(classes))]
        top = [(classes[i], float(p[i])) for i in order]
        unknown = bool(reject_target) and score > threshold
        results.append({"file": str(f), "label": UNKNOWN if unknown else top[0][0], "prob": top[0][1], "top": top,
                        "nearest": top[0][0], "unknown_score": round(float(score), 4),
                        "threshold": round(threshold, 4) if np.isfinite(threshold) else None})
    return results


def _readable_scores(predictor: Predictor, inputs: list[tuple[Path, bool]], target: float | None
                     ) -> tuple[list[Path], np.ndarray, np.ndarray, float]:
    """``Predictor.unknown_scores`` of the files, a batch at a time; an unreadable file found in a folder
    is skipped with a warning that names it (one corrupt photo should not stop a folder of thousands), a
    named one is an error. Returns the files scored, their probabilities and scores, and the threshold."""
    kept: list[Path] = []
    probs, scores, threshold = [], [], float("inf")
    for s in range(0, len(inputs), predictor.batch_size):
        chunk = inputs[s:s + predictor.batch_size]
        try:
            p, u, threshold = predictor.unknown_scores([f for f, _ in chunk], target)
            kept += [f for f, _ in chunk]
            probs.append(p)
            scores.append(u)
            continue
        except DataError:
            pass  # some file of this batch is unreadable: score its files one by one to find which
        for f, searched in chunk:
            try:
                p, u, threshold = predictor.unknown_scores([f], target)
            except DataError as exc:
                if not searched:
                    raise
                warnings.warn(f"skipped: {exc}", DataWarning, stacklevel=3)
                continue
            kept.append(f)
            probs.append(p)
            scores.append(u)
    if not kept:
        raise DataError("none of the images could be read (see the files skipped above)")
    return kept, np.concatenate(probs), np.concatenate(scores), threshold
