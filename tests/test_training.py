import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import make_class_folders
from transferlab.data import load_dataset, make_splits
from transferlab.models import Backbone, GroupedNet, HeadSpec, TransferModel, backbone_spec, create_backbone
from transferlab.runtime import Precision
from transferlab.train import (
    AugmentConfig,
    BatchNormPolicy,
    BodyConfig,
    BudgetConfig,
    Gradient,
    HeadConfig,
    ImbalanceConfig,
    ModelConfig,
    Phase,
    RuntimeConfig,
    TrainConfig,
    build_strategy,
    prepare,
    train_one,
)
from transferlab.train.batches import ImageBatches, TensorBatches
from transferlab.train.engine import PhaseContext, evaluate, fit_phase

# test_tiny (conftest) stands in for a pretrained backbone so the engine tests take seconds.
SMALL = TrainConfig(model=ModelConfig(backbone="test_tiny"), head=HeadConfig(head_hidden=(32,)),
                    budget=BudgetConfig(max_epochs=20, patience=3, batch_size=8), augment=AugmentConfig(views=2))
CPU = Precision.choose("cpu")


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    root = make_class_folders(tmp_path_factory.mktemp("easy") / "data", n_per_class=15, n_classes=3)
    ds = load_dataset(root)
    return ds, make_splits(ds, seed=0)


@pytest.mark.parametrize("strategy", ["features", "probe", "finetune", "chain-thaw", "gradual", "scratch"])
def test_every_strategy_learns_an_easy_task(easy, tmp_path, strategy):
    ds, splits = easy
    result = train_one(prepare(ds, splits, SMALL, quiet=True), SMALL, strategy, 0, tmp_path / "run", quiet=True)
    assert result.test_acc >= 0.75, f"{strategy}: {result.test_acc:.2f} (chance is 0.33)"
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("strategy", ["features", "probe"])
def test_pretrained_lite0_transfers(easy, tmp_path, strategy):
    ds, splits = easy
    config = TrainConfig(model=ModelConfig(image_size=32), head=HeadConfig(head_hidden=(32,)),
                         budget=BudgetConfig(max_epochs=30, batch_size=16), augment=AugmentConfig(views=2))
    result = train_one(prepare(ds, splits, config, quiet=True), config, strategy, 0, tmp_path / "run", quiet=True)
    assert result.test_acc >= 0.75, f"{strategy}: {result.test_acc:.2f} (chance is 0.33)"
    if strategy == "probe":  # the regularisation the cross-validation chose is reported
        assert result.summary()["details"]["probe_C"] in np.logspace(-4, 2, 7)


def test_chain_thaw_is_head_then_each_group_then_all():
    groups = list(backbone_spec("efficientnet_lite0").groups)
    phases = build_strategy("chain-thaw", groups).phases
    assert [p.trainable for p in phases] == [("head",), *[(g,) for g in groups], (*groups, "head")]
    assert phases[0].method.lr > phases[1].method.lr == phases[-1].method.lr


