"""``transferlab audit``: what is wrong with the labelled images, before anything is trained on them.

On the image cache and the pretrained backbone's cached features (both shared with compare, so an
audit after a compare costs seconds), it finds:
- copies: equal pixels or near copies (``data.duplicates``), within a split ("duplicate") or across
  splits ("leak": the test score then counts images the model was trained on), and copies under two
  labels ("label conflict", the same file listed twice included);
- likely label errors, from out-of-fold probabilities of a logistic regression on the features,
  ranked by confident learning (``train.label_issues``), with the suggested label;
- outliers, far from every labelled image in feature space (the cat among the daisies);
- low-quality images: tiny, nearly uniform, very dark or bright, heavily blurred (``data.quality``);
- class names that differ only by case, spaces, hyphens or underscores.

It writes ``audit.csv`` (one row per finding: path, split, label, finding, score, suggested, other,
detail) and ``audit.html``, a contact sheet of the findings. ``--exclude audit.csv`` leaves every
image listed there out of any later command: delete the rows of images to keep first.
"""

from __future__ import annotations

import csv
import html
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.io import atomic_path, write_text
from ..data.builtin import load_dataset
from ..data.datasets import ImageDataset
from ..data.duplicates import DuplicatePair, duplicate_groups, find_duplicates
from ..data.quality import quality_issues, short_sides
from ..data.splits import make_splits
from ..reporting.render import CSS, thumbnail
from ..train.config import DataConfig, TrainConfig
from ..train.features import ImageSource, pretrained_features
from ..train.label_issues import (
    NEIGHBOUR_SHARE,
    LabelIssues,
    neighbour_probabilities,
    outlier_cut,
    outlier_scores,
    pruned_label_issues,
)
from ..train.probe import out_of_fold_probabilities, stratified_folds
from ..train.run import Prepared, prepare

FOLD_SEED = 0  # the label-error folds: the probe and the neighbour vote must hold out the same images

# The order findings are listed in: what invalidates a score first.
KINDS = ("label conflict", "leak", "duplicate", "label error", "outlier", "low quality")
SHEET_LIMIT = 60  # findings shown on the contact sheet (all are in audit.csv)
CSV_COLUMNS = ("path", "split", "label", "finding", "score", "suggested", "other", "detail")


@dataclass(frozen=True)
class Finding:
    """One thing wrong with image ``index``: ``kind`` (one of ``KINDS``), how strongly (``score``, the
    higher the surer), a ``suggested`` label, the ``other`` image it concerns (a copy), and why."""

    index: int
    kind: str
    score: float
    suggested: str = ""
    other: int = -1
    detail: str = ""


@dataclass
class AuditReport:
    """The findings on a data set, with what they were computed from."""

    dataset: ImageDataset
    splits: dict[str, np.ndarray]
    findings: list[Finding]
    pairs: list[DuplicatePair]
    issues: LabelIssues | None  # per labelled image (in the order of ``labelled``)
    labelled: np.ndarray
    outliers: np.ndarray  # outlier score per labelled image
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        """Findings per kind."""
        return {k: sum(f.kind == k for f in self.findings) for k in KINDS}

    def of_kind(self, kind: str) -> list[Finding]:
        """The findings of one kind."""
        return [f for f in self.findings if f.kind == kind]


def _split_names(splits: dict[str, np.ndarray], n: int) -> list[str]:
    names = [""] * n
    for name, idx in splits.items():
        for i in idx:
            names[int(i)] = name
    return names


def copy_findings(ds: ImageDataset, splits: dict[str, np.ndarray], pairs: list[DuplicatePair]) -> list[Finding]:
    """Findings from the copies: label conflicts (both images), and for every group of copies each member
    but one, a leak when it sits in another split than the one kept (a held-out copy is kept), else a
    duplicate."""
    where = _split_names(splits, len(ds))
    found: list[Finding] = []
    strength = {(p.first, p.second): p.similarity for p in pairs}
    exact = {(p.first, p.second) for p in pairs if p.exact}
    for p in pairs:
        if ds.labels[p.first] != ds.labels[p.second]:
            same = ds.paths is not None and Path(ds.paths[p.first]).resolve() == Path(ds.paths[p.second]).resolve()
            why = "the same file under two labels" if same else \
                ("the same pixels" if p.exact else "a near copy") + " under two labels"
            for a, b in ((p.first, p.second), (p.second, p.first)):
                found.append(Finding(a, "label conflict", strength[(p.first, p.second)], ds.classes[ds.labels[b]],
                                     b, f"{why}: also labelled {ds.classes[ds.labels[b]]!r}"))
    for group in duplicate_groups(pairs):
        held = [i for i in group if where[i] in ("test", "val")]
        keep = held[0] if held else group[0]
        for i in group:
            if i == keep:
                continue
            kind = "leak" if where[i] != where[keep] else "duplicate"
            score = max(strength.get((min(i, j), max(i, j)), 0.0) for j in group if j != i)
            what = "the same pixels as" if (min(i, keep), max(i, keep)) in exact else "a near copy of"
            found.append(Finding(i, kind, score, "", keep, f"{what} a {where[keep]} image"))
    return found


