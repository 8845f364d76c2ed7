"""The one definition of a results folder's layout: the names of its files and of a run's files.

```
<out>/config.yaml      everything needed to rerun (transferlab compare --config <out>/config.yaml)
<out>/manifest.json    versions, seeds, data fingerprint, machine, wall times
<out>/metrics.json     per strategy and seed: test/val accuracy, epochs, seconds; summary mean +- 95% CI
<out>/history.csv      per epoch: strategy, seed, phase, losses, accuracy, seconds
<out>/splits.npz       the labels and the train/val/test indices the runs were trained on
<out>/report.html, report.md, plots/, tensorboard/, mlflow.json
<out>/<strategy>/seed<k>/   a run (``RunFolder``)
```
Every module that reads or writes one of these files takes its path from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    """The files of one run (a strategy with a seed), or of an ensemble of runs."""

    path: Path

    @property
    def result(self) -> Path:
        """result.json: the run's metrics (a finished run)."""
        return self.path / "result.json"

    @property
    def checkpoint(self) -> Path:
        """checkpoint.pt: where an unfinished run is (removed when it finishes)."""
        return self.path / "checkpoint.pt"

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def model(self) -> Path:
        """model.json: backbone, preprocessing, head and classes, enough to rebuild the model offline."""
        return self.path / "model.json"

    @property
    def test_probs(self) -> Path:
        return self.path / "test_probs.npy"

    @property
    def val_probs(self) -> Path:
        return self.path / "val_probs.npy"

    @property
    def train_features(self) -> Path:
        return self.path / "train_features.safetensors"

    @property
    def distances(self) -> Path:
        return self.path / "distances.npz"

    @property
    def unknown(self) -> Path:
        return self.path / "unknown.json"

    @property
    def test_predictions(self) -> Path:
        return self.path / "test_predictions.npy"

    @property
    def calibration(self) -> Path:
        """calibration.json: the temperature fitted on validation, read by predict and export."""
        return self.path / "calibration.json"

    @property
    def ensemble(self) -> Path:
        """ensemble.json: the members and weights, in an ensemble's folder only."""
        return self.path / "ensemble.json"

    def is_ensemble(self) -> bool:
        return self.ensemble.is_file()


@dataclass(frozen=True)
class ResultsFolder:
    """The files of a results folder (the ``--out`` of compare, train and demo)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def splits(self) -> Path:
        return self.path / "splits.npz"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def mlflow(self) -> Path:
        return self.path / "mlflow.json"

    def run(self, strategy: str, seed: int) -> RunFolder:
        """The folder of the run of ``strategy`` with ``seed``."""
        return RunFolder(self.path / strategy / f"seed{seed}")

    def has_runs(self) -> bool:
        """Whether finished or interrupted runs are here (a config.yaml alone is a failed start)."""
        return self.metrics.is_file() or any(self.path.glob("*/seed*/result.json")) or \
            any(self.path.glob("*/seed*/checkpoint.pt"))

    @staticmethod
    def containing(folder: Path) -> ResultsFolder | None:
        """The results folder (the one holding config.yaml) that ``folder`` is or lies in, if any."""
        return next((r for r in map(ResultsFolder, (folder, *folder.parents)) if r.config.is_file()), None)
