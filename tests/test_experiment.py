import csv
import json
import shutil
import sys

import numpy as np
import pytest

from conftest import make_class_folders
from transferlab.cli import main
from transferlab.core.errors import DataError, TransferlabError
from transferlab.inference import export
from transferlab.inference.export import export_model
from transferlab.inference.predict import predict


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """compare with two strategies x two seeds on a tiny synthetic set (test_tiny backbone)."""
    root = tmp_path_factory.mktemp("cmp")
    data = make_class_folders(root / "data", n_per_class=10, n_classes=3)
    out = root / "out"
    code = main(["compare", "--data", str(data), "--backbone", "test_tiny", "--strategies", "features,finetune",
                 "--seeds", "2", "--out", str(out), "--max-epochs", "6", "--views", "2", "--batch-size", "8",
                 "--quiet", "--mlflow"])
    assert code == 0
    return data, out


def test_compare_writes_every_file(compared):
    _, out = compared
    for name in ("config.yaml", "manifest.json", "metrics.json", "history.csv", "report.html", "report.md",
                 "plots/accuracy.png", "plots/curves.png", "plots/confusion.png"):
        assert (out / name).is_file(), name
    for strategy in ("features", "finetune"):
        for seed in (0, 1):
            assert (out / strategy / f"seed{seed}" / "model.safetensors").is_file()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<img" in html and "plots/" not in html


def test_metrics_agree_with_history(compared):
    _, out = compared
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(metrics["runs"]) == 4
    for run in metrics["runs"]:
        mine = [r for r in rows if r["strategy"] == run["strategy"] and int(r["seed"]) == run["seed"]]
        assert len(mine) == run["epochs"]
        # The recorded validation accuracy is that of the restored best weights: one the history saw
        # (or the phase's starting point, which is the previous phase's best).
        assert run["val_acc"] <= max(float(r["val_acc"]) for r in mine) + 1e-6
    s = metrics["summary"]["finetune"]
    accs = [r["test_acc"] for r in metrics["runs"] if r["strategy"] == "finetune"]
    assert s["test_acc"] == pytest.approx(np.mean(accs)) and s["seeds"] == 2
    assert s["test_acc_ci95"] >= 0
    assert metrics["winner"] in ("features", "finetune")


def test_predict_reproduces_recorded_test_accuracy(compared):
    data, out = compared
    metrics = json.loads((out / "metrics.json").read_text())
    splits = np.load(out / "splits.npz")
    from transferlab.data import load_dataset

    ds = load_dataset(data)
    test = splits["test"]
    for strategy in ("features", "finetune"):
        # The recorded accuracy counts every image's most probable class: no "unknown" answers here.
        results = predict(out, [ds.paths[i] for i in test], strategy=strategy, reject_target=0)
        acc = np.mean([r["label"] == ds.classes[ds.labels[i]] for r, i in zip(results, test)])
        best = max(r["test_acc"] for r in metrics["runs"] if r["strategy"] == strategy)
        assert acc == pytest.approx(best, abs=1e-6), strategy


