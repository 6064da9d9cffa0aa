"""Test metrics of fine-tuning runs (scikit-learn underneath), JSON-safe.

Regression (nuclei area): MAE in pixels, R², MSE. Classification (magnification): Cohen's kappa
(unweighted, as the paper, and quadratic-weighted over the ordered classes), accuracy and the
confusion matrix. A regression run gets the classification metrics too when the dataset has
classes: each predicted area is mapped to the class whose mean *training-set* area is nearest.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    """One test metric of a fine-tuning run, as every table, chart and printout names it.

    Attributes:
        name: the key in ``result.json`` (``test``, ``val``) and, prefixed ``val_``, in
            ``metrics.jsonl``.
        label: the column title (Table 2, the CLI tables, the pages).
        task: ``regression`` (needs the measure) or ``classification`` (needs classes; a
            regression run gets these too, from its predictions mapped to the nearest class).
        higher_is_better: which direction is better (paired verdicts, "better in k seeds").
        decimals: decimals of a printed value.
        short: the heading of a narrow column (default ``label``).
        listed: shown in the compact views (``runs`` listing, run labels and cards, the
            validation chart); every metric is in ``result.json``, Table 2 and the full tables.
        in_measure_units: the value is in the regressed measure's unit, which ``label`` names
            for the paper's measure (px) and :meth:`label_for` for a run's own target.
    """

    name: str
    label: str
    task: str
    higher_is_better: bool
    decimals: int = 3
    short: str = ""
    listed: bool = False
    in_measure_units: bool = False

    @property
    def heading(self) -> str:
        """The narrow column's heading."""
        return self.short or self.label

    def label_for(self, targets=None, *, short: bool = False) -> str:
        """The label (``short``: the heading) with the unit of the measure the runs' target
        regresses: ``MAE (log2 µm/px)`` for ``mpp`` runs, ``MAE (px)`` for ``nuclei-area``
        ones; ``targets``: one target or several (runs shown together); runs of targets in
        different units get ``MAE (units of each run's measure)``. No regression target known:
        the default label, the paper's unit."""
        base = self.heading if short else self.label
        if not self.in_measure_units or targets is None:
            return base
        targets = [targets] if isinstance(targets, str) else list(targets)
        # (a classification run has no MAE: its target has no unit and does not count)
        units = {MEASURE_UNITS[t] for t in targets if t in MEASURE_UNITS}
        if not units:
            return base
        # the registered label names the paper's unit ("MAE (px)", short "MAE px")
        paper = MEASURE_UNITS["nuclei-area"]
        name = base.removesuffix(f" ({paper})").removesuffix(f" {paper}")
        if len(units) > 1:
            return name if short else f"{name} (units of each run's measure)"
        unit = units.pop()
        return f"{name} {unit}" if short else f"{name} ({unit})"

    @property
    def sign(self) -> float:
        """+1 when higher is better, -1 when lower is: ``sign * (b - a) > 0`` means b is better."""
        return 1.0 if self.higher_is_better else -1.0

    def format(self, value, missing: str = "-") -> str:
        """``value`` with this metric's decimals (``missing`` for None)."""
        return missing if value is None else f"{float(value):.{self.decimals}f}"


#: The registry: name -> :class:`Metric`, in display order. Add a metric with
#: :func:`register_metric` and compute it in :func:`regression_metrics` or
#: :func:`classification_metrics`; the tables, Table 2 and the pages read it from here.
METRICS: dict[str, Metric] = {}
#: the unit of the measure each regression target regresses (rcvcore.runs.config.TARGETS)
MEASURE_UNITS = {"nuclei-area": "px", "mpp": "log2 µm/px"}
TASKS = ("regression", "classification")


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS`; a name already taken or an unknown task is refused."""
    if metric.name in METRICS:
        raise ValueError(f"a metric named {metric.name!r} is already registered")
    if metric.task not in TASKS:
        raise ValueError(f"metric {metric.name!r}: task must be one of {TASKS}, "
                         f"got {metric.task!r}")
    METRICS[metric.name] = metric
    return metric


for _m in (Metric("mae", "MAE (px)", "regression", higher_is_better=False, decimals=2,
                  short="MAE px", listed=True, in_measure_units=True),
           Metric("r2", "R2", "regression", higher_is_better=True),
           Metric("kappa", "kappa", "classification", higher_is_better=True, listed=True),
           Metric("kappa_quadratic", "QWK", "classification", higher_is_better=True),
           Metric("accuracy", "accuracy", "classification", higher_is_better=True, short="acc",
                  listed=True)):
    register_metric(_m)


def metric_names(kind: str | None = None, *, listed: bool = False) -> tuple[str, ...]:
    """The metrics a run of task ``kind`` reports, in display order (all when None): a
    classification run has the classification ones; a regression run has all of them (its
    predicted areas are mapped to the nearest class). ``listed``: the compact views' only."""
    return tuple(m.name for m in METRICS.values()
                 if (kind in (None, "regression") or m.task == kind)
                 and (m.listed or not listed))


def metric_summary(values: dict, names=None, *, sep: str = ", ") -> str:
    """``"mae 54.93, kappa 0.571"``: each metric of ``names`` (default all) that ``values``
    holds as a number, with its decimals (run labels, cards, printouts)."""
    names = METRICS if names is None else names
    return sep.join(f"{n} {METRICS[n].format(values[n])}" for n in names
                    if isinstance(values.get(n), (int, float))
                    and not isinstance(values.get(n), bool))


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