def test_frozen_groups_stay_bit_identical(easy):
    ds, splits = easy
    prep = prepare(ds, splits, SMALL, quiet=True)
    bb = create_backbone("test_tiny")
    model = TransferModel(bb, 3, HeadSpec((16,)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    thawed = bb.groups[2].name
    train = ImageBatches(prep.images, splits["train"], ds.labels, prep.data_config, 8)
    val = ImageBatches(prep.images, splits["val"], ds.labels, prep.data_config, 8, augment=False)
    # Batch statistics: the thawed group's BatchNorm learns statistics; the frozen ones must not.
    phase = Phase("one", (thawed,), Gradient(lr=1e-2, max_epochs=2, patience=5, bn=BatchNormPolicy.TRAIN))
    fit_phase(model, phase, train, val, PhaseContext(CPU, quiet=True))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    prefix = "body.stages.2."
    assert any(k.endswith("running_mean") for k in changed), "the thawed group's BatchNorm did not update"
    assert any(k.endswith("weight") for k in changed), "the thawed group did not train"
    assert all(k.startswith(prefix) for k in changed), sorted(changed)


def test_early_stopping_when_validation_loss_rises():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    # Validation labels are the opposite rule: the better the fit, the higher the validation loss.
    train = TensorBatches(x[None], y, level=1, batch_size=16)
    val = TensorBatches(x[None, :32], 1 - y[:32], level=1, batch_size=16)

    # A backbone without groups: the model is its linear head, fed at the pooled level (1).
    empty = Backbone("none", GroupedNet({}, torch.nn.Identity(), torch.nn.Identity(), 8), {}, [], 8)
    model = TransferModel(empty, 2, HeadSpec(hidden=()))
    phase = Phase("head", ("head",), Gradient(lr=0.05, max_epochs=50, patience=3))
    result = fit_phase(model, phase, train, val, PhaseContext(CPU, quiet=True))
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 3 < 50
    losses = [h["val_loss"] for h in result.history]
    assert result.best_val_loss <= min(losses)  # the starting weights (epoch 0) count too
    # The best weights are back: validation loss now equals the best one.
    assert evaluate(model, val, CPU)[0] == pytest.approx(result.best_val_loss, abs=1e-6)


def test_weight_average_is_scored_beside_the_raw_weights_and_the_better_kept():
    torch.manual_seed(0)
    x = torch.randn(96, 8)
    y = (x[:, 0] + 0.5 * torch.randn(96) > 0).long()  # noisy labels: single steps jump around
    train = TensorBatches(x[None, :64], y[:64], level=1, batch_size=8)
    val = TensorBatches(x[None, 64:], y[64:], level=1, batch_size=16)
    empty = Backbone("none", GroupedNet({}, torch.nn.Identity(), torch.nn.Identity(), 8), {}, [], 8)
    model = TransferModel(empty, 2, HeadSpec(hidden=()))
    phase = Phase("head", ("head",), Gradient(lr=0.5, max_epochs=12, patience=12, ema=0.9))
    result = fit_phase(model, phase, train, val, PhaseContext(CPU, quiet=True))
    raw = [h["val_loss"] for h in result.history]
    averaged = [h["ema_val_loss"] for h in result.history]
    assert raw != averaged  # the average is a different set of weights, scored every epoch
    assert result.best_val_loss <= min(raw + averaged) + 1e-9  # the starting weights are a candidate too
    # What is kept is the best of both: the model now scores exactly the best loss.
    assert evaluate(model, val, CPU)[0] == pytest.approx(result.best_val_loss, abs=1e-6)
    assert result.best_is_average == (min(averaged) < min(raw))


def test_finetune_with_whole_crops_mixing_decay_and_weight_average_learns(easy, tmp_path):
    ds, splits = easy
    config = replace(SMALL, augment=replace(SMALL.augment, mixup=0.2, cutmix=1.0, crop_from="whole"),
                     body=BodyConfig(ema=0.9, layer_decay=0.8))
    prep = prepare(ds, splits, config, quiet=True)
    result = train_one(prep, config, "finetune", 0, tmp_path / "run", quiet=True)
    assert result.test_acc >= 0.75, f"{result.test_acc:.2f} (chance is 0.33)"
    assert prep.whole is not None  # the whole-model phase cropped from the whole pictures
    whole = [h for h in result.history if h["phase"] == "all"]
    assert whole and all(0 <= h["ema_val_acc"] <= 1 for h in whole)


@pytest.fixture
def deterministic_torch():
    """Deterministic algorithms for one test (on CUDA, runs repeat only with them); restored after."""
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1], False


def test_same_seed_same_history(easy, tmp_path, deterministic_torch):
    ds, splits = easy
    config = replace(SMALL, runtime=RuntimeConfig(deterministic=True))
    prep = prepare(ds, splits, config, quiet=True)
    a = train_one(prep, config, "finetune", 3, tmp_path / "a", quiet=True)
    b = train_one(prep, config, "finetune", 3, tmp_path / "b", quiet=True)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in b.history]
    assert a.test_acc == b.test_acc


def _train_cmd(data, out, *extra):
    # The child registers test_tiny through conftest, then runs the real CLI.
    boot = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import conftest; "
            "from transferlab.cli import main; sys.exit(main(sys.argv[1:]))")
    return [sys.executable, "-c", boot, "train", "--data", str(data), "--strategy", "chain-thaw",
            "--out", str(out), "--backbone", "test_tiny", "--max-epochs", "3", "--patience", "3",
            "--views", "2", "--batch-size", "8", "--checkpoint-seconds", "0", "--quiet",
            # the cosine rates are a function of the epoch: a resumed phase continues on the same curve;
            # the augmentation policy draws from the epoch's generator: a resumed epoch sees the same images
            "--body-schedule", "cosine", "--label-smoothing", "0.1", "--augment-policy", "trivial",
            # mixing draws from the epoch's generator too; the weight average is saved in the checkpoint
            "--mixup", "0.2", "--cutmix", "1.0", "--ema", "0.9", "--layer-decay", "0.8", "--crop-from", "whole",
            *extra]


CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("deterministic", [False, True] if CUDA else [False])
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, deterministic):
    data = make_class_folders(tmp_path / "data", n_per_class=16, n_classes=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    extra = ["--deterministic"] if deterministic else []
    subprocess.run(_train_cmd(data, tmp_path / "full", *extra), check=True, env=env)

    proc = subprocess.Popen(_train_cmd(data, tmp_path / "cut", *extra), env=env)
    ckpt = tmp_path / "cut" / "chain-thaw" / "seed0" / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file():
            saved = torch.load(ckpt, weights_only=True)
            if saved["phase_index"] >= 3 and saved["phase_state"] is not None:
                break
        time.sleep(0.01)  # the last phases take well under a second
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "metrics.json").exists()

    subprocess.run(_train_cmd(data, tmp_path / "cut", "--resume", *extra), check=True, env=env)
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())["runs"][0]
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())["runs"][0]
    assert cut["epochs"] == full["epochs"]
    if CUDA and not deterministic:
        # Without --deterministic, CUDA picks convolution algorithms by timing (cuDNN autotuning) and
        # sums some gradients with atomics in whatever order threads finish, so two runs differ from
        # the first step on by float32 rounding (~1e-6 relative), which grows over the epochs after
        # the resume point: the losses then agree to about 1e-4, and an accuracy may flip an image.
        assert cut["test_loss"] == pytest.approx(full["test_loss"], abs=1e-3)
        assert abs(cut["test_acc"] - full["test_acc"]) <= 0.1
        return
    for key in ("test_acc", "val_acc", "test_loss"):
        assert cut[key] == pytest.approx(full[key], abs=1e-6), key
    # Epoch by epoch too, the weight average's scores included (it continues from the checkpoint).
    numbers = ["train_loss", "val_loss", "val_acc", "ema_val_loss", "ema_val_acc"]
    curves = []
    for run in ("full", "cut"):
        with open(tmp_path / run / "history.csv") as f:
            curves.append([[float(row[k] or "nan") for k in numbers] for row in csv.DictReader(f)])
    np.testing.assert_allclose(*curves, atol=1e-6)


def test_sigterm_stops_with_a_message_and_resume_finishes(tmp_path):
    """A scheduler's or a user's SIGTERM: exit status 143, a line that says --resume continues, the
    results folder released (the resumed command may take it) and the run finished by --resume."""
    data = make_class_folders(tmp_path / "data", n_per_class=16, n_classes=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_cmd(data, tmp_path / "cut"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ckpt = tmp_path / "cut" / "chain-thaw" / "seed0" / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not ckpt.is_file():
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, output[-2000:]
    assert "stopped by SIGTERM" in output and "--resume" in output
    subprocess.run(_train_cmd(data, tmp_path / "cut", "--resume"), check=True, env=env, capture_output=True)
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["runs"][0]["strategy"] == "chain-thaw"


def test_train_command_writes_results_directory(tmp_path):
    from transferlab.cli import main

    data = make_class_folders(tmp_path / "data", n_per_class=8, n_classes=2)
    out = tmp_path / "out"
    assert main(["train", "--data", str(data), "--strategy", "features", "--out", str(out), "--image-size", "32",
                 "--max-epochs", "3", "--quiet"]) == 0
    for name in ("config.yaml", "manifest.json", "metrics.json", "history.csv",
                 "features/seed0/model.safetensors", "features/seed0/model.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    run = metrics["runs"][0]
    assert 0 <= run["test_acc"] <= 1 and 0 <= run["val_acc"] <= 1 and metrics["winner"] == "features"
    assert main(["train", "--data", str(data), "--strategy", "features", "--out", str(out), "--quiet"]) == 2


def test_feature_extractor_in_a_pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from transferlab import FeatureExtractor

    ds = load_dataset("digits")
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(ds))[:240]
    images = ds.arrays[idx]
    pipe = make_pipeline(FeatureExtractor(image_size=32), LogisticRegression(max_iter=2000))
    pipe.fit(images[:160], ds.labels[idx[:160]])
    assert pipe.score(images[160:], ds.labels[idx[160:]]) > 0.5  # chance is 0.1
    assert pipe[0].transform(images[:2]).shape == (2, 1280)


def test_schedule_knobs_reach_the_phases():
    groups = list(backbone_spec("efficientnet_lite0").groups)
    default = build_strategy("finetune", groups).phases
    # finetune: a one-epoch warm-up, the BatchNorm policy left to the runner; chain-thaw: a full head phase, frozen
    assert default[0].method.max_epochs == 1 and default[1].method.bn is BatchNormPolicy.AUTO
    assert default[1].method.max_epochs == 30 and default[1].method.patience == 5
    chain = build_strategy("chain-thaw", groups).phases
    assert chain[0].method.max_epochs == 60 and all(p.method.bn is BatchNormPolicy.FROZEN for p in chain[1:])
    config = TrainConfig(head=HeadConfig(warmup_epochs=2, head_epochs=3),
                         body=BodyConfig(body_patience=4, body_bn="train"), budget=BudgetConfig(max_epochs=4))
    head, whole = build_strategy("finetune", groups, config).phases
    assert head.method.max_epochs == 2 and whole.method.patience == 4 and whole.method.max_epochs == 4
    assert whole.method.bn is BatchNormPolicy.TRAIN  # batch statistics in the whole-model phase
    chain = build_strategy("chain-thaw", groups, config).phases
    assert chain[0].method.max_epochs == 3 and all(p.method.bn is BatchNormPolicy.TRAIN for p in chain[1:])
    assert head.method.schedule == whole.method.schedule == "constant" and whole.method.label_smoothing == 0
    tuned = TrainConfig(body=BodyConfig(body_schedule="cosine", label_smoothing=0.1))
    warm, body = build_strategy("finetune", groups, tuned).phases
    assert (body.method.schedule, body.method.label_smoothing) == ("cosine", 0.1)
    assert (warm.method.schedule, warm.method.label_smoothing) == ("constant", 0)  # the warm-up is as before
    (scratch,) = build_strategy("scratch", groups, tuned).phases  # scratch trains a body too
    assert (scratch.method.schedule, scratch.method.label_smoothing) == ("cosine", 0.1)
    # Layer-wise rate decay: the last group at the body rate, each group below it `decay` times slower.
    decayed = TrainConfig(body=BodyConfig(layer_decay=0.5))
    rates = build_strategy("finetune", groups, decayed).phases[1].method.group_lr
    expected = [1e-4 * 0.5 ** (len(groups) - 1 - i) for i in range(len(groups))]
    assert [rates[g] for g in groups] == pytest.approx(expected)
    assert not build_strategy("finetune", groups).phases[1].method.group_lr
    # The warm-up length is finetune's: the features strategy trains its head for --head-epochs, under the cap.
    assert build_strategy("features", groups, config).phases[0].method.max_epochs == 3


def imbalanced(seed: int, n_major: int = 400, n_minor: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Two overlapping Gaussian classes, 10:1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n_major, 8, generator=g), torch.randn(n_minor, 8, generator=g) + 0.9])
    return x, torch.cat([torch.zeros(n_major), torch.ones(n_minor)]).long()


