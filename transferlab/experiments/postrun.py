"""What a compare does once its runs are trained: the ensemble of each seed's runs, temperature
scaling of every run, and the TensorBoard records. Each reads the runs' saved probabilities, so it
can be redone on resume at no training cost."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from ..core.io import write_json
from ..core.layout import RunFolder
from ..core.progress import console, warn
from ..reporting.mlflow_log import MlflowLog
from ..reporting.tracking import write_tensorboard
from ..train.calibration import Calibration, expected_calibration_error, fit_temperature, scale
from ..train.novelty import fit_rule
from ..train.records import RunDetails
from ..train.run import Prepared, RunResult, load_probabilities, save_predictions
from ..train.scores import classification_scores
from .ensemble import ENSEMBLE, fit_ensemble
from .folder import model_folder


def ensemble_run(out: Path, prep: Prepared, seed: int, done: list[RunResult], quiet: bool) -> list[RunResult]:
    """The ensemble of this seed's runs (experiments.ensemble), written like a run's folder."""
    if not quiet:
        console.print(f"[bold]{ENSEMBLE}[/bold] seed {seed}")
    members = {r.strategy: model_folder(out, r.strategy, seed) for r in done if r.seed == seed}
    labels = prep.dataset.labels
    fit = fit_ensemble(members, labels[prep.splits["val"]], labels[prep.splits["test"]], seed)
    if fit is None:
        warn(f"{ENSEMBLE} seed {seed}: fewer than two runs saved their probabilities (made by an older version?); "
             "left out")
        return []
    folder = RunFolder(model_folder(out, ENSEMBLE, seed))
    folder.path.mkdir(parents=True, exist_ok=True)
    write_json(folder.ensemble, {"members": {n: {"folder": f"../../{n}/seed{seed}", "weight": w}
                                             for n, w in fit.weights.items()}})
    save_predictions(folder.path, fit.test_probs, fit.val_probs)
    seconds = sum(r.seconds for r in done if r.seed == seed and r.strategy in fit.weights)
    result = RunResult(ENSEMBLE, seed, fit.test_acc, fit.val_acc, fit.test_loss, 0, seconds,
                       details=RunDetails(weights={n: round(w, 3) for n, w in fit.weights.items()}),
                       scores=classification_scores(fit.test_probs, labels[prep.splits["test"]], prep.dataset.classes))
    write_json(folder.result, result.to_dict())
    return [result]


def calibrate_runs(out: Path, prep: Prepared, results: list[RunResult]) -> None:
    """Temperature scaling for every run, fitted on its validation probabilities (calibration.json in
    its folder, read by predict); the test ECE before and after goes into its scores."""
    labels = prep.dataset.labels
    y_val, y_test = labels[prep.splits["val"]], labels[prep.splits["test"]]
    k = len(prep.dataset.classes)
    for r in results:
        folder = RunFolder(model_folder(out, r.strategy, r.seed))
        if not folder.val_probs.is_file() or not folder.test_probs.is_file():
            continue
        t = fit_temperature(load_probabilities(folder.val_probs, len(y_val), k), y_val)
        test = load_probabilities(folder.test_probs, len(y_test), k)
        info = Calibration(round(t, 4), expected_calibration_error(test, y_test),
                           expected_calibration_error(scale(test, t), y_test))
        write_json(folder.calibration, dataclasses.asdict(info))
        r.scores.update(dataclasses.asdict(info))
        r.scores.update(_unknown_rule(folder, scale(load_probabilities(folder.val_probs, len(y_val), k), t), y_val,
                                      scale(test, t), y_test))


def _unknown_rule(folder: RunFolder, val: np.ndarray, y_val: np.ndarray, test: np.ndarray,
                  y_test: np.ndarray) -> dict[str, float]:
    """unknown.json: the unknown-input rule fitted on validation (calibrated probabilities, and the
    distances to the training features when the run saved them); returns what it does on test."""
    distances, power = None, 1.0
    if folder.distances.is_file():
        with np.load(folder.distances) as saved:
            if saved["val"].shape == y_val.shape and saved["test"].shape == y_test.shape:
                distances = (saved["val"], saved["test"])
            # Runs saved before the distance's power normalisation have no power: their features are raw.
            power = float(saved["power"]) if "power" in saved.files else 1.0
    rule = fit_rule(val, y_val, None if distances is None else distances[0], feature_power=power)
    write_json(folder.unknown, rule.to_dict())
    accepted = rule.score(test, None if distances is None else distances[1]) <= rule.threshold
    right = test.argmax(1) == y_test
    found = {"unknown_test_rejected": float(1 - accepted.mean())}
    if accepted.any():
        found["unknown_test_accuracy_accepted"] = float(right[accepted].mean())
    return found


def track_runs(out: Path, settings: dict[str, Any], prep: Prepared, results: list[RunResult], winner: str,
               mlflow: MlflowLog | None = None) -> None:
    """TensorBoard event files of every run, with the winner's test confusion matrix (and the same
    in MLflow, whose log the compare kept open while it ran, when there is one)."""
    seed = next(r.seed for r in results if r.strategy == winner)
    preds = RunFolder(model_folder(out, winner, seed)).test_predictions
    classes = prep.dataset.classes
    confusion = None
    if preds.is_file():
        y = prep.dataset.labels[prep.splits["test"]]
        confusion = (confusion_matrix(y, np.load(preds), labels=range(len(classes))), classes)
    runs = [r.to_dict() for r in results]
    write_tensorboard(out, settings, runs, winner, confusion)
    if mlflow is not None:
        mlflow.finish(runs, winner, confusion)
