"""The report of a comparison: HTML + Markdown with embedded plots, built from the results directory.

Everything is computed from the results directory (metrics.json, history.csv, manifest.json,
splits.npz and each run's test predictions), so a report can be rebuilt from a finished run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sklearn.metrics import confusion_matrix

from ..core.layout import ResultsFolder, RunFolder
from ..models.saved import rebuild_model
from ..train.calibration import reliability, scale
from ..train.novelty import MAX_ACCEPTED, UnknownRule, risk_coverage
from ..train.scores import accuracy_interval
from .curves import EARLY_EPOCHS, SCRATCH, curve, read_history, transfer_benefits
from .explain import gradcam, plot_gradcam
from .plots import plot_accuracy, plot_confusion, plot_curves, plot_misclassified, plot_reliability, plot_risk_coverage
from .render import Section, render


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def next_commands(out: str | Path) -> list[str]:
    """What to do with a results folder's winner (the console's closing line and the report's top box)."""
    return [f"transferlab predict {out} IMAGE_OR_FOLDER", f"transferlab export {out} --int8",
            f"transferlab serve {out}"]


def _top_box(out: Path, metrics: dict, manifest: dict) -> Section:
    """The report's opening: the winner, its test score with an interval, the verdict's sentence, and
    what to run next."""
    best, summary = metrics["winner"], metrics["summary"]
    s, n_test = summary[best], int(manifest["data"]["splits"].get("test", 0))
    low, high, how = accuracy_interval(s["test_acc"], n_test, s["seeds"], s.get("test_acc_ci95"))
    config = ResultsFolder(out).config
    saved = yaml.safe_load(config.read_text(encoding="utf-8")) if config.is_file() else None
    backbone = ((saved or {}).get("train") or {}).get("model", {}).get("backbone", "")
    text = (f"{best}{f' on {backbone}' if backbone else ''}: test accuracy {_pct(s['test_acc'])} "
            f"(95% interval {_pct(low)} to {_pct(high)}: {how}).")
    verdict = metrics.get("verdict")
    if verdict:
        text += " " + verdict["sentence"]
    text += "\n\nNext: label new images with it, export it (ONNX, with an int8 version checked on test), or serve " \
            "it with a page to try it:"
    return Section("Winner", text, commands=next_commands(out), box=True)


def _verdict(found: dict | None) -> Section | None:
    """The report's opening: whether the winner's lead over the runner-up is beyond noise."""
    if not found:
        return None
    rows = [["", "winner", "runner-up", "difference on test", "95% interval", "how"],
            ["", found["winner"], found["runner_up"], f"{found['difference'] * 100:+.1f} points",
             f"{found['low'] * 100:+.1f} to {found['high'] * 100:+.1f}", found["method"]]]
    notes = " ".join(n[0].upper() + n[1:] + "." for n in found["notes"])
    return Section("Verdict", found["sentence"] + (" " + notes if notes else ""), [r[1:] for r in rows])


def _results(summary: dict, best: str, manifest: dict, plots: Path) -> Section:
    rows = [["strategy", "test accuracy", "balanced accuracy", "macro-F1", "val accuracy", "epochs", "seconds",
             "seeds"]]
    cut = [n for n, s in summary.items() if s.get("budget_cut")]
    for name, s in summary.items():
        ci = f" ± {s['test_acc_ci95'] * 100:.1f}" if s["seeds"] > 1 else ""
        mark = (" (winner)" if name == best else "") + (" (cut by its time budget)" if name in cut else "")
        quoted = [_pct(s[k]) if k in s else "-" for k in ("balanced_accuracy", "macro_f1")]
        rows.append([name + mark, _pct(s["test_acc"]) + ci, *quoted, _pct(s["val_acc"]),
                     f"{s['epochs']:.0f}", f"{s['seconds']:.1f}", str(s["seeds"])])
    text = (f"Winner: {best}, chosen on validation accuracy; its test accuracy is "
            f"{_pct(summary[best]['test_acc'])} on {manifest['data']['splits'].get('test', '?')} test images. "
            "Every choice (the winner, early stopping, the probe's C) is made on the validation split; "
            "the test split is scored once per run, at its end.")
    if cut:
        text += (f" {', '.join(cut)} stopped at a time budget (by default scratch gets the time of the "
                 "slowest pretrained strategy: an equal-compute comparison); its curve against seconds "
                 "shows what more time would have bought.")
    fallback = [f"{n} ({s['bn_fallback']} of {s['seeds']} seeds)" for n, s in summary.items() if s.get("bn_fallback")]
    if fallback:
        text += (f" BatchNorm: in {', '.join(fallback)} the whole-model phase with batch statistics never beat "
                 "the head warm-up, so it ran again with the pretrained statistics frozen (the curves show that "
                 "second run; the seconds include both).")
    return Section("Results", text, rows, plot_accuracy(summary, plots / "accuracy.png", best))


