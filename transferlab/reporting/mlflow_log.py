"""MLflow records of a compare (``--mlflow [URI]``, the optional extra ``transferlab[mlflow]``).

One parent run per compare (the settings as params, the winner's scores, report.html, metrics.json,
config.yaml and the winner's confusion matrix as artifacts) and one child run per strategy and seed
(its settings, the per-epoch losses and validation accuracy with the epoch as step, its final test
scores). The epochs are logged as they end (``MlflowLog``), the rest when the compare ends; a resumed
compare replaces the runs it logged before (their ids are kept in ``<out>/mlflow.json`` from the
start) rather than logging them twice.

The default store is local and needs no server: ``sqlite:///<out>/mlflow/mlflow.db`` with artifacts
under ``<out>/mlflow/artifacts`` (MLflow 3 keeps its plain-file store in maintenance mode and points
to SQLite). Only ``MlflowClient`` is used, never the fluent API, so the caller's process keeps no
active run, tracking URI or logging level of ours.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import TransferlabError
from ..core.io import read_json, write_json
from ..core.layout import ResultsFolder
from ..core.progress import warn
from .plots import confusion_figure
from .tracking import flat_settings, runs_seed

DEFAULT = "default"  # what ``--mlflow`` without a URI stands for
EXPERIMENT = "transferlab"
_INSTALL = "pip install 'transferlab[mlflow]'"


def store_uri(out: Path, uri: str | None) -> str:
    """The tracking URI ``uri`` names; the default store lives in the results folder."""
    if uri in (None, "", DEFAULT):
        return f"sqlite:///{(Path(out) / 'mlflow' / 'mlflow.db').resolve()}"
    return uri


def mlflow_ui_command(uri: str) -> str:
    """The command that shows a local store: ``mlflow ui``, which needs MLflow's server (flask); where
    only mlflow-skinny is installed, the install comes first."""
    import importlib.util

    ui = f"mlflow ui --backend-store-uri {uri}"
    if importlib.util.find_spec("flask") is None:
        return f"pip install 'transferlab[mlflow]' && {ui}  (the UI needs MLflow's server, which is not installed)"
    return ui


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow and its database layer log every table migration at INFO; hush them while we call,
    then put the levels back as they were."""
    loggers = [logging.getLogger(n) for n in ("mlflow", "alembic", "sqlalchemy")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _client(out: Path, uri: str | None) -> tuple[Any, str]:
    """An MlflowClient on the store and the id of the transferlab experiment there (created, with
    artifacts beside a local default store); a missing package or an unreachable store is an error
    that says what to do."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TransferlabError(f"--mlflow needs MLflow, which is not installed: {_INSTALL}") from None
    resolved = store_uri(out, uri)
    local = uri in (None, "", DEFAULT)
    if local:
        (Path(out) / "mlflow").mkdir(parents=True, exist_ok=True)
    try:
        with _quiet_mlflow():
            client = MlflowClient(tracking_uri=resolved)
            found = client.get_experiment_by_name(EXPERIMENT)
            if found is not None:
                return client, found.experiment_id
            where = (Path(out) / "mlflow" / "artifacts").resolve().as_uri() if local else None
            return client, client.create_experiment(EXPERIMENT, artifact_location=where)
    except TransferlabError:
        raise
    except Exception as exc:  # MLflow raises many kinds (bad scheme, no server, no database driver)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TransferlabError(f"--mlflow {resolved}: the tracking store cannot be opened ({first}); "
                               "give a reachable URI, or --mlflow alone for a local store in --out") from None


def client_for(out: Path, uri: str | None) -> Any:
    """An MLflow client of the store ``uri`` names for the results folder ``out``."""
    return _client(out, uri)[0]


def check_store(out: Path, uri: str | None) -> None:
    """Fail now, before any training, if the store named by ``uri`` cannot be used."""
    _client(out, uri)


_KEY = re.compile(r"[^0-9A-Za-z_\-. /:]")


def _key(name: str) -> str:
    """A metric or param name MLflow accepts (class names may hold any character)."""
    return _KEY.sub("_", name)


def _params(settings: dict[str, Any]) -> dict[str, str]:
    """The settings as TensorBoard's hparams show them, as MLflow's param names and strings."""
    return {_key(k): str(v)[:500] for k, v in flat_settings(settings).items()}  # 500: MLflow's limit on a value


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _final_metrics(run: dict[str, Any]) -> dict[str, float]:
    """A run's end-of-training numbers: accuracies, loss, time, its test scores and calibration,
    precision/recall/F1 per class."""
    metrics = {k: run[k] for k in ("test_acc", "test_loss", "seconds", "epochs") if _finite(run.get(k))}
    if _finite(run.get("val_acc")):  # the kept weights' (val_acc itself is the per-epoch curve)
        metrics["final_val_acc"] = run["val_acc"]
    for k, v in run.get("scores", {}).items():
        if k == "per_class":
            for cls, row in v.items():
                metrics.update({_key(f"per_class/{cls}/{m}"): x for m, x in row.items()
                                if m != "support" and _finite(x)})
        elif k != "accuracy" and _finite(v):  # accuracy is test_acc already
            # test-set scores carry the prefix; the calibration numbers (temperature, ece) are named as they are
            metrics[_key(f"test_{k}" if k.endswith(("accuracy", "f1")) else k)] = v
    return {k: float(v) for k, v in metrics.items()}


def _epoch_metrics(history: list[dict[str, Any]], since: int = 0) -> list[tuple[str, float, int]]:
    """(name, value, step) of every epoch's losses and validation accuracy, also per phase; the first
    ``since`` epochs (logged already) left out."""
    out = []
    for step, h in enumerate(history, start=1):
        if step <= since:
            continue
        for key in ("train_loss", "val_loss", "val_acc"):
            if _finite(h.get(key)):
                out += [(key, float(h[key]), step), (_key(f"phase/{h['phase']}/{key}"), float(h[key]), step)]
    return out


def _log_metrics(client: Any, run_id: str, metrics: list[tuple[str, float, int]]) -> None:
    """Log (name, value, step) triples, in batches of MLflow's limit per call."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)  # MLflow's timestamps are wall-clock milliseconds
    items = [Metric(k, v, stamp, step) for k, v, step in metrics]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i:i + 1000])


