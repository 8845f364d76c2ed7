"""``suggest``: the pool images a trained run would most like labelled next (``train.acquisition``),
written as a CSV in the label format and an HTML contact sheet.

The CSV lists the run's labelled images (with their labels and splits) and then the suggested pool
images with an empty label and the split ``train``: fill in the labels of the suggestions and pass the
file back with ``--data``; rows left empty stay unlabelled (and are the pool of ``--unlabelled`` the
same CSV).
"""

from __future__ import annotations

import csv
import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import TransferlabError
from ..core.io import atomic_path, write_text
from ..core.layout import ResultsFolder
from ..data.builtin import load_dataset
from ..data.pool import attach_pool
from ..data.splits import make_splits
from ..experiments.experiment import load_experiment
from ..experiments.folder import results_root
from ..reporting.render import CSS, thumbnail
from ..train.acquisition import choose_to_label, margins
from ..train.features import ImageSource, pretrained_features
from ..train.run import Prepared, prepare
from .predict import Predictor
from .saved import find_model_dir


@dataclass(frozen=True)
class Suggestion:
    """One pool image to label: its file, the run's guess and how sure it is (calibrated)."""

    path: Path
    guess: str
    confidence: float
    margin: float


def _pool_features(prep: Prepared, backbone: str, image_size: int | None, quiet: bool) -> np.ndarray:
    """The pretrained backbone's pooled features of every image of ``prep`` (the feature cache's)."""
    images = ImageSource(prep.images, prep.data_config, prep.precision, prep.precision.inference_batch(32), quiet)
    wanted = np.concatenate([prep.splits["train"], prep.splits["pool"]])
    rows = pretrained_features(images, prep.dataset, backbone, image_size, wanted)[0]
    feats = np.zeros((len(prep.dataset), rows.shape[1]), np.float32)
    feats[wanted] = rows
    return feats


def suggest(run_dir: str | Path, unlabelled: str | Path, count: int = 20, out: str | Path | None = None,
            strategy: str | None = None, seed: int = 0, quiet: bool = True) -> list[Suggestion]:
    """Pick ``count`` pool images of ``unlabelled`` to label next for the run in ``run_dir`` (its
    winner, or ``strategy``); write ``out`` (default ``RUN/suggestions.csv``) and an HTML contact sheet
    beside it. Pool images whose pixels equal a labelled image's are never suggested."""
    if count < 1:
        raise TransferlabError(f"--count {count}: suggest at least one image")
    root = results_root(Path(run_dir)) or Path(run_dir)
    config = ResultsFolder(root).config
    if not config.is_file():
        raise TransferlabError(f"{run_dir} is not a transferlab results directory (no config.yaml); pass the --out "
                               "folder of a compare or train run")
    exp = load_experiment(config)
    predictor = Predictor(find_model_dir(run_dir, strategy))  # refuses a folder without finished runs
    ds = load_dataset(exp.data.source, strict=exp.data.strict, exclude=exp.data.exclude)
    splits = make_splits(ds, seed=exp.data.split_seed)
    prep = prepare(attach_pool(ds, str(unlabelled), exp.data.source, exp.data.strict), splits, exp.train, quiet)
    pool = prep.splits["pool"]
    feats = _pool_features(prep, exp.train.model.backbone, exp.train.model.image_size, quiet)
    probs = predictor.probabilities([prep.cache[i] for i in pool])
    train = prep.splits["train"]
    picked = choose_to_label(feats[pool], probs, feats[train], count, seed, labelled_labels=prep.dataset.labels[train])
    m = margins(probs)
    chosen = [Suggestion(prep.dataset.paths[pool[i]], predictor.classes[int(probs[i].argmax())],
                         float(probs[i].max()), float(m[i])) for i in picked]
    path = Path(out) if out else root / "suggestions.csv"
    _write_csv(path, prep, chosen)
    _write_sheet(path.with_suffix(".html"), prep, pool[picked], chosen)
    return chosen


def _write_csv(path: Path, prep: Prepared, chosen: list[Suggestion]) -> None:
    """The labelled images (label, split) and the suggestions (no label, split train), in the label format."""
    ds = prep.dataset  # from files: attach_pool refuses a data set held in memory
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "guess", "confidence"])
        for split in ("train", "val", "test"):
            for i in prep.splits[split]:
                writer.writerow([str(Path(ds.paths[i]).resolve()), ds.classes[ds.labels[i]], split, "", ""])
        for s in chosen:
            writer.writerow([str(Path(s.path).resolve()), "", "train", s.guess, f"{s.confidence:.3f}"])


def _write_sheet(path: Path, prep: Prepared, rows: np.ndarray, chosen: list[Suggestion]) -> None:
    """A contact sheet of the suggestions, in the order picked, with the run's guess."""
    cells = "".join(
        f"<figure><img src='data:image/jpeg;base64,{thumbnail(prep.cache[i])}' alt='{html.escape(s.path.name)}'>"
        f"<figcaption>{k + 1}. {html.escape(s.path.name)}<br>guess: {html.escape(s.guess)} "
        f"({s.confidence:.0%})</figcaption></figure>" for k, (i, s) in enumerate(zip(rows, chosen)))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>images to label next</title><style>{CSS}"
            "figure{display:inline-block;width:170px;margin:.4em;vertical-align:top;font-size:.8em}</style></head>"
            f"<body><h1>{len(chosen)} images to label next</h1><p>Fill in their labels in "
            f"<code>{html.escape(path.with_suffix('.csv').name)}</code> and pass it back with <code>--data</code>."
            f"</p>{cells}</body></html>")
    write_text(path, page)
