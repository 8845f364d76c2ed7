"""The probe: a linear classifier on pooled features, its regularisation chosen on the validation
split (or, without one, by stratified cross-validation), folded into the model's linear output layer.

Why validation rather than cross-validation: with 5 images per class the folds hold one image per
class, and the C they pick swings by four orders of magnitude between seeds; the validation split
(the same one early stopping uses) is larger and the same for every strategy. Measured on
flower_photos (lite0, 3 subsets, benchmarks/unlabelled.py): at 20 per class, 80.1 +- 9.4% with C by CV
on centre crops, 81.5 +- 5.7% with C on validation and every cached view (README).

``logreg`` is multinomial logistic regression fitted in torch on the features' device: full-batch
L-BFGS on the objective scikit-learn's ``LogisticRegression`` minimises (``C`` times the summed
cross-entropy plus half the squared weights, intercept unpenalised), the features standardised per
training fold as in a ``StandardScaler`` pipeline, all folds fitted at once and warm-started along
the path of ``C`` values (each feature's variance shrunk towards the mean one at few images:
``SCALE_PRIOR_ROWS``). ``svm`` is scikit-learn's ``LinearSVC`` (``fit_sklearn``), which is also
the reference the torch fit is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

C_GRID = np.logspace(-4, 2, 7)
MAX_ITER = 300  # L-BFGS iterations per C (warm starts make later ones short)
# Standardising every feature to unit variance weighs the penalty by each feature's spread: with few
# training images that amplifies the features that barely vary, and the probe fell below the dense
# head at 5 per class. Each feature's variance is shrunk towards the mean variance as if this many
# rows had it (100 images with the default 3 views): mostly a common scale at 5 images per class,
# mostly per-feature at 60. flower_photos, lite0, C on validation, 3 subsets (README): 67.6 -> 72.2%
# at 5 per class, 80.5 -> 81.8% at 20, 87.6 -> 87.0% at 60 (all of train: 3 test images).
SCALE_PRIOR_ROWS = 300


@dataclass(frozen=True)
class LinearFit:
    """A fitted linear classifier on raw features: ``logits = features @ weight.T + bias``."""

    weight: torch.Tensor  # (classes, features), float32
    bias: torch.Tensor  # (classes,)
    C: float  # the regularisation chosen (on validation, or by cross-validation)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The class scores of features ``x`` (N, features)."""
        return x @ self.weight.T + self.bias