def _forget_earlier(client: Any, out: Path, resolved: str) -> None:
    """Delete the runs an earlier logging of this results folder made in the same store."""
    record = ResultsFolder(out).mlflow
    if not record.is_file():
        return
    earlier = read_json(record, "run transferlab compare --resume again")
    if earlier.get("uri") != resolved:
        return
    for run_id in earlier.get("runs", []):
        with contextlib.suppress(Exception):  # already deleted by the user: nothing to replace
            client.delete_run(run_id)


class MlflowLog:
    """The MLflow records of one compare, written while it runs.

    Made when the compare starts: earlier runs of this results folder in the same store are deleted,
    the parent run is created with the settings, and ``<out>/mlflow.json`` lists it at once, so that a
    compare killed half-way is replaced, not doubled, when it is resumed. ``on_epoch(strategy, seed)``
    gives the callback that logs a run's epochs as they end (its child run is created on the first
    call); ``finish`` logs the runs that were not seen live (finished before a resume, trained by
    another process of a torchrun job, the ensemble), every run's final scores, the winner's confusion
    matrix and the report. If the store fails during training, the compare goes on and the rest is
    logged by ``finish``.
    """

    def __init__(self, out: Path, uri: str | None, settings: dict[str, Any]):
        self.out = Path(out)
        self.client, self.experiment = _client(self.out, uri)
        self.resolved = store_uri(self.out, uri)
        self.params = _params(settings)
        self.children: dict[tuple[str, int], str] = {}  # (strategy, seed) -> child run id
        self.steps: dict[str, int] = {}  # child run id -> epochs logged
        self.failed: str | None = None
        with _quiet_mlflow():
            _forget_earlier(self.client, self.out, self.resolved)
            self.parent = self.client.create_run(
                self.experiment, run_name=self.out.resolve().name,
                tags={"transferlab.results": str(self.out.resolve())}).info.run_id
            self.client.log_batch(self.parent, params=_param_list(self.params))
        self._record()

    def _record(self) -> None:
        write_json(ResultsFolder(self.out).mlflow, {"uri": self.resolved, "experiment_id": self.experiment,
                                                    "runs": [self.parent, *self.children.values()]})

    def _child(self, strategy: str, seed: int) -> str:
        key = (strategy, seed)
        if key not in self.children:
            run = self.client.create_run(self.experiment, run_name=f"{strategy}-seed{seed}",
                                         tags={"mlflow.parentRunId": self.parent, "transferlab.strategy": strategy})
            self.children[key] = run.info.run_id
            self.client.log_batch(run.info.run_id, params=_param_list({**self.params, "strategy": strategy,
                                                                        "seed": str(seed)}))
            self._record()
        return self.children[key]

    def on_epoch(self, strategy: str, seed: int) -> Callable[[list[dict[str, Any]]], None]:
        """The ``train_one`` callback that logs the run's new epochs (history rows) to its child run."""
        def log(history: list[dict[str, Any]]) -> None:
            if self.failed:
                return
            try:
                with _quiet_mlflow():
                    child = self._child(strategy, seed)
                    done = self.steps.get(child, 0)
                    _log_metrics(self.client, child, _epoch_metrics(history, since=done))
                    self.steps[child] = len(history)
            except Exception as exc:  # noqa: BLE001 - the store went away: training goes on, finish logs the rest
                self.failed = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                warn(f"MLflow stopped answering ({self.failed}); the runs will be logged when the compare ends")
        return log

    def finish(self, runs: list[dict[str, Any]], winner: str | None,
               confusion: tuple[np.ndarray, list[str]] | None = None) -> str:
        """Log what the runs left to log and close every run; returns the parent run's id."""
        with _quiet_mlflow():
            for run in runs:
                child = self._child(run["strategy"], run["seed"])
                history = run.get("history", [])
                final = [(k, v, 0) for k, v in _final_metrics(run).items()]
                _log_metrics(self.client, child, _epoch_metrics(history, since=self.steps.get(child, 0)) + final)
                self.steps[child] = len(history)
                if confusion is not None and (run["strategy"], run["seed"]) == (winner, runs_seed(runs, winner)):
                    self.client.log_figure(child, confusion_figure(*confusion, f"{winner}: test set"),
                                           "confusion_test.png")
                self.client.set_terminated(child)
            best = next((r for r in runs if r["strategy"] == winner), None)
            if best is not None:
                _log_metrics(self.client, self.parent, [(f"winner_{k}", v, 0) for k, v in _final_metrics(best).items()
                                                        if "/" not in k])
            self.client.set_tag(self.parent, "transferlab.winner", str(winner))
            folder = ResultsFolder(self.out)
            for path in (folder.report_html, folder.report_md, folder.metrics, folder.config):
                if path.is_file():
                    self.client.log_artifact(self.parent, str(path))
            self.client.set_terminated(self.parent)
        self._record()
        return self.parent


def _param_list(params: dict[str, str]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, v) for k, v in params.items()]
