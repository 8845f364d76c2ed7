"""The model card (MODEL_CARD.md and model_card.json): what a model is, what it was trained on, how well
it does, where it should not be trusted and how to make it again, from the files of its results folder.

A card is written in every results folder (for its winner), beside every export, and travels with a
saved ``TransferClassifier`` (``save`` copies the results folder). The structure follows Mitchell et
al. 2019, "Model Cards for Model Reporting": model details, intended use, data, metrics, caveats.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.io import write_json, write_text
from ..core.layout import ResultsFolder, RunFolder
from ..train.novelty import MAX_ACCEPTED
from ..train.scores import accuracy_interval

CARD_MD, CARD_JSON = "MODEL_CARD.md", "model_card.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _results_of(model_dir: Path) -> ResultsFolder | None:
    return next((r for r in map(ResultsFolder, (model_dir, *model_dir.parents)) if r.metrics.is_file()), None)


def _scores(metrics: dict, strategy: str, seed: int | None) -> dict[str, Any]:
    summary = metrics.get("summary", {}).get(strategy, {})
    run = next((r for r in metrics.get("runs", []) if r["strategy"] == strategy and r["seed"] == seed), None)
    scores = (run or {}).get("scores", {})
    found = {"test_accuracy": summary.get("test_acc"), "test_accuracy_ci95": summary.get("test_acc_ci95"),
             "seeds": summary.get("seeds"), "val_accuracy": summary.get("val_acc"),
             "balanced_accuracy": summary.get("balanced_accuracy"), "macro_f1": summary.get("macro_f1"),
             "this_model_test_accuracy": (run or {}).get("test_acc")}
    found.update({k: v for k, v in scores.items() if k.startswith("top") and k.endswith("_accuracy")})
    found["per_class_recall"] = {k: v["recall"] for k, v in scores.get("per_class", {}).items()}
    return found


def _limitations(manifest: dict, metrics: dict, scores: dict, classes: list[str]) -> list[str]:
    """What the run itself found that limits the model."""
    data, found = manifest.get("data", {}), []
    for key in ("imbalance_warning", "copies_across_splits"):
        if data.get(key):
            found.append(data[key])
    found += (metrics.get("verdict") or {}).get("notes", [])
    test = data.get("splits", {}).get("test", 0)
    if test and test < 200:
        found.append(f"the test split has {test} images: its accuracy is known to a few points only")
    weak = [f"{c} ({r:.0%})" for c, r in scores["per_class_recall"].items() if r < 0.8]
    if weak:
        found.append("classes recognised less than 80% of the time on test: " + ", ".join(weak))
    if data.get("skipped"):
        found.append(f"{len(data['skipped'])} unreadable image(s) were skipped")
    found.append(f"it knows only the classes {', '.join(classes)}: an image of anything else gets one of "
                 "them, unless its unknown-input score is above the threshold")
    return found


def model_card(model_dir: str | Path, export: Any = None) -> dict[str, Any]:
    """The card of the model in ``model_dir`` (a run folder of a results folder), as a dict; ``export``
    is an ``inference.export.Exported`` to describe as well."""
    model_dir = Path(model_dir)
    run = RunFolder(model_dir)
    model = _read(run.model) or {}
    results = _results_of(model_dir)
    metrics = (_read(results.metrics) if results else None) or {}
    manifest = (_read(results.manifest) if results else None) or {}
    strategy, seed = model.get("strategy") or model_dir.parent.name, model.get("seed")
    classes = model.get("classes") or manifest.get("data", {}).get("classes", [])
    scores = _scores(metrics, strategy, seed)
    calibration, unknown = _read(run.calibration), _read(run.unknown)
    data = manifest.get("data", {})
    if scores["test_accuracy"] is not None:
        low, high, how = accuracy_interval(scores["test_accuracy"], int((data.get("splits") or {}).get("test", 0)),
                                           scores.get("seeds") or 1, scores.get("test_accuracy_ci95"))
        scores["test_accuracy_interval"] = {"low": low, "high": high, "how": how}
    card = {
        "model": {"strategy": strategy, "seed": seed,
                  "backbone": model.get("backbone") or ("several (an ensemble)" if run.is_ensemble() else None),
                  "input_size": (model.get("data_config") or {}).get("input_size"),
                  "folder": str(model_dir.resolve()), "winner_of_compare": metrics.get("winner") == strategy},
        "intended_use": (f"Sorting images like the training images into {len(classes)} classes "
                         f"({', '.join(classes)}). Not for other kinds of images, and not for decisions about "
                         "people: it has seen only the images below."),
        "data": {"name": data.get("name"), "classes": classes, "counts": data.get("counts"),
                 "splits": data.get("splits"), "fingerprint": data.get("fingerprint"),
                 "unlabelled": data.get("unlabelled"), "skipped": len(data.get("skipped", []))},
        "scores": scores,
        "verdict": (metrics.get("verdict") or {}).get("sentence"),
        "calibration": None if calibration is None else {
            "temperature": calibration.get("temperature"), "test_ece_before": calibration.get("ece"),
            "test_ece_after": calibration.get("ece_calibrated")},
        "unknown_inputs": None if unknown is None else {
            "threshold": unknown.get("threshold"), "target_precision": unknown.get("target"),
            "reachable_on_validation": unknown.get("reachable")},
        "limitations": _limitations(manifest, metrics, scores, classes),
        "reproduce": {"command": manifest.get("command"),
                      "rerun": f"transferlab compare --config {results.config}" if results else None,
                      "versions": manifest.get("versions"), "machine": manifest.get("machine")},
    }
    if export is not None:
        card["export"] = {"file": str(export.path), "max_abs_diff_vs_predict": export.max_abs_diff,
                          "int8": export.table or None}
    return card


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def card_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown."""
    m, d, s = card["model"], card["data"], card["scores"]
    interval = s.get("test_accuracy_interval")
    ci = f" (95% interval {_pct(interval['low'])} to {_pct(interval['high'])}: {interval['how']})" if interval else ""
    lines = [f"# Model card: {m['strategy']} on {m['backbone']}", "",
             "## Model", f"- strategy: {m['strategy']} (seed {m['seed']}), backbone: {m['backbone']}, "
             f"input: {m['input_size']}", f"- folder: {m['folder']}", "",
             "## Intended use", card["intended_use"], "",
             "## Data", f"- {d['name']}: {len(d['classes'])} classes, fingerprint {d['fingerprint']}",
             f"- images per class: {', '.join(f'{k} {v}' for k, v in (d['counts'] or {}).items())}",
             f"- splits: {', '.join(f'{k} {v}' for k, v in (d['splits'] or {}).items())}", "",
             "## Scores (test split)",
             f"- accuracy {_pct(s['test_accuracy'])}{ci}; this model {_pct(s['this_model_test_accuracy'])}",
             f"- balanced accuracy {_pct(s['balanced_accuracy'])}, macro-F1 {_pct(s['macro_f1'])}, "
             f"validation accuracy {_pct(s['val_accuracy'])}"]
    lines += [f"- {k.replace('_', ' ')} {_pct(v)}" for k, v in s.items() if k.startswith("top")]
    if card["verdict"]:
        lines.append(f"- {card['verdict']}")
    if card["calibration"]:
        c = card["calibration"]
        lines += ["", "## Calibration", f"- temperature {c['temperature']:.3g} fitted on validation; test ECE "
                  f"{_pct(c['test_ece_before'])} before, {_pct(c['test_ece_after'])} after"]
    if card["unknown_inputs"]:
        u = card["unknown_inputs"]
        lines += ["", "## Unknown inputs", f"- 'unknown' above score {u['threshold']:.3g}, chosen for "
                  f"{_pct(u['target_precision'])} precision among accepted validation images"
                  + ("" if u["reachable_on_validation"] else " (not reached on validation)")
                  + f", accepting at most {_pct(MAX_ACCEPTED)} of them"]
    lines += ["", "## Limitations", *[f"- {x[0].upper() + x[1:]}" for x in card["limitations"]], "",
              "## Reproduce", f"- made by: `{card['reproduce']['command']}`"]
    if card["reproduce"]["rerun"]:
        lines.append(f"- again: `{card['reproduce']['rerun']}`")
    if card["reproduce"]["versions"]:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in card["reproduce"]["versions"].items()))
    if "export" in card:
        e = card["export"]
        lines += ["", "## Export", f"- {e['file']}: probabilities within {e['max_abs_diff_vs_predict']:.1e} of "
                  "`transferlab predict`"]
        lines += [f"- {r['model']}: {r['mb']} MB, {r['ms_per_image']} ms per image, test accuracy "
                  f"{_pct(r['test_acc'])}" for r in e["int8"] or []]
    return "\n".join(lines) + "\n"


def write_model_card(folder: str | Path, model_dir: str | Path, export: Any = None) -> Path:
    """Write MODEL_CARD.md and model_card.json for the model in ``model_dir`` into ``folder``."""
    card = model_card(model_dir, export)
    folder = Path(folder)
    write_json(folder / CARD_JSON, card)
    write_text(folder / CARD_MD, card_markdown(card))
    return folder / CARD_MD