def class_name_notes(classes: list[str]) -> list[str]:
    """A note for every set of class names that differ only by case, spaces, hyphens or underscores."""
    seen: dict[str, list[str]] = {}
    for c in classes:
        seen.setdefault(re.sub(r"[\s_\-]+", "", c.lower()), []).append(c)
    return [f"the classes {', '.join(map(repr, names))} differ only by case, spaces, hyphens or underscores: "
            "probably one class; merge them" for names in seen.values() if len(names) > 1]


def _quality_findings(prep: Prepared, labelled: np.ndarray) -> tuple[list[Finding], list[str]]:
    """Low-quality findings; a kind that more than half the images share is one note instead (digits are
    all tiny: that is the data set, not a bad image)."""
    issues = quality_issues(prep.cache, labelled, short_sides(prep.dataset, labelled))
    notes, found = [], []
    for kind in sorted({q.kind for q in issues}):
        these = [q for q in issues if q.kind == kind]
        if len(these) > len(labelled) / 2:
            notes.append(f"{len(these)} of {len(labelled)} images are {kind} ({these[0].detail} and the like): "
                         "a property of the data set, not listed image by image")
            continue
        found += [Finding(q.index, "low quality", 1.0, "", -1, f"{q.kind}: {q.detail}") for q in these]
    return found, notes


def labelled_features(prep: Prepared, config: TrainConfig, labelled: np.ndarray, views: int = 1,
                      quiet: bool = True) -> np.ndarray:
    """The pretrained backbone's pooled features (views, len(labelled), F) of the images ``labelled``."""
    images = ImageSource(prep.images, prep.data_config, prep.precision, prep.precision.inference_batch(32), quiet)
    return pretrained_features(images, prep.dataset, config.model.backbone, config.model.image_size, labelled, views)


def _model_findings(prep: Prepared, labelled: np.ndarray, feats: np.ndarray) -> tuple[list[Finding], LabelIssues,
                                                                                        np.ndarray]:
    """Label errors and outliers, from the pretrained features (views, len(labelled), F)."""
    ds = prep.dataset
    y = ds.labels[labelled]
    views = torch.from_numpy(feats).to(prep.precision.device)

    def out_of_fold(rows: np.ndarray) -> np.ndarray:
        probe = out_of_fold_probabilities(views[:, torch.from_numpy(rows).to(views.device)],
                                          torch.as_tensor(y[rows]), seed=FOLD_SEED)[0]
        # The same folds as the probe's, on the centre view.
        votes = neighbour_probabilities(feats[0, rows], y[rows], stratified_folds(y[rows], FOLD_SEED))
        return (1 - NEIGHBOUR_SHARE) * probe + NEIGHBOUR_SHARE * votes

    issues, probs = pruned_label_issues(out_of_fold, y)
    found = [Finding(int(labelled[r]), "label error", float(issues.margin[r]), ds.classes[issues.suggested[r]], -1,
                     f"{probs[r, y[r]]:.0%} {ds.classes[y[r]]!r}, {probs[r, issues.suggested[r]]:.0%} "
                     f"{ds.classes[issues.suggested[r]]!r} out of fold")
             for r in np.flatnonzero(issues.flagged)]
    scores = outlier_scores(feats[0], y)
    cut = outlier_cut(scores)
    found += [Finding(int(labelled[r]), "outlier", float(scores[r]), "", -1,
                      f"far from every class (score {scores[r]:.2f}, cut {cut:.2f})")
              for r in np.flatnonzero(scores > cut)]
    return found, issues, scores


