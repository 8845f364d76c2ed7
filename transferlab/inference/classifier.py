"""``TransferClassifier``: the whole tool as a scikit-learn style estimator, for notebooks and scripts.

    clf = TransferClassifier(strategy="finetune").fit("photos/")        # or .fit(files, labels)
    clf.predict(["a.jpg", "b.jpg"]); clf.predict_proba(images); clf.save("model/")
    clf = TransferClassifier.load("model/")

``fit`` runs a compare of the chosen strategies (one seed) into a results folder (a temporary one
unless ``out`` is given) and keeps the winner, chosen on validation; ``strategy="auto"`` compares
probe, finetune and their ensemble. Nothing in the caller's process is changed (no allocator,
Pillow, cuDNN or matplotlib settings); progress output is off unless ``verbose``.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ..core.errors import TransferlabError
from ..experiments.compare import CompareConfig, compare
from ..models.backbone import DEFAULT_BACKBONE
from ..train.config import BudgetConfig, DataConfig, ModelConfig, RuntimeConfig, TrainConfig
from ..train.novelty import DEFAULT_TARGET
from .predict import UNKNOWN, Predictor

AUTO = ("probe", "finetune", "ensemble")


class TransferClassifier(ClassifierMixin, BaseEstimator):
    """Transfer learning behind ``fit`` / ``predict`` / ``predict_proba``.

    Args:
        backbone: a name from ``transferlab backbones``.
        strategy: a strategy name, a comma-separated list (the winner on validation is kept), or
            ``auto`` (probe, finetune and their ensemble).
        image_size: input size instead of the backbone's own.
        max_epochs: cap on every phase's epochs.
        seed: the run's seed (and the split's).
        device: ``auto``, ``cpu``, ``cuda`` ...
        out: keep the results folder (metrics, report, weights) there; default: a temporary folder.
        verbose: progress output.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, strategy: str = "auto", image_size: int | None = None,
                 max_epochs: int | None = None, seed: int = 0, device: str = "auto", out: str | None = None,
                 verbose: bool = False):
        self.backbone, self.strategy, self.image_size, self.max_epochs = backbone, strategy, image_size, max_epochs
        self.seed, self.device, self.out, self.verbose = seed, device, out, verbose

    def _config(self) -> TrainConfig:
        return TrainConfig(model=ModelConfig(backbone=self.backbone, image_size=self.image_size),
                           budget=BudgetConfig(max_epochs=self.max_epochs), runtime=RuntimeConfig(device=self.device))

    def fit(self, X: Any, y: Any = None) -> TransferClassifier:
        """Train on ``X``: a DATA spec (folder, CSV, ``digits``...), or image files with labels ``y``."""
        strategies = AUTO if self.strategy == "auto" else tuple(s.strip() for s in str(self.strategy).split(","))
        config, plan = self._config(), CompareConfig(strategies=strategies, seeds=1)  # bad settings stop here
        DataConfig("digits", split_seed=self.seed)  # the seed checked now; the real source is known below
        work = Path(tempfile.mkdtemp(prefix="transferlab-"))
        try:
            source = _as_source(X, y, work)
            out = Path(self.out) if self.out else work / "results"
            metrics = compare(DataConfig(source, split_seed=self.seed), config, out, plan, quiet=not self.verbose,
                              command="TransferClassifier.fit")
            self.winner_ = metrics["winner"]
            self.scores_ = {r["strategy"]: {"test_acc": r["test_acc"], "val_acc": r["val_acc"]}
                            for r in metrics["runs"]}
            self._keep(out, work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self

    def _keep(self, out: Path, work: Path) -> None:
        """Keep the results folder (moved out of the temporary one unless ``out`` was given) and load its
        winner."""
        if not self.out:
            self.model_dir_ = Path(tempfile.mkdtemp(prefix="transferlab-model-"))
            shutil.copytree(out, self.model_dir_, dirs_exist_ok=True)
        else:
            self.model_dir_ = out
        shutil.rmtree(work, ignore_errors=True)
        self.predictor_ = Predictor(self.model_dir_)
        self.classes_ = np.array(self.predictor_.classes)

    def predict_proba(self, X: list) -> np.ndarray:
        """Calibrated class probabilities (N, classes) for image files, PIL images or uint8 arrays."""
        self._check_fitted()
        return self.predictor_.probabilities(list(X))

    def predict(self, X: list) -> np.ndarray:
        """Class names for image files, PIL images or uint8 arrays."""
        probs = self.predict_proba(X)  # checks that it is fitted first
        return self.classes_[probs.argmax(1)]

    def unknown_score(self, X: list, reject_target: float = DEFAULT_TARGET) -> tuple[np.ndarray, float]:
        """The unknown-input score of each image (higher: less like the training images) and the threshold
        above which it is unknown, for ``reject_target`` precision among the accepted validation images."""
        self._check_fitted()
        _, scores, threshold = self.predictor_.unknown_scores(list(X), reject_target)
        return scores, threshold

    def predict_or_unknown(self, X: list, reject_target: float = DEFAULT_TARGET) -> np.ndarray:
        """Class names, or ``"unknown"`` for the images whose unknown-input score is above the threshold."""
        self._check_fitted()
        probs, scores, threshold = self.predictor_.unknown_scores(list(X), reject_target)
        return np.where(scores > threshold, UNKNOWN, self.classes_[probs.argmax(1)]).astype(object)

    def save(self, folder: str | Path) -> Path:
        """Write the results folder behind this classifier (weights, preprocessing, classes, calibration,
        metrics, report) to ``folder``; ``load(folder)`` reads it back."""
        self._check_fitted()
        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()):
            raise TransferlabError(f"{folder} is not empty; save into a new folder")
        shutil.copytree(self.model_dir_, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".lock"))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TransferClassifier:
        """A classifier saved with ``save`` (or any results folder of compare or train)."""
        clf = cls()
        clf.model_dir_, clf.predictor_ = Path(folder), Predictor(folder)
        clf.classes_, clf.winner_ = np.array(clf.predictor_.classes), clf.predictor_.folder.parent.name
        return clf

    def _check_fitted(self) -> None:
        if not hasattr(self, "predictor_"):
            raise TransferlabError("this TransferClassifier is not fitted yet: call fit(data) or load(folder)")


def _as_source(X: Any, y: Any, work: Path) -> str:
    """A DATA spec for ``X``: itself, or a CSV written for image files ``X`` with labels ``y``."""
    if y is None:
        if not isinstance(X, str | Path):
            raise TransferlabError("fit(X) needs a DATA spec (folder, CSV, digits ...) or image files with labels y")
        return str(X)
    files, labels = [Path(f).resolve() for f in X], [str(v) for v in y]
    if len(files) != len(labels):
        raise TransferlabError(f"fit(X, y): {len(files)} images but {len(labels)} labels")
    path = work / "labels.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(zip(map(str, files), labels))
    return str(path)
