"""Trained models saved in a results directory: find one, rebuild it offline from its files.

A model folder holds ``model.safetensors`` (weights) and ``model.json`` (backbone name,
preprocessing, head, classes), enough to rebuild the model without a network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import DamagedFileError, TransferlabError
from ..core.layout import ResultsFolder, RunFolder
from ..core.records import RecordError, read_record
from ..experiments.folder import model_folder, results_root
from ..experiments.results import read_metrics
from ..models.heads import TransferModel
from ..models.saved import rebuild_model


@dataclass
class EnsembleMember:
    folder: str  # relative to the ensemble's folder
    weight: float


@dataclass
class EnsembleRecord:
    """ensemble.json: the members of an ensemble and their weights."""

    members: dict[str, EnsembleMember]

    def check(self) -> None:
        if not self.members or any(not 0 < m.weight <= 1 for m in self.members.values()):
            raise RecordError("members", "no members, or a weight outside 0..1")


def redo_hint(folder: Path) -> str:
    """What to do when a file of a results folder is damaged: have --resume write it again."""
    root = results_root(folder)
    if root is None:
        return "rerun the compare or train command that made this folder"
    if root == folder:
        return (f"rerun the same command with --out {root} --resume: finished runs are kept and the file is "
                "written again")
    return (f"delete {folder} and rerun the same command with --out {root} --resume: only that run is "
            "trained again")


def ensemble_members(folder: Path) -> dict[Path, float]:
    """The model folders of an ensemble's members and their weights (from its ensemble.json)."""
    record = read_record(EnsembleRecord, RunFolder(folder).ensemble, redo_hint(folder))
    members = {(folder / m.folder).resolve(): m.weight for m in record.members.values()}
    missing = [f for f in members if not RunFolder(f).model.is_file()]
    if missing:
        raise DamagedFileError(RunFolder(folder).ensemble, f"its member {missing[0]} has no model.json",
                               redo_hint(folder))
    return members


def find_model_dir(run_dir: str | Path, strategy: str | None = None) -> Path:
    """The model folder of a results directory: the named strategy's best seed, or the winner's."""
    run_dir = Path(run_dir)
    if RunFolder(run_dir).model.is_file() or RunFolder(run_dir).is_ensemble():
        return run_dir
    metrics_path = ResultsFolder(run_dir).metrics
    if not metrics_path.is_file():
        raise TransferlabError(f"{run_dir} is not a transferlab results directory (no metrics.json or "
                               "model.json); pass the --out folder of a compare or train run")
    metrics = read_metrics(metrics_path, redo_hint(run_dir))
    name = strategy or metrics.winner
    runs = [r for r in metrics.runs if r.strategy == name]
    if not runs:
        raise TransferlabError(f"{run_dir} has no finished run of strategy {name!r}; it has "
                               f"{', '.join(sorted({r.strategy for r in metrics.runs})) or 'none'}")
    best = max(runs, key=lambda r: r.val_acc)  # chosen on validation, like the winner
    return model_folder(run_dir, name, best.seed)


def load_model(run_dir: str | Path, strategy: str | None = None) -> tuple[TransferModel, dict[str, Any]]:
    """The trained model of a run (eval mode, CPU) and its ``model.json`` information."""
    folder = find_model_dir(run_dir, strategy)
    if RunFolder(folder).is_ensemble():
        raise TransferlabError(f"{folder} is an ensemble of several models, not one model; pick a member with "
                               f"--strategy ({', '.join(p.parent.name for p in ensemble_members(folder))})")
    model, info = rebuild_model(folder, redo_hint(folder))
    info["folder"] = str(folder)
    root = results_root(folder)
    info["run_dir"] = str(root) if root else None
    return model, info