def audit_prepared(prep: Prepared, config: TrainConfig, quiet: bool = True) -> AuditReport:
    """Audit the labelled images of ``prep`` (its train, val and test splits)."""
    started = time.perf_counter()
    ds, splits = prep.dataset, {k: v for k, v in prep.splits.items() if k in ("train", "val", "test")}
    labelled = np.sort(np.concatenate(list(splits.values())))
    feats = labelled_features(prep, config, labelled, config.augment.views, quiet)
    pairs = find_duplicates(prep.cache, labelled, feats[0], short_sides(ds, labelled))
    findings = copy_findings(ds, splits, pairs)
    model_found, issues, outliers = _model_findings(prep, labelled, feats)
    quality, notes = _quality_findings(prep, labelled)
    findings += model_found + quality
    findings.sort(key=lambda f: (KINDS.index(f.kind), -f.score, f.index))
    return AuditReport(ds, splits, findings, pairs, issues, labelled, outliers,
                       class_name_notes(ds.classes) + notes, time.perf_counter() - started)


def audit(data: DataConfig, config: TrainConfig, out: str | Path | None = None, quiet: bool = True) -> AuditReport:
    """Load DATA as ``data`` says, audit it, and write ``audit.csv`` and ``audit.html`` into ``out``."""
    ds = load_dataset(data.source, strict=data.strict, exclude=data.exclude)
    prep = prepare(ds, make_splits(ds, seed=data.split_seed), config, quiet)
    report = audit_prepared(prep, config, quiet)
    if out is not None:
        write_audit(report, prep, Path(out))
    return report


def write_audit(report: AuditReport, prep: Prepared, out: Path) -> None:
    """``audit.csv`` and ``audit.html`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    ds, where = report.dataset, _split_names(report.splits, len(report.dataset))
    keys = ds.keys()
    with atomic_path(out / "audit.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for x in report.findings:
            writer.writerow([keys[x.index], where[x.index], ds.classes[ds.labels[x.index]], x.kind,
                             f"{x.score:.3f}", x.suggested, keys[x.other] if x.other >= 0 else "", x.detail])
    write_text(out / "audit.html", audit_page(report, prep))


def _figure(prep: Prepared, i: int, caption: str) -> str:
    return (f"<figure><img src='data:image/jpeg;base64,{thumbnail(prep.cache[i])}' alt=''>"
            f"<figcaption>{caption}</figcaption></figure>")


def audit_page(report: AuditReport, prep: Prepared) -> str:
    """A contact sheet of the first ``SHEET_LIMIT`` findings (copies beside the image they copy)."""
    ds, where = report.dataset, _split_names(report.splits, len(report.dataset))

    def name(i: int) -> str:
        return html.escape(Path(ds.paths[i]).name if ds.paths is not None else f"#{i}")

    cells = []
    for x in report.findings[:SHEET_LIMIT]:
        label = html.escape(ds.classes[ds.labels[x.index]])
        suggested = f"<br>suggested: {html.escape(x.suggested)}" if x.suggested else ""
        caption = (f"<b>{html.escape(x.kind)}</b> {x.score:.2f}<br>{name(x.index)} ({where[x.index]}, {label})"
                   f"<br>{html.escape(x.detail)}{suggested}")
        pair = _figure(prep, x.index, caption)
        if x.other >= 0:
            pair += _figure(prep, x.other, f"{name(x.other)} ({where[x.other]}, "
                                           f"{html.escape(ds.classes[ds.labels[x.other]])})")
        cells.append(f"<div class='finding'>{pair}</div>")
    counts = ", ".join(f"{n} {k}" for k, n in report.counts().items() if n) or "nothing"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    shown = f" (the first {SHEET_LIMIT} shown; all are in audit.csv)" if len(report.findings) > SHEET_LIMIT else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>audit of {html.escape(ds.name)}</title>"
            f"<style>{CSS}.finding{{display:inline-block;margin:.4em;vertical-align:top;border:1px solid #ddd}}"
            "figure{display:inline-block;width:170px;margin:.3em;vertical-align:top;font-size:.8em}</style></head>"
            f"<body><h1>audit of {html.escape(ds.name)}</h1><p>{len(report.labelled)} labelled images: "
            f"{counts}{shown}.</p>" + (f"<ul>{notes}</ul>" if notes else "") + "".join(cells) + "</body></html>")
