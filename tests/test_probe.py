"""The torch probe (logistic regression, C by cross-validation) against scikit-learn's."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from transferlab.train.probe import C_GRID, fit_logreg, fit_sklearn


def _accuracy(fit, x, y) -> float:
    return float(((torch.as_tensor(x, dtype=torch.float32) @ fit.weight.T + fit.bias).argmax(1).numpy() == y).mean())


@pytest.mark.parametrize("classes", [10, 2])
def test_torch_probe_matches_scikit_learn_on_digits(classes):
    x, y = load_digits(return_X_y=True)
    keep = y < classes
    xtr, xte, ytr, yte = train_test_split(x[keep], y[keep], train_size=200, stratify=y[keep], random_state=0)
    # scikit-learn's StandardScaler: no shrinkage of the features' variances
    ours = fit_logreg(torch.as_tensor(xtr, dtype=torch.float32), torch.as_tensor(ytr), scale_prior=0)
    ref = fit_sklearn(xtr, ytr)
    assert ours.C in C_GRID
    assert abs(_accuracy(ours, xte, yte) - _accuracy(ref, xte, yte)) <= 0.01
    assert _accuracy(ours, xte, yte) > 0.9


def test_one_example_per_class_fits_without_cross_validation():
    x, y = load_digits(return_X_y=True)
    first = np.array([np.flatnonzero(y == c)[0] for c in range(10)])
    fit = fit_logreg(torch.as_tensor(x[first], dtype=torch.float32), torch.as_tensor(y[first]))
    assert fit.C == 1.0 and _accuracy(fit, x[first], y[first]) == 1.0


def test_shrunk_variances_beat_unit_variances_at_two_labels_per_class_on_digits():
    from transferlab.data.splits import per_class_subset

    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    val, test, rest = perm[:200], perm[200:700], perm[700:]
    gains = []
    for seed in range(3):
        labelled = per_class_subset(rest, y.numpy(), 2, seed=seed)
        accs = [_accuracy(fit_logreg(x[labelled], y[labelled], val=(x[val], y[val]), scale_prior=prior),
                          x[test].numpy(), y[test].numpy()) for prior in (0, 300)]
        gains.append(accs[1] - accs[0])
    assert np.mean(gains) >= 0.02, gains