def _benefits(summary: dict, history: list[dict[str, Any]]) -> Section | None:
    curved = [n for n in summary if n != SCRATCH and len(curve(history, n)["epoch"]) >= 2]
    if SCRATCH not in summary or not curved:
        return None
    pretrained = max(curved, key=lambda n: summary[n]["val_acc"])
    b = transfer_benefits(history, pretrained)
    rows = [["benefit (Torrey & Shavlik)", pretrained, SCRATCH, "difference"]]
    for key, label in (("start", "higher start: val. accuracy after epoch 1"),
                       ("slope", f"higher slope: mean gain per epoch, epochs 1-{EARLY_EPOCHS}"),
                       ("auc_early", f"area under the curve, epochs 1-{EARLY_EPOCHS} (mean acc.)"),
                       ("asymptote", "higher asymptote: best val. accuracy")):
        p, s = b[pretrained][key], b[SCRATCH][key]
        rows.append([label, _pct(p), _pct(s), f"{(p - s) * 100:+.1f} pts"])
    note = ("Measured on the validation curves above. A pretrained head phase can start so high that its "
            "slope is small: the slope row is only a benefit when both start from a similar level.")
    return Section("The three benefits of transfer", note, rows)


def _winner_errors(out: Path, metrics: dict, classes: list[str], images: np.ndarray | None) -> list[Section]:
    """The winner's confusion matrix, per-class accuracy and misclassified test images."""
    results = ResultsFolder(out)
    best, plots = metrics["winner"], results.plots
    seed = next(r["seed"] for r in metrics["runs"] if r["strategy"] == best)
    pred_path = results.run(best, seed).test_predictions
    splits = np.load(results.splits)
    if not pred_path.is_file() or "labels" not in splits:
        return []
    y_pred = np.load(pred_path)
    test_idx = splits["test"]
    y_true = splits["labels"][test_idx]
    cm = confusion_matrix(y_true, y_pred, labels=range(len(classes)))
    scores = next(r for r in metrics["runs"] if r["strategy"] == best).get("scores", {})
    per_class = [["class", "test images", "accuracy (recall)", "precision", "F1"]]
    for k, c in enumerate(classes):
        n, pc = int(cm[k].sum()), scores.get("per_class", {}).get(c, {})
        per_class.append([c, str(n), _pct(cm[k, k] / n) if n else "-",
                          *[_pct(pc[m]) if m in pc else "-" for m in ("precision", "f1")]])
    top = next((f"{k.replace('_accuracy', '')} accuracy {_pct(v)}, " for k, v in scores.items()
                if k.startswith("top") and v is not None), "")
    quoted = (f"Seed {seed}: accuracy {_pct(scores['accuracy'])}, balanced accuracy "
              f"{_pct(scores['balanced_accuracy'])}, {top}macro-F1 {_pct(scores['macro_f1'])}."
              if "macro_f1" in scores else "")
    sections = [Section(f"Confusion matrix and per-class scores of the winner ({best})", quoted, per_class,
                        plot_confusion(cm, classes, f"{best}: test set", plots / "confusion.png"))]
    probs_path = results.run(best, seed).test_probs
    conf = np.load(probs_path).max(1) if probs_path.is_file() else np.zeros(len(y_true))
    wrong = spread_over_classes(np.flatnonzero(y_pred != y_true), y_true, conf)
    if images is not None and len(wrong):
        grid = plot_misclassified([np.asarray(images[test_idx[i]]) for i in wrong[:32]],
                                  [f"{classes[y_true[i]]} → {classes[y_pred[i]]}" for i in wrong[:32]],
                                  plots / "misclassified.png")
        sections.append(Section("Misclassified test images (true → predicted)",
                                f"{len(wrong)} of {len(y_true)} test images.", image=grid))
    if images is not None:
        right = spread_over_classes(np.flatnonzero(y_pred == y_true), y_true, conf)
        picked = np.concatenate([wrong[:8], right[:4]])
        sections.append(_explanations(results.run(best, seed).path, images[test_idx[picked]],
                                      [f"{classes[y_true[i]]} → {classes[y_pred[i]]}" for i in picked],
                                      y_pred[picked], plots))
    return sections


