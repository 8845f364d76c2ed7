"""Plots (matplotlib) and the self-contained HTML + Markdown report of a comparison.

Everything is computed from the results directory (metrics.json, history.csv, manifest.json,
splits.npz and each run's test predictions), so a report can be rebuilt from a finished run.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

SCRATCH = "scratch"
EARLY_EPOCHS = 5  # "slope": mean gain per epoch over the first epochs


def read_history(out: Path) -> list[dict[str, Any]]:
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("seed", "epoch"):
            r[k] = int(r[k])
        for k in ("train_loss", "val_loss", "val_acc", "seconds"):
            r[k] = float(r[k])
    return rows


def curve(history: list[dict[str, Any]], strategy: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Validation accuracy per epoch (counted across phases) and cumulative seconds, with phase starts."""
    rows = [r for r in history if r["strategy"] == strategy and r["seed"] == seed]
    phases = [r["phase"] for r in rows]
    starts = [i for i in range(1, len(rows)) if phases[i] != phases[i - 1]]
    return {"epoch": np.arange(1, len(rows) + 1), "val_acc": np.array([r["val_acc"] for r in rows]),
            "seconds": np.cumsum([r["seconds"] for r in rows]), "phase_starts": np.array(starts, dtype=int),
            "phases": phases}


def transfer_benefits(history: list[dict[str, Any]], pretrained: str) -> dict[str, dict[str, float]]:
    """Torrey & Shavlik's three benefits, measured on validation curves (seed 0), pretrained vs scratch.

    start: validation accuracy after the first epoch; slope: mean gain per epoch over the first
    ``EARLY_EPOCHS`` epochs (area under the curve over those epochs is given too); asymptote: the
    best validation accuracy reached.
    """
    out = {}
    for name in (pretrained, SCRATCH):
        acc = curve(history, name)["val_acc"]
        early = acc[:EARLY_EPOCHS]
        out[name] = {"start": float(acc[0]),
                     "slope": float((early[-1] - early[0]) / max(len(early) - 1, 1)),
                     "auc_early": float(early.mean()),
                     "asymptote": float(acc.max())}
    return out


# ---------------------------------------------------------------------------------------------
# Plots


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy(summary: dict[str, dict[str, float]], path: Path) -> Path:
    names = list(summary)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    acc = [summary[n]["test_acc"] * 100 for n in names]
    ci = [summary[n]["test_acc_ci95"] * 100 for n in names]
    colors = ["#999999" if n == SCRATCH else "#2b7bba" for n in names]
    a.bar(names, acc, yerr=ci, capsize=4, color=colors)
    for i, v in enumerate(acc):
        a.text(i, v + 1, f"{v:.1f}", ha="center", fontsize=9)
    a.set_ylabel("test accuracy (%)")
    a.set_ylim(0, 105)
    a.set_title("accuracy per strategy (mean ± 95% CI over seeds)")
    secs = [summary[n]["seconds"] for n in names]
    b.bar(names, secs, color=colors)
    b.set_ylabel("wall seconds per run")
    b.set_title("time per strategy")
    for ax in (a, b):
        ax.tick_params(axis="x", rotation=20)
    return _save(fig, path)