def stratified_folds(y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's stratified k-fold (k = min(5, smallest class)), the same folds as GridSearchCV's."""
    from sklearn.model_selection import StratifiedKFold

    k = min(5, int(np.bincount(y).min()))
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _standardise(x: torch.Tensor, mask: torch.Tensor, prior_rows: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and scale of the rows of ``x`` where ``mask`` (F, N) is 1, per fold: (F, D) each. With
    ``prior_rows`` each feature's variance is shrunk towards the mean variance of all features, as if
    that many rows had it (``SCALE_PRIOR_ROWS``)."""
    n = mask.sum(1, keepdim=True)
    mean = mask @ x / n
    var = ((mask @ (x * x)) / n - mean * mean).clamp_min(0)
    if prior_rows:
        var = (n * var + prior_rows * var.mean(1, keepdim=True)) / (n + prior_rows)
    scale = var.sqrt()
    return mean, torch.where(scale > 0, scale, torch.ones_like(scale))


def _fit(z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, C: float, w: torch.Tensor,
         sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Minimise, for every fold f at once, sum_i mask[f, i] * CE(z[f, i]) + ||W_f||^2 / (2 C), from ``w``.

    z: (F, N, D) standardised features; w: (F, K, D + 1), the last column the unpenalised intercept.
    The folds' objectives are independent, so their sum has each fold's optimum as its own.
    """
    w = w.clone().requires_grad_(True)
    n = mask.sum()
    opt = torch.optim.LBFGS([w], lr=1, max_iter=MAX_ITER, history_size=20, tolerance_grad=1e-7,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")
    target = y.expand(len(z), -1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        ce = F.cross_entropy(_class_logits(z, w), target, reduction="none")  # (F, N)
        if sample_weight is not None:
            ce = ce * sample_weight
        loss = ((ce * mask).sum() + (w[..., :-1] ** 2).sum() / (2 * C)) / n
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def _class_logits(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Logits (F, K, N) of the features z (F, N, D) under the folds' weights w (F, K, D + 1).

    Class-major on purpose: autograd's gradient for w is then (F, K, N) @ z with z as it is stored.
    The row-major form (F, N, K) = z @ W^T has it multiply z transposed, which made the backward pass
    about 6x slower on a 2-core CPU (0.27 s against 0.046 s for 5 folds of 7,600 rows by 1,280).
    """
    return torch.bmm(w[..., :-1], z.transpose(1, 2)) + w[..., -1:]


def _predict(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return _class_logits(z, w).argmax(1)


def balanced_weights(y: torch.Tensor, classes: int | None = None) -> torch.Tensor:
    """Per-class weights n / (k * n_c), scikit-learn's ``class_weight="balanced"`` (0 for absent classes)."""
    counts = torch.bincount(y.long(), minlength=classes or 0).double()
    k = int((counts > 0).sum())
    return torch.where(counts > 0, len(y) / (k * counts.clamp_min(1)), 0).float()


def _fold_scaling(w: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, C: float) -> LinearFit:
    """The fit on standardised features as one on raw ones: w' = w / s, b' = b - w' . m."""
    weight = w[:, :-1] / scale
    return LinearFit(weight, w[:, -1] - weight @ mean[0], C)


def _fit_on_validation(x: torch.Tensor, y: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor], k: int,  # noqa: PLR0913
                       grid: np.ndarray, sw: torch.Tensor | None, scale_prior: float) -> LinearFit:
    """One fit per C of ``grid`` on all of ``x``, the one with the best validation accuracy kept (ties:
    the lower validation loss, then the smaller C)."""
    vx, vy = val[0].to(x.device).float(), val[1].to(x.device).long()
    everything = torch.ones(1, len(y), device=x.device)
    mean, scale = _standardise(x, everything, scale_prior)
    z = ((x - mean) / scale)[None]
    w = torch.zeros(1, k, x.shape[1] + 1, device=x.device)
    best: tuple[tuple[float, float], LinearFit] | None = None
    for C in grid:  # small to large C: each fit starts from the last one's optimum
        w = _fit(z, y, everything, float(C), w, sw)
        fit = _fold_scaling(w[0], mean, scale, float(C))
        logits = fit.logits(vx)
        key = (float((logits.argmax(1) == vy).float().mean()), -float(F.cross_entropy(logits, vy)))
        if best is None or key > best[0]:
            best = (key, fit)
    return best[1]


def fit_logreg(x: torch.Tensor, y: torch.Tensor, seed: int = 0, grid: np.ndarray = C_GRID,  # noqa: PLR0913
               balanced: bool = False, val: tuple[torch.Tensor, torch.Tensor] | None = None,
               sample_weight: torch.Tensor | None = None, scale_prior: float = SCALE_PRIOR_ROWS) -> LinearFit:
    """Multinomial logistic regression on ``x`` (N, D), on ``x``'s device, with C chosen on ``val``
    (features, labels) when given, else by stratified CV; ``balanced``: each example's loss weighted by
    ``balanced_weights`` of its class; ``sample_weight``: a weight per example (times the former);
    ``scale_prior``: the standardisation's shrinkage (``SCALE_PRIOR_ROWS``; 0: scikit-learn's
    ``StandardScaler``)."""
    x = x.float()
    y = y.to(x.device).long()
    k, d = int(y.max()) + 1, x.shape[1]
    if val is not None:
        k = max(k, int(val[1].max()) + 1)
    y_np = y.cpu().numpy()
    sw = balanced_weights(y, k)[y] if balanced else None
    if sample_weight is not None:
        sample_weight = sample_weight.to(x.device).float()
        sw = sample_weight if sw is None else sw * sample_weight
    if val is not None:
        return _fit_on_validation(x, y, val, k, grid, sw, scale_prior)
    chosen = 1.0  # one example per class: nothing to cross-validate on, keep scikit-learn's default C
    if np.bincount(y_np).min() >= 2:
        folds = stratified_folds(y_np, seed)
        train = torch.zeros(len(folds), len(y), device=x.device)
        for f, (tr, _) in enumerate(folds):
            train[f, torch.as_tensor(tr, device=x.device)] = 1
        mean, scale = _standardise(x, train, scale_prior)
        z = (x[None] - mean[:, None]) / scale[:, None]
        w = torch.zeros(len(folds), k, d + 1, device=x.device)
        scores = []
        for C in grid:  # small to large C: each fit starts from the last one's optimum
            w = _fit(z, y, train, float(C), w, sw)
            right = (_predict(z, w) == y).float() * (1 - train)
            scores.append((right.sum(1) / (1 - train).sum(1)).mean().item())
        chosen = float(grid[int(np.argmax(scores))])  # ties: the smallest C, as GridSearchCV
    everything = torch.ones(1, len(y), device=x.device)
    mean, scale = _standardise(x, everything, scale_prior)
    w = _fit(((x - mean) / scale)[None], y, everything, chosen, torch.zeros(1, k, d + 1, device=x.device), sw)[0]
    return _fold_scaling(w, mean, scale, chosen)


def fit_sklearn(x: np.ndarray, y: np.ndarray, model: str = "logreg", seed: int = 0,
                balanced: bool = False) -> LinearFit:
    """The scikit-learn reference: StandardScaler + LogisticRegression or LinearSVC, C by GridSearchCV."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    weights = "balanced" if balanced else None
    if model == "svm":
        clf, key = LinearSVC(dual="auto", max_iter=5000, class_weight=weights), "linearsvc__C"
    else:
        clf, key = LogisticRegression(max_iter=3000, class_weight=weights), "logisticregression__C"
    smallest = int(np.bincount(y).min())
    pipe = make_pipeline(StandardScaler(), clf)
    if smallest >= 2:
        search = GridSearchCV(pipe, {key: C_GRID},
                              cv=StratifiedKFold(min(5, smallest), shuffle=True, random_state=seed))
        search.fit(x, y)
        pipe, chosen = search.best_estimator_, float(search.best_params_[key])
    else:
        pipe.fit(x, y)
        chosen = 1.0
    scaler, fitted = pipe[0], pipe[-1]
    coef, intercept = fitted.coef_, fitted.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row, the logit of class 1
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    return LinearFit(torch.as_tensor(weight, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32), chosen)


def fit_probe(x: torch.Tensor, y: torch.Tensor, model: str = "logreg", seed: int = 0,
              balanced: bool = False, val: tuple[torch.Tensor, torch.Tensor] | None = None) -> LinearFit:
    """The probe's fit: torch logistic regression on the device (C on ``val`` when given), or
    scikit-learn's LinearSVC (C by cross-validation)."""
    if model == "logreg":
        return fit_logreg(x, y, seed, balanced=balanced, val=val)
    return fit_sklearn(x.cpu().numpy(), y.cpu().numpy(), model, seed, balanced)


def out_of_fold_probabilities(x: torch.Tensor, y: torch.Tensor, seed: int = 0,
                              grid: np.ndarray = C_GRID) -> tuple[np.ndarray, float]:
    """Class probabilities of every image from a logistic regression that never saw it: stratified
    k-fold (k = min(5, smallest class)) on the features ``x`` (views, N, D), each fold trained on every
    view of its training images and predicting the mean probability over the views of the others.
    The C of ``grid`` with the lowest out-of-fold log loss is kept. Returns (N, K) and that C."""
    views, n, d = x.shape
    y = y.to(x.device).long()
    k = int(y.max()) + 1
    folds = stratified_folds(y.cpu().numpy(), seed)
    held = torch.zeros(len(folds), n, device=x.device)
    for f, (_, te) in enumerate(folds):
        held[f, torch.as_tensor(te, device=x.device)] = 1
    flat = x.float().reshape(views * n, d)
    train = (1 - held).repeat(1, views)  # (F, views * N): every view of a training image
    mean, scale = _standardise(flat, train)
    z = (flat[None] - mean[:, None]) / scale[:, None]
    w = torch.zeros(len(folds), k, d + 1, device=x.device)
    best: tuple[float, np.ndarray, float] | None = None
    for C in grid:  # small to large C: each fit starts from the last one's optimum
        w = _fit(z, y.repeat(views), train, float(C), w)
        probs = _class_logits(z, w).softmax(1).transpose(1, 2)  # (F, views * N, K)
        probs = probs.reshape(len(folds), views, n, k).mean(1)  # (F, N, K)
        probs = (probs * held[..., None]).sum(0)  # each image from the one fold that held it out
        loss = float(-probs[torch.arange(n), y].clamp_min(1e-12).log().mean())
        if best is None or loss < best[0]:
            best = (loss, probs.cpu().numpy(), float(C))
    return best[1], best[2]