def spread_over_classes(indices: np.ndarray, y: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """``indices`` reordered to take each class in turn, the most confident first within a class: a grid of
    the first few then shows every class (and the surest mistakes), not the first class's images only."""
    by_class = [sorted(indices[y[indices] == c], key=lambda i: -confidence[i]) for c in np.unique(y[indices])]
    order = [group[k] for k in range(max(map(len, by_class), default=0)) for group in by_class if k < len(group)]
    return np.array(order, dtype=int)


def _explanations(folder: Path, images: np.ndarray, captions: list[str], targets: np.ndarray,
                  plots: Path) -> Section | None:
    """Grad-CAM of the winner (an ensemble: its heaviest member) for its predicted classes."""
    if RunFolder(folder).is_ensemble():
        members = json.loads(RunFolder(folder).ensemble.read_text())["members"]
        folder = (folder / max(members.values(), key=lambda m: m["weight"])["folder"]).resolve()
    if not RunFolder(folder).model.is_file() or not len(images):
        return None
    model, info = rebuild_model(folder)
    maps = gradcam(model, np.asarray(images), info["data_config"], targets)
    if maps is None:
        return None
    size = info["data_config"]["input_size"][-1]
    grid = plot_gradcam(np.asarray(images), maps, captions, size, plots / "gradcam.png")
    return Section(f"Where the model looked ({folder.parent.name}, Grad-CAM)",
                   "Grad-CAM (Selvaraju et al. 2017, captum's LayerGradCam on the last layer group) for the "
                   "predicted class: misclassified test images first (true → predicted), then a few correct ones.",
                   image=grid)


def _calibration(out: Path, metrics: dict, plots: Path) -> Section | None:
    """The winner's calibration on the test split: ECE before and after temperature scaling, and the
    reliability diagram."""
    best = metrics["winner"]
    run = next(r for r in metrics["runs"] if r["strategy"] == best)
    folder = ResultsFolder(out).run(best, run["seed"])
    scores, splits_path = run.get("scores", {}), ResultsFolder(out).splits
    if "temperature" not in scores or not folder.test_probs.is_file() or not splits_path.is_file():
        return None
    with np.load(splits_path) as splits:
        y = splits["labels"][splits["test"]]
    probs, t = np.load(folder.test_probs), scores["temperature"]
    bins = int(np.clip(len(y) // 20, 5, 15))  # about 20 images a bin: 15 bins of 80 images are mostly noise
    curves = {"as trained": reliability(probs, y, bins),
              f"temperature {t:.2f}": reliability(scale(probs, t), y, bins)}
    rows = [["", "expected calibration error (test)"], ["as trained", _pct(scores["ece"])],
            [f"temperature scaled (T = {t:.2f}, fitted on validation)", _pct(scores["ece_calibrated"])]]
    text = ("How far the winner's confidence is from its accuracy (the error over 15 equal-width bins; Guo et al. "
            f"2017; the diagram uses {bins} bins, numbers: images per point). "
            "The temperature is fitted on the validation split; predict reports the scaled probabilities.")
    return Section(f"Calibration of the winner ({best}, seed {run['seed']})", text, rows,
                   plot_reliability(curves, f"{best}: test set", plots / "reliability.png", len(y)))


def _unknown(out: Path, metrics: dict, plots: Path) -> Section | None:
    """The winner's unknown-input rule on the test split: the risk-coverage curve and the threshold."""
    best = metrics["winner"]
    run = next(r for r in metrics["runs"] if r["strategy"] == best)
    folder = ResultsFolder(out).run(best, run["seed"])
    splits_path, t = ResultsFolder(out).splits, run.get("scores", {}).get("temperature")
    if t is None or not folder.unknown.is_file() or not folder.test_probs.is_file() or not splits_path.is_file():
        return None
    rule = UnknownRule(**json.loads(folder.unknown.read_text()))
    with np.load(splits_path) as splits:
        y = splits["labels"][splits["test"]]
    probs = scale(np.load(folder.test_probs), t)
    distance = None
    if folder.distances.is_file():
        with np.load(folder.distances) as saved:
            distance = saved["test"]
    scores, right = rule.score(probs, distance), probs.argmax(1) == y
    coverage, accuracy = risk_coverage(scores, right)
    accepted = scores <= rule.threshold
    at = (float(accepted.mean()), float(right[accepted].mean()) if accepted.any() else 1.0)
    signals = "the calibrated confidence and the distance to the nearest training image in the model's feature " \
        "space" if rule.distance_mean is not None else "the calibrated confidence"
    text = (f"predict answers 'unknown' when an image's score ({signals}, each standardised on validation) is above "
            f"the threshold at which the accepted validation images are right {rule.target:.0%} of the time"
            f"{'' if rule.reachable else ' (not reachable on validation: the most precise threshold is used)'}, "
            f"accepting at most {MAX_ACCEPTED:.0%} of them. "
            f"On the test split it refuses {1 - at[0]:.1%} of the images, and is right on {at[1]:.1%} of the rest "
            f"(against {right.mean():.1%} on all). --reject-target sets another precision; 0 turns it off.")
    rows = [["", "images accepted", "accuracy among accepted"], ["all test images", "100%", _pct(right.mean())],
            [f"at the threshold ({rule.threshold:.2f})", _pct(at[0]), _pct(at[1])]]
    return Section(f"Unknown inputs ({best}, seed {run['seed']})", text, rows,
                   plot_risk_coverage(coverage, accuracy, at, rule.target, f"{best}: test set", plots / "unknown.png"))


# Each strategy that learns from the pool, beside the labelled-only strategy it is measured against.
POOL_PAIRS = (("probe", "self-train"), ("scratch", "surrogate"), ("finetune", "surrogate-imagenet"))


def _pool_use(name: str, runs: list[dict]) -> str:
    """What the runs of ``name`` took from the pool, per seed."""
    details = [r.get("details", {}) for r in runs if r["strategy"] == name]
    if name == "self-train":
        text = "pseudo-labels: " + ", ".join(str(d.get("pseudo_labels", 0)) for d in details)
        if any("student_round" in d for d in details):
            text += "; student round kept (images): " + ", ".join(
                f"{d.get('student_round', 0)} ({d.get('student_pseudo_labels', 0)})" for d in details)
        return text
    if name.startswith("surrogate") and details:
        d = details[0]
        return (f"body pretrained {d.get('surrogate_epochs', '?')} epochs ({d.get('surrogate_seconds', 0):.0f} s, "
                "shared by its seeds)")
    return "-"


def _unlabelled(summary: dict, metrics: dict, manifest: dict) -> Section | None:
    """What the unlabelled images bought: each strategy that learns from the pool against the labelled-only
    strategy it builds on."""
    pool = manifest["data"].get("unlabelled")
    if not pool:
        return None
    text = (f"The unlabelled pool {pool['source']}: {pool['images']} images used, {pool['duplicates']} left out "
            f"as copies of labelled images (or of each other), {pool['skipped']} unreadable.")
    rows = [["strategy", "test accuracy", "val accuracy", "from the unlabelled images"]]
    for base, learner in POOL_PAIRS:
        if learner in summary:
            rows += [[name, _pct(summary[name]["test_acc"]), _pct(summary[name]["val_acc"]),
                      _pool_use(name, metrics["runs"])] for name in (base, learner) if name in summary]
    if "self-train" in summary:
        text += (" self-train labels the pool with the probe and fits again, round by round; it keeps a later "
                 "round only when that round is clearly better than the probe on validation (0 pseudo-labels "
                 "used: the probe itself was kept). Then students (the last backbone groups and the head) train "
                 "on the labelled images and the pool images the model before them labels; the one with the "
                 "lowest validation loss is kept unless the probe's self-training is clearly better on "
                 "validation (round 0).")
    if any(n.startswith("surrogate") for n in summary):
        text += (" The surrogate strategies pretrain the body on a self-supervised task over the training and "
                 "pool images, labels unused (surrogate from random weights, against scratch; surrogate-imagenet "
                 "from ImageNet's, against finetune), then run finetune's phases.")
    return Section("What the unlabelled images bought", text, rows if len(rows) > 1 else None)


def _how_run(manifest: dict) -> Section:
    data, machine = manifest["data"], manifest["machine"]
    rows = [["item", "value"], ["data", f"{data['name']} ({data['images']} images, {len(data['classes'])} classes)"],
            ["data fingerprint", data["fingerprint"]],
            ["splits", ", ".join(f"{k} {n}" for k, n in data["splits"].items())],
            ["skipped files", str(len(data["skipped"]))],
            ["seeds", ", ".join(map(str, manifest["seeds"])) + f" (split seed {manifest['split_seed']})"],
            ["machine", f"{machine['platform']}, {machine['cpus']} CPUs, {machine['precision']}"],
            ["versions", ", ".join(f"{k} {x}" for k, x in manifest["versions"].items())],
            ["wall time", f"{manifest['wall_seconds']['total']:.0f} s"],
            ["reproduce", manifest["command"]]]
    procs = manifest.get("processes", {})
    if procs.get("count", 1) > 1:
        rows.insert(-1, ["processes", f"{procs['count']} (torchrun, {procs['mode']}-parallel"
                         + (f"; global batch {procs['global_batch']}, {procs['batch_per_process']} per process, "
                            "learning rates as in one process" if procs["mode"] == "data" else "") + ")"])
    return Section("How this was run", "", rows)


def build_report(out: str | Path, images: np.ndarray | None = None) -> Path:
    """Build report.html / report.md / plots/*.png for the results directory ``out``.

    Args:
        images: the uint8 image cache (N, S, S, 3), to show misclassified test images; optional.
    """
    out = Path(out)
    folder = ResultsFolder(out)
    plots = folder.plots
    plots.mkdir(exist_ok=True)
    # Written by this compare a moment ago (experiments.results, which also reads them back typed).
    metrics = json.loads(folder.metrics.read_text())
    manifest = json.loads(folder.manifest.read_text())
    history = read_history(out)
    summary, best = metrics["summary"], metrics["winner"]
    imbalance, copies = manifest["data"].get("imbalance_warning"), manifest["data"].get("copies_across_splits")
    sections = [
        _top_box(out, metrics, manifest),
        _verdict(metrics.get("verdict")),
        Section("Copies across splits", copies[0].upper() + copies[1:] + ".") if copies else None,
        Section("Class balance", imbalance[0].upper() + imbalance[1:] + ".") if imbalance else None,
        _results(summary, best, manifest, plots),
        Section("Learning curves",
                "Validation accuracy after every epoch of every phase (seed 0), against the epoch and against "
                "wall-clock time. Pretrained strategies in colour, scratch dashed.",
                image=plot_curves(history, list(summary), plots / "curves.png")),
        _benefits(summary, history),
        *_winner_errors(out, metrics, manifest["data"]["classes"], images),
        _calibration(out, metrics, plots),
        _unknown(out, metrics, plots),
        _unlabelled(summary, metrics, manifest),
        _how_run(manifest),
    ]
    html_path, _ = render(f"transferlab report: {manifest['data']['name']}", [s for s in sections if s], out)
    return html_path
