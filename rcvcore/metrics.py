"""Test metrics of fine-tuning runs (scikit-learn underneath), JSON-safe.

Regression (nuclei area): MAE in pixels, R², MSE. Classification (magnification): Cohen's kappa
(unweighted, as the paper, and quadratic-weighted over the ordered classes), accuracy and the
confusion matrix. A regression run gets the classification metrics too when the dataset has
classes: each predicted area is mapped to the class whose mean *training-set* area is nearest.
"""
from __future__ import annotations

import math
import warnings

import numpy as np


def finite_or_none(x):
    """``float(x)``, or None when it is NaN/inf (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def regression_metrics(y_true, y_pred) -> dict:
    """``{"mae", "r2", "mse", "n"}`` of predictions in the target's units."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    if len(y_true) == 0:
        return {"mae": None, "r2": None, "mse": None, "n": 0}
    r2 = r2_score(y_true, y_pred) if len(y_true) > 1 else float("nan")
    return {"mae": finite_or_none(mean_absolute_error(y_true, y_pred)),
            "r2": finite_or_none(r2),
            "mse": finite_or_none(mean_squared_error(y_true, y_pred)),
            "n": int(len(y_true))}


def classification_metrics(true_labels, pred_labels, classes) -> dict:
    """Kappa (unweighted and quadratic), accuracy and confusion matrix over ``classes`` (ordered).

    ``confusion_matrix[i][j]`` counts items of true class ``classes[i]`` predicted as
    ``classes[j]``.
    """
    from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix

    classes = list(classes)
    t, p = list(map(str, true_labels)), list(map(str, pred_labels))
    if not t:
        return {"kappa": None, "kappa_quadratic": None, "accuracy": None,
                "confusion_matrix": [], "classes": classes, "n": 0}
    with warnings.catch_warnings():  # a single class in both gives kappa NaN with a warning
        warnings.simplefilter("ignore")
        kappa = cohen_kappa_score(t, p, labels=classes)
        qwk = cohen_kappa_score(t, p, labels=classes, weights="quadratic")
    return {"kappa": finite_or_none(kappa), "kappa_quadratic": finite_or_none(qwk),
            "accuracy": finite_or_none(accuracy_score(t, p)),
            "confusion_matrix": confusion_matrix(t, p, labels=classes).tolist(),
            "classes": classes, "n": len(t)}


def class_means(values, labels, classes) -> dict[str, float]:
    """Mean of ``values`` per class (classes absent from ``labels`` are left out)."""
    values, labels = np.asarray(values, float), np.asarray(labels).astype(str)
    return {c: float(values[labels == c].mean()) for c in classes if (labels == c).any()}


def nearest_class(pred, means: dict[str, float]) -> tuple[list[str], np.ndarray]:
    """Map each predicted value to the class of nearest mean.

    Returns:
        The class of each prediction, and the ``(n, n_classes)`` absolute distances to each class
        mean (columns in the order of ``means``).
    """
    names = list(means)
    centres = np.asarray([means[c] for c in names], float)
    dist = np.abs(np.asarray(pred, float)[:, None] - centres[None, :])
    return [names[i] for i in dist.argmin(axis=1)], dist
