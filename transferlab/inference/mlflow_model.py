"""The winner as an MLflow model: ``mlflow.pyfunc.load_model(...)`` gives back ``predict``'s calibrated
probabilities, one column per class, for a DataFrame of image paths (column ``path``, or the first)
or a list of paths."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from ..core.io import read_json
from ..core.layout import ResultsFolder, RunFolder
from ..reporting.mlflow_log import client_for
from .saved import find_model_dir

ARTIFACT = "model"


class TransferlabModel(mlflow.pyfunc.PythonModel):
    """A results folder's model folder behind MLflow's ``pyfunc`` interface."""

    def load_context(self, context: Any) -> None:
        from .predict import Predictor

        self.predictor = Predictor(context.artifacts["model_dir"])

    # No type hints here: MLflow reads them as the model's input schema (and warns that Any is none).
    def predict(self, context, model_input, params=None):
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            column = "path" if "path" in model_input.columns else model_input.columns[0]
            paths = [str(p) for p in model_input[column]]
        else:
            paths = [str(p) for p in model_input]
        return pd.DataFrame(self.predictor.probabilities(paths), columns=self.predictor.classes)


def _model_files(model_dir: Path) -> list[Path]:
    """What the model needs: weights, model.json, calibration, the unknown-input rule and its features
    (an ensemble: its record and its members' folders are resolved by the Predictor from the results)."""
    run = RunFolder(model_dir)
    return [p for p in (run.weights, run.model, run.calibration, run.unknown, run.train_features) if p.is_file()]


def log_winner(out: str | Path, uri: str | None) -> bool:
    """Log the winner of the compare in ``out`` as a pyfunc model under its parent MLflow run's ``model``
    artifact (the run that ``--mlflow`` made, named in mlflow.json); False for an ensemble (its members
    live in other folders)."""
    import shutil

    model_dir = find_model_dir(out)
    if RunFolder(model_dir).is_ensemble():
        return False
    client, run_id = client_for(Path(out), uri), read_json(ResultsFolder(out).mlflow)["runs"][0]
    with tempfile.TemporaryDirectory(prefix="transferlab-mlflow-") as tmp:
        files = Path(tmp) / "files"
        files.mkdir()
        for f in _model_files(model_dir):
            shutil.copy2(f, files / f.name)
        target = Path(tmp) / ARTIFACT
        mlflow.pyfunc.save_model(str(target), python_model=TransferlabModel(), artifacts={"model_dir": str(files)},
                                 pip_requirements=["transferlab"])
        client.log_artifacts(run_id, str(target), ARTIFACT)
    return True