def balanced_accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float(np.mean([(pred[y == c] == c).float().mean() for c in (0, 1)]))


def test_class_weights_raise_balanced_accuracy_on_a_10_to_1_set():
    from transferlab.train.probe import fit_logreg

    x, y = imbalanced(0)
    xt, yt = imbalanced(1)
    # The probe (logistic regression, C by cross-validation).
    scores = {}
    for balanced in (False, True):
        fit = fit_logreg(x, y, balanced=balanced)
        scores[balanced] = balanced_accuracy((xt @ fit.weight.T + fit.bias).argmax(1), yt)
    assert scores[True] > scores[False] + 0.1
    # A gradient phase (a linear head on features), with and without the weights.
    empty = Backbone("none", GroupedNet({}, torch.nn.Identity(), torch.nn.Identity(), 8), {}, [], 8)
    for balanced in (False, True):
        torch.manual_seed(0)
        model = TransferModel(empty, 2, HeadSpec(hidden=()))
        phase = Phase("head", ("head",), Gradient(lr=0.02, max_epochs=30, patience=30, balanced=balanced))
        fit_phase(model, phase, TensorBatches(x[None], y, level=1), TensorBatches(x[None], y, level=1),
                  PhaseContext(CPU, quiet=True))
        with torch.no_grad():
            scores[balanced] = balanced_accuracy(model(xt, level=1).argmax(1), yt)
    assert scores[True] > scores[False] + 0.1
    # The option reaches every phase of every strategy.
    config = TrainConfig(imbalance=ImbalanceConfig(class_weights="auto"))
    for name in ("features", "probe", "finetune", "chain-thaw", "scratch"):
        assert all(p.method.balanced for p in build_strategy(name, ["a", "b"], config).phases)