def test_predict_command_and_bad_inputs(compared, tmp_path, capsys):
    data, out = compared
    assert main(["predict", str(out), str(data / "class_0"), "--json", "--top-k", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 10 and len(rows[0]["top"]) == 2
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no image files"):
        predict(out, [tmp_path / "empty"])
    with pytest.raises(DataError, match="not a readable image"):
        predict(out, [tmp_path / "notes.txt"])
    with pytest.raises(TransferlabError, match="not a transferlab results directory"):
        predict(tmp_path, [tmp_path / "notes.txt"])


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity(compared, fmt):
    _, out = compared
    done = export_model(out, fmt)
    assert done.path.is_file() and done.max_abs_diff <= 1e-4


def test_export_parity_check_fails_loudly(compared, monkeypatch):
    _, out = compared
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)  # any difference, even 0, is now too much
    with pytest.raises(TransferlabError, match="differs from predict"):
        export_model(out, "torchscript")


def test_compare_resume_skips_finished_runs(compared, tmp_path):
    data, _ = compared
    out = tmp_path / "out"
    args = ["compare", "--data", str(data), "--backbone", "test_tiny", "--strategies", "features", "--out", str(out),
            "--max-epochs", "3", "--quiet"]
    assert main(args) == 0
    stamp = (out / "features" / "seed0" / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 2  # refuses to overwrite without --resume
    assert main([*args, "--resume"]) == 0
    assert (out / "features" / "seed0" / "model.safetensors").stat().st_mtime_ns == stamp


def test_scratch_gets_the_time_of_the_slowest_pretrained_strategy(class_folders, tmp_path):
    out = tmp_path / "out"
    assert main(["compare", "--data", str(class_folders), "--backbone", "test_tiny", "--strategies",
                 "scratch,features", "--max-epochs", "8", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    runs = {r["strategy"]: r for r in m["runs"]}
    assert [r["strategy"] for r in m["runs"]] == ["scratch", "features"]  # shown in the order asked for
    assert runs["scratch"]["details"]["budget_s"] == pytest.approx(runs["features"]["seconds"], abs=0.1)
    assert "budget_s" not in runs["features"]["details"]


def test_a_time_budget_stops_training_between_epochs(class_folders, tmp_path, monkeypatch):
    import time

    import torch

    from transferlab.models import Backbone, GroupedNet, HeadSpec, TransferModel
    from transferlab.runtime import Precision
    from transferlab.train import engine
    from transferlab.train.batches import TensorBatches
    from transferlab.train.strategies import Gradient, Phase

    # The engine: a deadline that has passed stops the phase before its next epoch.
    empty = Backbone("none", GroupedNet({}, torch.nn.Identity(), torch.nn.Identity(), 4), {}, [], 4)
    model = TransferModel(empty, 2, HeadSpec(hidden=()))
    data = TensorBatches(torch.randn(1, 16, 4), torch.arange(16) % 2, level=1)
    result = engine.fit_phase(model, Phase("head", ("head",), Gradient(max_epochs=50)), data, data,
                              engine.PhaseContext(Precision.choose("cpu"), quiet=True, deadline=time.perf_counter()))
    assert result.budget_cut and result.history == []
    # The command line: --time-budget reaches the run, and a run it cuts is marked in the results and
    # the report (the clock is made to run out at once, so that the test does not depend on speed).
    monkeypatch.setattr(engine, "_past", lambda ctx: True)
    out = tmp_path / "out"
    assert main(["compare", "--data", str(class_folders), "--backbone", "test_tiny", "--strategies", "scratch",
                 "--time-budget", "30", "--out", str(out), "--quiet"]) == 0
    run = json.loads((out / "metrics.json").read_text())["runs"][0]
    assert run["details"]["budget_s"] == 30 and run["details"]["budget_cut"] == "all" and run["epochs"] == 0
    assert "time budget" in (out / "report.md").read_text()


def test_the_winner_is_chosen_on_validation_not_on_test():
    from transferlab.experiments.results import winner

    summary = {"a": {"test_acc": 0.90, "val_acc": 0.70, "seconds": 1.0},
               "b": {"test_acc": 0.80, "val_acc": 0.75, "seconds": 9.0}}
    assert winner(summary) == "b"


def test_ensemble_is_chosen_on_validation_and_predicts(class_folders, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", "--data", str(class_folders), "--backbone", "test_tiny", "--strategies",
                 "features,probe,ensemble", "--max-epochs", "5", "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    ens = next(r for r in m["runs"] if r["strategy"] == "ensemble")
    weights = ens["details"]["weights"]
    assert set(weights) <= {"features", "probe"} and abs(sum(weights.values()) - 1) < 0.01
    assert ens["test_acc"] > 0.5  # three easy colour classes
    capsys.readouterr()
    img = next((class_folders / "class_2").iterdir())
    assert main(["predict", str(out), str(img), "--strategy", "ensemble", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] in {"class_0", "class_1", "class_2"}
    assert main(["export", str(out), "--strategy", "ensemble"]) == 2  # no single model to export


def test_ensemble_selection_prefers_the_better_member():
    from transferlab.experiments.ensemble import cross_fitted_accuracy, select_weights

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    good = np.full((200, 3), 0.1)
    good[np.arange(200), y] = 0.8
    noise = rng.dirichlet(np.ones(3), 200)
    weights = select_weights({"good": good, "noise": noise}, y)
    assert weights.get("good", 0) > 0.5
    assert cross_fitted_accuracy({"good": good, "noise": noise}, y) > 0.9


def test_top_k_is_quoted_only_well_below_the_number_of_classes():
    from transferlab.train.scores import classification_scores

    rng = np.random.default_rng(0)
    probs, y = rng.dirichlet(np.ones(10), 50), rng.integers(0, 10, 50)
    assert "top5_accuracy" in classification_scores(probs, y, [str(k) for k in range(10)])
    five = classification_scores(probs[:, :5] / probs[:, :5].sum(1, keepdims=True), y % 5, list("abcde"))
    assert "top2_accuracy" in five and "top4_accuracy" not in five


def test_metrics_quote_balanced_accuracy_macro_f1_top_k_and_per_class_scores(compared):
    _, out = compared
    m = json.loads((out / "metrics.json").read_text())
    for run in m["runs"]:
        s = run["scores"]
        assert s["accuracy"] == pytest.approx(run["test_acc"], abs=1e-6)
        assert 0 <= s["balanced_accuracy"] <= 1 and 0 <= s["macro_f1"] <= 1
        assert not any(k.startswith("top") for k in s)  # top-2 of 3 classes says little: not quoted
        assert set(s["per_class"]) == {"class_0", "class_1", "class_2"}
        assert sum(c["support"] for c in s["per_class"].values()) == 6  # the test split
    assert "macro_f1" in m["summary"]["features"]
    report = (out / "report.md").read_text()
    assert "balanced accuracy" in report and "macro-F1" in report and "precision" in report


def test_temperature_scaling_fixes_overconfidence():
    from transferlab.train.calibration import expected_calibration_error, fit_temperature, scale

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 2000)
    pred = np.where(rng.random(2000) < 0.7, y, (y + 1) % 4)  # right 70% of the time ...
    probs = np.full((2000, 4), 0.01 / 3)
    probs[np.arange(2000), pred] = 0.99  # ... at 99% confidence
    t = fit_temperature(probs, y)
    assert t > 1.5
    assert expected_calibration_error(scale(probs, t), y) < 0.05 < 0.2 < expected_calibration_error(probs, y)
    assert (scale(probs, t).argmax(1) == probs.argmax(1)).all()  # the labels do not change


def test_compare_calibrates_and_predict_uses_it(compared, tmp_path):
    from transferlab.train.calibration import scale

    data, out = compared
    m = json.loads((out / "metrics.json").read_text())
    for run in m["runs"]:
        assert {"temperature", "ece", "ece_calibrated"} <= set(run["scores"])
    assert "Calibration of the winner" in (out / "report.md").read_text()
    run = tmp_path / "run"
    shutil.copytree(out, run)
    folder = run / m["winner"] / f"seed{m['runs'][0]['seed']}"
    img = sorted((data / "class_1").iterdir())[0]
    (folder / "calibration.json").write_text(json.dumps({"temperature": 1.0}))
    raw = predict(folder, [img], top_k=3)[0]["top"]
    (folder / "calibration.json").write_text(json.dumps({"temperature": 3.0}))
    scaled = predict(folder, [img], top_k=3)[0]["top"]
    probs = np.array([[p for _, p in sorted(raw)]])
    assert [p for _, p in sorted(scaled)] == pytest.approx(scale(probs, 3.0)[0].tolist(), abs=1e-6)


def test_transfer_classifier_fits_predicts_saves_and_loads(class_folders, tmp_path):
    import os
    import subprocess
    import sys

    from PIL import Image

    from transferlab import TransferClassifier

    files = sorted(class_folders.rglob("*.png"))
    labels = [f.parent.name for f in files]
    clf = TransferClassifier(backbone="test_tiny", strategy="features,probe", max_epochs=4)
    assert clf.fit(files, labels) is clf
    assert list(clf.classes_) == ["class_0", "class_1", "class_2"] and clf.winner_ in ("features", "probe")
    probs = clf.predict_proba(files[:5])
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1)
    assert clf.score(files, labels) > 0.8  # scikit-learn's ClassifierMixin on the (easy) training images
    assert clf.predict([np.asarray(Image.open(files[0]))])[0] == clf.predict(files[:1])[0]  # arrays work too
    clf.save(tmp_path / "saved")
    again = TransferClassifier.load(tmp_path / "saved")
    assert (again.predict(files) == clf.predict(files)).all()
    with pytest.raises(TransferlabError, match="not fitted"):
        TransferClassifier().predict(files)
    # Using it leaves the caller's process settings alone (checked in a fresh interpreter).
    code = ("import numpy, PIL.Image as I, torch; before = (I.MAX_IMAGE_PIXELS, torch.backends.cudnn.benchmark); "
            "from transferlab import TransferClassifier; c = TransferClassifier(strategy='probe', image_size=32); "
            "c.fit('digits:4'); c.predict_proba([numpy.zeros((8, 8, 3), 'uint8')]); "
            "assert (I.MAX_IMAGE_PIXELS, torch.backends.cudnn.benchmark) == before")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRANSFERLAB_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-2000:]


def test_tensorboard_events_hold_every_epoch_hparams_and_the_confusion_matrix(compared):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out = compared
    m = json.loads((out / "metrics.json").read_text())
    history = list(csv.DictReader((out / "history.csv").open()))
    for run in m["runs"]:
        acc = EventAccumulator(str(out / "tensorboard" / f"{run['strategy']}-seed{run['seed']}")).Reload()
        epochs = [h for h in history if h["strategy"] == run["strategy"] and int(h["seed"]) == run["seed"]]
        vals = [e.value for e in acc.Scalars("accuracy/val")]
        assert vals == pytest.approx([float(h["val_acc"]) for h in epochs])
        assert "phase/head/loss/train" in acc.Tags()["scalars"]
    winner = EventAccumulator(str(out / "tensorboard" / f"{m['winner']}-seed0")).Reload()
    assert "confusion/test" in winner.Tags()["images"]


def _mlflow_runs(out):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("transferlab")
    return client, client.search_runs([experiment.experiment_id])


def test_mlflow_logs_each_run_with_its_epochs_scores_and_the_report(compared):
    _, out = compared
    m = json.loads((out / "metrics.json").read_text())
    history = list(csv.DictReader((out / "history.csv").open()))
    client, runs = _mlflow_runs(out)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert len(parents) == 1 and len(children) == len(m["runs"]) == 4
    for run in m["runs"]:
        logged = children[f"{run['strategy']}-seed{run['seed']}"]
        assert logged.data.metrics["test_acc"] == pytest.approx(run["test_acc"])
        assert logged.data.metrics["test_macro_f1"] == pytest.approx(run["scores"]["macro_f1"])
        assert logged.data.params["strategy"] == run["strategy"] and logged.data.params["backbone"] == "test_tiny"
        epochs = [float(h["val_acc"]) for h in history
                  if h["strategy"] == run["strategy"] and int(h["seed"]) == run["seed"]]
        assert [x.value for x in client.get_metric_history(logged.info.run_id, "val_acc")] == pytest.approx(epochs)
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id)} >= {"report.html", "metrics.json",
                                                                               "config.yaml"}
    winner = children[f"{m['winner']}-seed0"]
    assert [a.path for a in client.list_artifacts(winner.info.run_id)] == ["confusion_test.png"]


def test_mlflow_model_of_the_winner_predicts_like_predict(compared):
    import mlflow.pyfunc

    data, out = compared
    client, runs = _mlflow_runs(out)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    files = sorted((data / "class_1").glob("*.png"))[:3]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{parent.info.run_id}/model")
    finally:
        mlflow.set_tracking_uri(previous)
    got = model.predict(__import__("pandas").DataFrame({"path": [str(f) for f in files]}))
    metrics = json.loads((out / "metrics.json").read_text())
    want = predict(out, files, top_k=3)
    assert list(got.columns) == ["class_0", "class_1", "class_2"] and metrics["winner"]
    assert np.allclose(got.to_numpy(), [[dict(r["top"])[c] for c in got.columns] for r in want], atol=1e-6)


def test_mlflow_resume_replaces_the_runs_and_a_bad_store_fails_before_training(tmp_path, capsys, monkeypatch):
    data = make_class_folders(tmp_path / "data", n_per_class=6, n_classes=2)
    out = tmp_path / "out"
    args = ["compare", "--data", str(data), "--backbone", "test_tiny", "--strategies", "probe", "--out", str(out),
            "--quiet", "--mlflow"]
    assert main(args) == 0 and main([*args, "--resume"]) == 0
    assert len(_mlflow_runs(out)[1]) == 2  # the compare and its one run, not twice
    capsys.readouterr()

    bad = tmp_path / "bad"
    assert main([*args[:-3], str(bad), "--quiet", "--mlflow", "nosuchscheme://x"]) == 2
    assert "--mlflow nosuchscheme://x" in capsys.readouterr().err and not (bad / "config.yaml").exists()

    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # as if MLflow were not installed
    assert main([*args[:-3], str(bad), "--quiet", "--mlflow"]) == 2
    assert "pip install 'transferlab[mlflow]'" in capsys.readouterr().err and not (bad / "config.yaml").exists()


def test_mlflow_logs_epochs_as_they_end_and_a_killed_compare_is_replaced_on_resume(tmp_path, monkeypatch):
    from transferlab.experiments import compare as compare_module

    data = make_class_folders(tmp_path / "data", n_per_class=6, n_classes=2)
    out = tmp_path / "out"
    args = ["compare", "--data", str(data), "--backbone", "test_tiny", "--strategies", "finetune", "--out", str(out),
            "--max-epochs", "3", "--batch-size", "8", "--quiet", "--mlflow"]
    real, seen = compare_module.train_one, []

    def watched(*a, on_epoch=None, kill_after=None, **k):
        def hook(history):
            on_epoch(history)
            client, runs = _mlflow_runs(out)
            child = next(r for r in runs if r.info.run_name == f"{a[2]}-seed{a[3]}")
            parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
            seen.append((len(client.get_metric_history(child.info.run_id, "val_acc")), len(history),
                         parent.info.status))
            if kill_after is not None and len(seen) >= kill_after:
                raise RuntimeError("killed")
        return real(*a, on_epoch=hook, **k)

    monkeypatch.setattr(compare_module, "train_one", lambda *a, **k: watched(*a, kill_after=2, **k))
    with pytest.raises(RuntimeError, match="killed"):
        main(args)
    assert seen == [(1, 1, "RUNNING"), (2, 2, "RUNNING")]  # in the store while the run trains
    monkeypatch.setattr(compare_module, "train_one", watched)
    assert main([*args, "--resume"]) == 0
    client, runs = _mlflow_runs(out)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}  # the killed compare's runs replaced
    child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
    history = [h for h in csv.DictReader((out / "history.csv").open())]
    assert [x.step for x in client.get_metric_history(child.info.run_id, "val_acc")] == \
        list(range(1, len(history) + 1))  # the epochs before the kill too, each once


def test_report_explains_the_winner_with_grad_cam(compared):
    from transferlab.models.saved import rebuild_model
    from transferlab.reporting.explain import gradcam

    _, out = compared
    assert "Grad-CAM" in (out / "report.md").read_text() and (out / "plots" / "gradcam.png").is_file()
    model, info = rebuild_model(out / "finetune" / "seed0")
    images = np.zeros((2, 35, 35, 3), np.uint8)
    images[0, 2:12, 2:12] = 255  # a bright square top left ...
    images[1, 20:33, 20:33] = 255  # ... and bottom right
    maps = gradcam(model, images, info["data_config"], np.array([0, 0]))
    peaks = maps.max(axis=(1, 2))
    assert maps.shape == (2, 32, 32) and maps.min() >= 0
    assert all(abs(p - 1) < 1e-5 or p == 0 for p in peaks)  # each map scaled to its own peak (0: no evidence)
