"""The probe: a scikit-learn linear model on pooled features, C chosen by stratified cross-validation,
folded into the model's linear output layer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

C_GRID = np.logspace(-4, 2, 7)


@dataclass(frozen=True)
class LinearFit:
    """A fitted linear classifier on raw features: ``logits = features @ weight.T + bias``."""

    weight: np.ndarray  # (classes, features)
    bias: np.ndarray  # (classes,)
    C: float  # the regularisation the cross-validation chose


def fit_linear(x: np.ndarray, y: np.ndarray, model: str = "logreg", seed: int = 0) -> LinearFit:
    """Standardise, fit LogisticRegression (``logreg``) or LinearSVC (``svm``) with C by CV, and fold the
    scaler into the weights."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if model == "svm":
        clf, key = LinearSVC(dual="auto", max_iter=5000), "linearsvc__C"
    else:
        clf, key = LogisticRegression(max_iter=3000), "logisticregression__C"
    smallest = int(np.bincount(y).min())
    pipe = make_pipeline(StandardScaler(), clf)
    if smallest >= 2:
        search = GridSearchCV(pipe, {key: C_GRID},
                              cv=StratifiedKFold(min(5, smallest), shuffle=True, random_state=seed))
        search.fit(x, y)
        pipe, chosen = search.best_estimator_, float(search.best_params_[key])
    else:  # one example per class: nothing to cross-validate on, keep scikit-learn's default C
        pipe.fit(x, y)
        chosen = 1.0
    scaler, fitted = pipe[0], pipe[-1]
    coef, intercept = fitted.coef_, fitted.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row, the logit of class 1
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    # The scaler folds into the linear layer: w' = w / s, b' = b - w' . m.
    weight = coef / scaler.scale_
    return LinearFit(weight, intercept - weight @ scaler.mean_, chosen)


def as_tensors(fit: LinearFit) -> tuple[torch.Tensor, torch.Tensor]:
    """The fit's weight and bias as float32 tensors, for ``TransferModel.set_output``."""
    return torch.as_tensor(fit.weight, dtype=torch.float32), torch.as_tensor(fit.bias, dtype=torch.float32)