def test_the_balanced_sampler_raises_balanced_accuracy_on_a_10_to_1_set(tmp_path, monkeypatch):
    x, y = imbalanced(0)
    xt, yt = imbalanced(1)
    empty = Backbone("none", GroupedNet({}, torch.nn.Identity(), torch.nn.Identity(), 8), {}, [], 8)
    scores = {}
    for balanced in (False, True):
        torch.manual_seed(0)
        model = TransferModel(empty, 2, HeadSpec(hidden=()))
        train = TensorBatches(x[None], y, level=1)
        train.balanced = balanced
        phase = Phase("head", ("head",), Gradient(lr=0.02, max_epochs=30, patience=30))
        fit_phase(model, phase, train, TensorBatches(x[None], y, level=1), PhaseContext(CPU, quiet=True))
        with torch.no_grad():
            scores[balanced] = balanced_accuracy(model(xt, level=1).argmax(1), yt)
    assert scores[True] > scores[False] + 0.1
    # Each epoch draws as many examples as there are, about as many of each class.
    from transferlab.train.batches import epoch_order
    order = epoch_order(len(y), torch.Generator().manual_seed(0), y)
    assert len(order) == len(y) and 0.4 < float(y[order].float().mean()) < 0.6
    # The option reaches the training batches of a real run.
    from transferlab.train import batches
    sampled = []
    monkeypatch.setattr(batches, "epoch_order", lambda n, g, labels=None: sampled.append(labels is not None)
                        or epoch_order(n, g, labels))
    data = make_class_folders(tmp_path / "data", n_per_class=6, n_classes=2)
    config = TrainConfig(model=ModelConfig(backbone="test_tiny"), budget=BudgetConfig(max_epochs=2),
                         imbalance=ImbalanceConfig(balanced_sampler=True))
    ds = load_dataset(str(data))
    prep = prepare(ds, make_splits(ds), config, quiet=True)
    train_one(prep, config, "finetune", 0, tmp_path / "r", quiet=True)
    assert any(sampled) and not all(sampled)  # balanced while training, in order while evaluating


def test_batch_statistics_that_never_beat_the_warm_up_give_way_to_frozen_ones(easy, tmp_path, monkeypatch):
    """BatchNorm 'auto': the whole-model phase runs with batch statistics; when it never improves on
    its start it runs again with frozen statistics, and the run says so."""
    import transferlab.train.runners as runners

    ds, splits = easy
    real = runners.fit_phase

    def run_with(improves: bool, folder: str) -> tuple[list, Any]:
        calls = []

        def fit_phase(model, phase, train, val, ctx):
            result = real(model, phase, train, val, ctx)
            calls.append((phase.name, phase.method.bn.value))
            if phase.method.bn is BatchNormPolicy.TRAIN:  # batch statistics on data far from ImageNet's, or not
                result = replace(result, best_epoch=1 if improves else 0)
            return result

        monkeypatch.setattr(runners, "fit_phase", fit_phase)
        return calls, train_one(prepare(ds, splits, SMALL, quiet=True), SMALL, "finetune", 0, tmp_path / folder,
                                quiet=True)

    calls, result = run_with(False, "a")
    assert calls == [("head", "frozen"), ("all", "train"), ("all", "frozen")]
    assert result.details.body_bn is BatchNormPolicy.FROZEN and result.details.body_bn_train_epochs >= 1
    assert [h["phase"] for h in result.history].count("head") == 1  # the undone attempt is not in the curves
    assert result.test_acc >= 0.75
    from transferlab.experiments.results import summarise
    assert summarise([result])["finetune"]["bn_fallback"] == 1  # the report says so
    calls, result = run_with(True, "b")
    assert calls == [("head", "frozen"), ("all", "train")] and result.details.body_bn is BatchNormPolicy.TRAIN


def test_cosine_rates_fall_from_the_base_rate_to_a_hundredth():
    from transferlab.train.engine import schedule_rates

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=1e-3)
    optimizer.param_groups[0]["base_lr"] = 1e-3
    method = Gradient(lr=1e-3, max_epochs=10, schedule="cosine")
    rates = []
    for epoch in range(10):
        schedule_rates(optimizer, method, epoch)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] > 1e-5 and rates[5] == pytest.approx(1e-3 * (0.01 + 0.99 / 2))
    schedule_rates(optimizer, Gradient(lr=1e-3), 7)
    assert optimizer.param_groups[0]["lr"] == 1e-3  # constant


def test_a_feature_cache_from_other_extraction_code_is_not_reused(easy, monkeypatch):
    """Features on disk made by another version of the extraction code (preprocessing, backbones,
    folding) are never read back as if they were this version's: they live under another key."""
    from transferlab.train import features

    ds, _ = easy
    backbone = create_backbone("test_tiny")
    before = features.FeatureStore(backbone, ds).folder
    assert features.FeatureStore(backbone, ds).folder == before  # the same code finds its cache again
    monkeypatch.setattr(features, "extraction_code", lambda: "another version")
    assert features.FeatureStore(backbone, ds).folder != before