def plot_curves(history: list[dict[str, Any]], strategies: list[str], path: Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name in strategies:
        c = curve(history, name)
        if len(c["epoch"]) < 2:
            continue  # single-step strategies (probe) have no curve
        style = {"color": "#777777", "linestyle": "--"} if name == SCRATCH else {}
        a.plot(c["epoch"], c["val_acc"] * 100, marker=".", label=name, **style)
        b.plot(c["seconds"], c["val_acc"] * 100, marker=".", label=name, **style)
        if name == "chain-thaw":
            for s in c["phase_starts"]:
                a.axvline(s + 0.5, color="#d62728", alpha=0.25, linewidth=1)
    a.set_xlabel("epoch (all phases)")
    b.set_xlabel("wall-clock seconds")
    for ax in (a, b):
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a.set_title("learning curves (red lines: chain-thaw steps)")
    b.set_title("accuracy against time")
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    n = len(classes)
    fig, ax = plt.subplots(figsize=(min(2 + 0.45 * n, 10), min(1.6 + 0.45 * n, 9)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_title(title)
    return _save(fig, path)


def plot_misclassified(images: list[np.ndarray], captions: list[str], path: Path) -> Path | None:
    if not images:
        return None
    cols = min(8, len(images))
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, cap in zip(axes.ravel(), images, captions):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(cap, fontsize=7)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class Section:
    title: str
    text: str = ""  # paragraphs (plain text)
    table: list[list[str]] | None = None  # first row is the header
    image: Path | None = None


def _table_html(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _table_md(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}
.note{color:#555;font-size:.9em}code{background:#f3f3f3;padding:0 .3em}"""


def render(title: str, sections: list[Section], out: Path) -> tuple[Path, Path]:
    """Write report.html (images embedded) and report.md (images in plots/)."""
    parts_html = [f"<h1>{html.escape(title)}</h1>"]
    parts_md = [f"# {title}"]
    for s in sections:
        parts_html.append(f"<h2>{html.escape(s.title)}</h2>")
        parts_md.append(f"\n## {s.title}\n")
        for para in filter(None, s.text.split("\n\n")):
            parts_html.append(f"<p>{html.escape(para)}</p>")
            parts_md.append(para + "\n")
        if s.table:
            parts_html.append(_table_html(s.table))
            parts_md.append(_table_md(s.table) + "\n")
        if s.image is not None:
            data = base64.b64encode(s.image.read_bytes()).decode()
            parts_html.append(f'<img alt="{html.escape(s.title)}" src="data:image/png;base64,{data}">')
            parts_md.append(f"![{s.title}]({s.image.relative_to(out).as_posix()})\n")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts_html)}</body></html>")
    (out / "report.html").write_text(page, encoding="utf-8")
    (out / "report.md").write_text("\n".join(parts_md) + "\n", encoding="utf-8")
    return out / "report.html", out / "report.md"


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def build_report(out: str | Path, dataset: Any = None, images: np.ndarray | None = None) -> Path:
    """Build report.html / report.md / plots/*.png for the results directory ``out``.

    Args:
        dataset: the ImageDataset (for class names of misclassified images); optional.
        images: the uint8 image cache (N, S, S, 3), to show misclassified test images; optional.
    """
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    history = read_history(out)
    summary, best = metrics["summary"], metrics["winner"]
    classes = manifest["data"]["classes"]
    sections: list[Section] = []

    rows = [["strategy", "test accuracy", "val accuracy", "epochs", "seconds", "seeds"]]
    for name, s in summary.items():
        ci = f" ± {s['test_acc_ci95'] * 100:.1f}" if s["seeds"] > 1 else ""
        rows.append([name + (" (winner)" if name == best else ""), _pct(s["test_acc"]) + ci, _pct(s["val_acc"]),
                     f"{s['epochs']:.0f}", f"{s['seconds']:.1f}", str(s["seeds"])])
    sections.append(Section("Results", f"Winner: {best}, with {_pct(summary[best]['test_acc'])} test accuracy "
                            f"on {manifest['data']['splits'].get('test', '?')} test images.", rows,
                            plot_accuracy(summary, plots / "accuracy.png")))

    strategies = list(summary)
    sections.append(Section(
        "Learning curves",
        "Validation accuracy after every epoch of every phase (seed 0), against the epoch and against "
        "wall-clock time. Pretrained strategies in colour, scratch dashed.",
        image=plot_curves(history, strategies, plots / "curves.png")))

    curved = [n for n in strategies if n != SCRATCH and len(curve(history, n)["epoch"]) >= 2]
    if SCRATCH in summary and curved:
        pretrained = max(curved, key=lambda n: summary[n]["test_acc"])
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
        sections.append(Section("The three benefits of transfer", note, rows))

    winner_runs = [r for r in metrics["runs"] if r["strategy"] == best]
    pred_path = out / best / f"seed{winner_runs[0]['seed']}" / "test_predictions.npy"
    splits = np.load(out / "splits.npz")
    if pred_path.is_file() and "labels" in splits:
        y_pred = np.load(pred_path)
        test_idx, labels = splits["test"], splits["labels"]
        y_true = labels[test_idx]
        cm = confusion_matrix(y_true, y_pred, labels=range(len(classes)))
        per_class = [["class", "test images", "accuracy"]]
        for k, c in enumerate(classes):
            n = int(cm[k].sum())
            per_class.append([c, str(n), _pct(cm[k, k] / n) if n else "-"])
        sections.append(Section(f"Confusion matrix and per-class accuracy of the winner ({best})", "",
                                per_class, plot_confusion(cm, classes, f"{best}: test set", plots / "confusion.png")))
        wrong = np.flatnonzero(y_pred != y_true)[:32]
        if images is not None and len(wrong):
            grid = plot_misclassified([np.asarray(images[test_idx[i]]) for i in wrong],
                                      [f"{classes[y_true[i]]} → {classes[y_pred[i]]}" for i in wrong],
                                      plots / "misclassified.png")
            sections.append(Section("Misclassified test images (true → predicted)",
                                    f"{len(np.flatnonzero(y_pred != y_true))} of {len(y_true)} test images.",
                                    image=grid))

    v = manifest["versions"]
    rows = [["item", "value"], ["data", f"{manifest['data']['name']} ({manifest['data']['images']} images, "
                                        f"{len(classes)} classes)"],
            ["data fingerprint", manifest["data"]["fingerprint"]],
            ["splits", ", ".join(f"{k} {n}" for k, n in manifest["data"]["splits"].items())],
            ["skipped files", str(len(manifest["data"]["skipped"]))],
            ["seeds", ", ".join(map(str, manifest["seeds"])) + f" (split seed {manifest['split_seed']})"],
            ["machine", f"{manifest['machine']['platform']}, {manifest['machine']['cpus']} CPUs, "
                        f"{manifest['machine']['precision']}"],
            ["versions", ", ".join(f"{k} {x}" for k, x in v.items())],
            ["wall time", f"{manifest['wall_seconds']['total']:.0f} s"],
            ["reproduce", manifest["command"]]]
    sections.append(Section("How this was run", "", rows))
    html_path, _ = render(f"transferlab report: {manifest['data']['name']}", sections, out)
    return html_path
