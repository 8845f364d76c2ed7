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
import json
import math
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from ..core.errors import TransferlabError
from ..core.layout import ResultsFolder
from ..experiments.compare import CompareConfig, compare
from ..experiments.experiment import load_experiment
from ..experiments.folder import results_root
from ..models.backbone import DEFAULT_BACKBONE
from ..train.config import BudgetConfig, DataConfig, ModelConfig, RuntimeConfig, TrainConfig
from ..train.novelty import DEFAULT_TARGET
from .inputs import image_list
from .predict import UNKNOWN, Predictor

AUTO = ("probe", "finetune", "ensemble")


class NotFitted(NotFittedError, TransferlabError):
    """Raised by ``predict`` and friends before ``fit`` or ``load`` (scikit-learn's ``NotFittedError``)."""


class TransferClassifier(ClassifierMixin, BaseEstimator):
    """Transfer learning behind ``fit`` / ``predict`` / ``predict_proba``.

    Parameters
    ----------
    backbone : str
        A name from ``transferlab backbones`` (default: the offline EfficientNet-Lite0).
    strategy : str
        A strategy name, a comma-separated list (the winner on validation is kept), or ``"auto"``
        (probe, finetune and their ensemble).
    image_size : int or None
        Input size instead of the backbone's own.
    max_epochs : int or None
        Cap on every phase's epochs.
    seed : int
        The run's seed (and the split's).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` ...
    out : str or None
        Keep the results folder (metrics, report, weights, model card) there. Default: a temporary
        folder, removed when the classifier is garbage collected (``save`` keeps a copy).
    resume : bool
        Continue an interrupted ``fit`` into the same ``out`` (finished runs are kept).
    verbose : bool
        Progress output.

    Attributes
    ----------
    classes_ : ndarray of str
        The class names, in the order of ``predict_proba``'s columns.
    winner_ : str
        The strategy kept (chosen on validation).
    scores_ : dict
        Test and validation accuracy of every strategy compared.
    model_dir_ : Path
        The model folder predictions come from.
    report_ : Path or None
        The comparison's HTML report.

    Examples
    --------
    >>> clf = TransferClassifier(strategy="probe").fit("photos/")            # doctest: +SKIP
    >>> clf.predict("new.jpg")                                             # doctest: +SKIP
    array(['tulips'], dtype='<U6')
    >>> clf.fit(df, label="label", path="path")                             # doctest: +SKIP
    >>> TransferClassifier.load("model/").predict_proba([pil_image, array])  # doctest: +SKIP
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, strategy: str = "auto",  # noqa: PLR0913 - sklearn style
                 image_size: int | None = None, max_epochs: int | None = None, seed: int = 0, device: str = "auto",
                 out: str | None = None, resume: bool = False, verbose: bool = False):
        self.backbone, self.strategy, self.image_size, self.max_epochs = backbone, strategy, image_size, max_epochs
        self.seed, self.device, self.out, self.resume, self.verbose = seed, device, out, resume, verbose

    def _config(self) -> TrainConfig:
        return TrainConfig(model=ModelConfig(backbone=self.backbone, image_size=self.image_size),
                           budget=BudgetConfig(max_epochs=self.max_epochs), runtime=RuntimeConfig(device=self.device))

    def fit(self, X: Any, y: Any = None, label: str | None = None, path: str = "path") -> TransferClassifier:
        """Train and keep the winner.

        Parameters
        ----------
        X : str, Path, list or DataFrame
            A DATA spec (folder, CSV, ``digits`` ...); or image files with labels ``y``; or a table
            (pandas DataFrame or a dict of columns) with the files in column ``path`` and the labels in
            column ``label``.
        y : list, optional
            The labels of the files ``X``; an empty, None or NaN label is refused with its row.
        """
        strategies = AUTO if self.strategy == "auto" else tuple(s.strip() for s in str(self.strategy).split(","))
        config, plan = self._config(), CompareConfig(strategies=strategies, seeds=1)  # bad settings stop here
        DataConfig("digits", split_seed=self.seed)  # the seed checked now; the real source is known below
        if label is not None:
            X, y = _columns(X, path, label)
        work = Path(tempfile.mkdtemp(prefix="transferlab-"))
        try:
            source = _as_source(X, y, work)
            out = Path(self.out) if self.out else work / "results"
            metrics = compare(DataConfig(source, split_seed=self.seed), config, out, plan, quiet=not self.verbose,
                              command="TransferClassifier.fit", resume=bool(self.resume and self.out))
            self._keep(out, work)
            self._read_scores(metrics)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self

    def _read_scores(self, metrics: dict) -> None:
        self.winner_ = metrics["winner"]
        self.scores_ = {r["strategy"]: {"test_acc": r["test_acc"], "val_acc": r["val_acc"]} for r in metrics["runs"]}
        report = ResultsFolder(results_root(self.model_dir_) or self.model_dir_).report_html
        self.report_ = report if report.is_file() else None

    def _keep(self, out: Path, work: Path) -> None:
        """Keep the results folder (moved out of the temporary one unless ``out`` was given; removed with
        the classifier) and load its winner."""
        if not self.out:
            self.model_dir_ = Path(tempfile.mkdtemp(prefix="transferlab-model-"))
            shutil.copytree(out, self.model_dir_, dirs_exist_ok=True)
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.model_dir_), True)
        else:
            self.model_dir_ = out
        shutil.rmtree(work, ignore_errors=True)
        self.predictor_ = Predictor(self.model_dir_)
        self.classes_ = np.array(self.predictor_.classes)

    def predict_proba(self, X: list) -> np.ndarray:
        """Calibrated class probabilities (N, classes) for one image or a list (paths, PIL images, arrays or
        tensors: HWC or CHW, uint8 or float in 0..1, grayscale, RGB or RGBA)."""
        self._check_fitted()
        return self.predictor_.probabilities(image_list(X))

    def predict(self, X: list) -> np.ndarray:
        """Class names (N,) for one image or a list of them (as ``predict_proba`` takes)."""
        probs = self.predict_proba(X)  # checks that it is fitted first
        return self.classes_[probs.argmax(1)]

    def unknown_score(self, X: list, reject_target: float = DEFAULT_TARGET) -> tuple[np.ndarray, float]:
        """The unknown-input score of each image (higher: less like the training images) and the threshold
        above which it is unknown, for ``reject_target`` precision among the accepted validation images."""
        self._check_fitted()
        _, scores, threshold = self.predictor_.unknown_scores(image_list(X), reject_target)
        return scores, threshold

    def predict_or_unknown(self, X: list, reject_target: float = DEFAULT_TARGET) -> np.ndarray:
        """Class names, or ``"unknown"`` for the images whose unknown-input score is above the threshold."""
        self._check_fitted()
        probs, scores, threshold = self.predictor_.unknown_scores(image_list(X), reject_target)
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
        """A classifier saved with ``save`` (or any results folder of compare or train), with the parameters
        it was fitted with and its scores."""
        folder = Path(folder)
        root = results_root(folder) or folder
        clf = cls(**_params_of(ResultsFolder(root).config))
        clf.model_dir_, clf.predictor_ = folder, Predictor(folder)
        clf.classes_ = np.array(clf.predictor_.classes)
        metrics = ResultsFolder(root).metrics
        if metrics.is_file():
            clf._read_scores(json.loads(metrics.read_text()))
        else:
            clf.winner_, clf.scores_, clf.report_ = clf.predictor_.folder.parent.name, {}, None
        return clf

    def _check_fitted(self) -> None:
        if not hasattr(self, "predictor_"):
            raise NotFitted("this TransferClassifier is not fitted yet: call fit(data) or load(folder)")


def _params_of(config: Path) -> dict[str, Any]:
    """The constructor's parameters recorded in a results folder's config.yaml (defaults where absent)."""
    if not config.is_file():
        return {}
    exp = load_experiment(config)
    strategies = ",".join(s for s in exp.compare.strategies)
    return {"backbone": exp.train.model.backbone, "image_size": exp.train.model.image_size,
            "max_epochs": exp.train.budget.max_epochs, "seed": exp.data.split_seed, "device": exp.train.runtime.device,
            "strategy": "auto" if tuple(exp.compare.strategies) == AUTO else strategies}


def _columns(table: Any, path: str, label: str) -> tuple[list, list]:
    """The files and labels of a DataFrame (or a dict of columns)."""
    try:
        return list(table[path]), list(table[label])
    except (KeyError, TypeError, IndexError):
        raise TransferlabError(f"fit(table, label={label!r}, path={path!r}): the table has no column {path!r} or "
                               f"{label!r}") from None


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() in ("", "nan")


def _as_source(X: Any, y: Any, work: Path) -> str:
    """A DATA spec for ``X``: itself, or a CSV written for image files ``X`` with labels ``y``."""
    if y is None:
        if not isinstance(X, str | Path):
            raise TransferlabError("fit(X) needs a DATA spec (folder, CSV, digits ...) or image files with labels y")
        return str(X)
    files, y = [Path(f).resolve() for f in X], list(y)
    empty = next((k for k, v in enumerate(y) if _missing(v)), None)
    if empty is not None:
        raise TransferlabError(f"fit: row {empty} ({files[empty] if empty < len(files) else '?'}) has no label "
                               f"({y[empty]!r}); label it or leave it out")
    labels = [str(v) for v in y]
    if len(files) != len(labels):
        raise TransferlabError(f"fit(X, y): {len(files)} images but {len(labels)} labels")
    path = work / "labels.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(zip(map(str, files), labels))
    return str(path)
